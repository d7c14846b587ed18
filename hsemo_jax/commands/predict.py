"""`hsemo-jax predict INPUT... [--model NAME|DIR|FILE.pt ...] [--out FILE.csv|DIR] [--plot FILE.png|DIR]
[--abaw-out FILE|DIR] ...`: one run per input (a glob of videos: one per video), checked before any work."""
from __future__ import annotations

import argparse
import sys

from hsemo_jax.models.registry import DEFAULT_DETECTOR
from hsemo_jax.predict.defaults import BATCH_SIZE, DETECT_EVERY, DETECT_WIDTH, DETECTORS  # no JAX, no OpenCV: fast --help


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a video file, an image, a folder of images, or a quoted glob: of images ('frames/*.jpg', "
                        "the frames of one run) or of videos ('clips/*.mp4', one run per video). Several inputs: "
                        "one run each, the models loaded and compiled once")
    p.add_argument("--model", action="append", dest="models", metavar="NAME|DIR|FILE.pt",
                   help="published model name (e.g. enet_b0_8_va_mtl, mbf_va_mtl; fetched and converted on "
                        "first use), a converted directory, or a PyTorch file. Repeat to blend. "
                        "Default: enet_b0_8_va_mtl")
    p.add_argument("--blend", type=float, nargs="+", metavar="W",
                   help="blend weights, one per --model, summing to 1 (default: equal)")
    p.add_argument("--detector", choices=DETECTORS, default=DEFAULT_DETECTOR,
                   help="face detector: MediaPipe's BlazeFace full-range (default; faces to ~5 m, down to ~70 px "
                        "wide at 720p) or short-range (faces within ~2 m, ~120 px at 720p) (bundled; "
                        "detection, crops and models then run as one device program per batch of frames), "
                        "OpenCV Haar cascade (bundled), YuNet (needs --detector-model), "
                        "or none for pre-cropped faces (e.g. ABAW cropped_aligned)")
    p.add_argument("--exact-preprocess", action="store_true",
                   help="with BlazeFace, crop, resize and normalize faces on the host, as the other detectors do "
                        "(default: in the device program, whose crops are the same bits as Pillow's and whose "
                        "outputs differ by ~1e-6, float32 normalization against float64)")
    p.add_argument("--detector-model", metavar="FILE.onnx|DIR", help="YuNet .onnx file for --detector yunet; a folder with pnet.pt, rnet.pt, onet.pt for --detector mtcnn (else fetched by name)")
    p.add_argument("--detect-width", type=int, default=DETECT_WIDTH, metavar="PX",
                   help=f"detect faces on frames shrunk to at most this width, boxes mapped back to full "
                        f"resolution for cropping (default {DETECT_WIDTH}; 0 = full resolution)")
    p.add_argument("--detect-size", type=int, metavar="PX",
                   help="BlazeFace: the frame's short side at the detector's finer view (default: 224 for full "
                        "range, 128 for short range; the frame is also seen at a third of that). Larger finds smaller "
                        "faces, at a cost growing with its square")
    p.add_argument("--detect-every", type=int, default=DETECT_EVERY, metavar="N",
                   help=f"in a video, search the whole frame for faces every N frames and follow the tracked "
                        f"faces on the frames between (default {DETECT_EVERY}; 1 = whole-frame search on every "
                        f"frame, as the original pipelines)")
    p.add_argument("--smooth", choices=("gaussian", "box", "none"), default="none",
                   help="temporal smoothing of probabilities and valence/arousal along each face track")
    p.add_argument("--sigma", type=float, default=2.0, help="gaussian sigma in frames (default 2)")
    p.add_argument("--k", type=int, default=5, help="smoothing half-window in frames (default 5)")
    p.add_argument("--head", metavar="DIR", help="multi-task head trained with `hsemo-jax train-head` on the (first) "
                                              "model's features: adds 12 AU probabilities and labels")
    p.add_argument("--au-thresholds", type=float, nargs="+", metavar="T",
                   help="AU decision threshold(s): one for all or 12 (default: the head's stored ones, else 0.5)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, metavar="N",
                   help="frames per device batch with BlazeFace; faces per inference batch otherwise (fixed shape; "
                        "default %(default)s)")
    p.add_argument("--out", metavar="FILE.csv|DIR",
                   help="CSV to write (default: <input name>.emotions.csv in the current folder); with several "
                        "inputs a folder (existing, or ending in '/') for one <input name>.emotions.csv each")
    p.add_argument("--plot", metavar="FILE.png|DIR",
                   help="PNG of expressions and valence/arousal: a timeline per face track (video), a bar chart "
                        "per face (still images); with several inputs a folder for one <input name>.emotions.png each")
    p.add_argument("--abaw-out", metavar="FILE|DIR",
                   help="also write ABAW MTL predictions (image,valence,arousal,... one row per frame, as "
                        "`hsemo-jax evaluate` reads them; needs --head for the 12 AUs): a video's frames are "
                        "VIDEO/00001.jpg..., ABAW frame folders keep their names; the largest face track only; "
                        "frames without it repeat the last prediction. With several inputs: one file for all, "
                        "or a folder for one <input name>.abaw.txt each")
    p.add_argument("--abaw-layout", choices=("scores", "submission"), default="scores",
                   help="--abaw-out as probabilities (default; for evaluate's threshold search, smoothing and "
                        "blending) or as ABAW's submission (expression index, 0/1 AUs at the head's thresholds)")


def run(args: argparse.Namespace) -> int:
    from hsemo_jax.errors import InputError, user_message
    from hsemo_jax.predict import abaw, inputs, pipeline
    from hsemo_jax.predict.detect import check_detector

    models = tuple(args.models or ("enet_b0_8_va_mtl",))
    pipeline.check_options(models=len(models), weights=args.blend, detector=args.detector,
                           detect_width=args.detect_width, detect_size=args.detect_size,
                           detect_every=args.detect_every, smooth=args.smooth,
                           sigma=args.sigma, k=args.k, batch_size=args.batch_size, au_thresholds=args.au_thresholds)
    runs, combined = inputs.plan(args.inputs, out=args.out, plot=args.plot, abaw=args.abaw_out)
    for given, note in (
            (args.au_thresholds is not None and not args.head, "--au-thresholds is ignored without --head"),
            (args.abaw_layout != "scores" and not args.abaw_out, "--abaw-layout is ignored without --abaw-out")):
        if given:  # the user asked for something this run will not do
            print(f"warning: {note}", file=sys.stderr)
    if args.abaw_out:
        _check_abaw(args, runs, combined)
    # once, before any input is read (the runs reuse them): a bad --model, --head or --detector-model stops
    # here, not in every run
    check_detector(args.detector, args.detector_model)
    loaded = pipeline.load_models(models)
    if args.abaw_out:
        abaw.check_models(*pipeline.expression_layout(loaded))
    if args.head:
        pipeline.load_au_head(args.head, loaded[0], args.au_thresholds)
    tables, failed = [], 0
    for r in runs:
        if len(runs) > 1:
            print(f"{r.input}:")
        try:
            table = _run_one(args, r, models)
        except KeyboardInterrupt:
            return 130
        except (InputError, OSError) as e:
            if len(runs) == 1:
                raise
            print(f"hsemo-jax predict: error: {user_message(e)}", file=sys.stderr)
            failed += 1
            continue
        tables.append(table)
    if combined is not None and tables:
        _report_abaw(abaw.write(combined, tables, args.abaw_layout))
        print(f"wrote {combined}")
    if failed:
        print(f"hsemo-jax predict: error: {failed} of {len(runs)} input(s) failed (see above)", file=sys.stderr)
        return 2
    return 0


def _check_abaw(args, runs, combined) -> None:
    """Before any work: each input has ABAW frame names, no video is twice in one file, a head gives the AUs."""
    from hsemo_jax.errors import InputError
    from hsemo_jax.predict import abaw

    seen: dict[str, str] = {}
    for r in runs:
        for name in abaw.video_names(r.source):
            if combined is not None and name in seen and seen[name] != r.input:
                raise InputError(f"{r.input}: video {name!r} is also in {seen[name]}; {combined} can list it once")
            seen[name] = r.input
    abaw.check_head(args.head)


def _report_abaw(notes) -> None:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _run_one(args, r, models):
    """One input: its CSV (streamed to <out>.partial, finalized atomically), summary, plot, ABAW file."""
    from collections import Counter

    from hsemo_jax.predict import abaw, predict
    from hsemo_jax.predict.plot import plot
    from hsemo_jax.predict.writer import CsvOutput

    csv_out = CsvOutput(r.csv)
    try:
        table = predict(r.input, models, weights=args.blend,
                        detector=args.detector, detector_model=args.detector_model,
                        detect_width=args.detect_width, detect_size=args.detect_size,
                        detect_every=args.detect_every, smooth=args.smooth,
                        sigma=args.sigma, k=args.k, batch_size=args.batch_size, head=args.head,
                        au_thresholds=args.au_thresholds, exact_preprocess=args.exact_preprocess,
                        on_rows=csv_out.write_rows, progress=True)
    except KeyboardInterrupt:
        partial = csv_out.abort()
        print(f"interrupted: rows computed so far are in {partial}; {r.csv} was not written", file=sys.stderr)
        raise
    except BaseException:
        csv_out.abort().unlink(missing_ok=True)
        raise
    csv_out.finalize(table)
    face = table.has_face
    frames = len(set(zip(table["source"], table["frame"])))
    no_face = frames - len(set(zip(table["source"][face], table["frame"][face])))
    print(f"{frames} frame(s), {int(face.sum())} face(s) in {len(set(table['track_id'][face]))} track(s), "
          f"{no_face} frame(s) without a face" + (f", {len(table.skipped)} unreadable file(s) skipped"
                                                   if r.source.kind != "video" else ""))
    if face.any():
        top = Counter(table["expression"][face]).most_common(3)
        print("most frequent expressions: " + ", ".join(f"{e} ({n})" for e, n in top))
        if "valence" in table.columns:
            print(f"mean valence {table['valence'][face].mean():+.3f}, mean arousal {table['arousal'][face].mean():+.3f}")
    else:
        print("no faces were detected; try --detector none for pre-cropped faces")
    print(f"wrote {r.csv}")
    if r.plot is not None:
        print(f"wrote {plot(table, r.plot)}")
    if r.abaw is not None:
        _report_abaw(abaw.write(r.abaw, [table], args.abaw_layout))
        print(f"wrote {r.abaw}")
    return table
