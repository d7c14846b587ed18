"""`hsemo-jax predict INPUT [--model NAME|DIR|FILE.pt ...] [--out FILE.csv] [--plot FILE.png] ...`"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hsemo_jax.models.registry import DEFAULT_DETECTOR
from hsemo_jax.predict.detect import DETECT_WIDTH, DETECTORS
from hsemo_jax.predict.pipeline import DETECT_EVERY


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="a video file, an image, a folder of images, or a quoted glob ('frames/*.jpg')")
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
                   help="with BlazeFace, crop and resize faces on the host with the PIL-exact resize (as the "
                        "other detectors do) to reproduce published numbers bit for bit; default: on the device")
    p.add_argument("--detector-model", help="YuNet .onnx file for --detector yunet; a folder with pnet.pt, rnet.pt, onet.pt for --detector mtcnn (else fetched by name)")
    p.add_argument("--detect-width", type=int, default=DETECT_WIDTH, metavar="PX",
                   help=f"detect faces on frames shrunk to at most this width, boxes mapped back to full "
                        f"resolution for cropping (default {DETECT_WIDTH}; 0 = full resolution)")
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
    p.add_argument("--batch-size", type=int, default=16,
                   help="frames per device batch with BlazeFace; faces per inference batch otherwise (fixed shape)")
    p.add_argument("--out", help="CSV to write (default: <input name>.emotions.csv in the current folder)")
    p.add_argument("--plot", help="PNG timeline of expressions and valence/arousal per face track")


def run(args: argparse.Namespace) -> int:
    from collections import Counter

    from hsemo_jax.fileio import check_writable
    from hsemo_jax.predict import predict
    from hsemo_jax.predict.pipeline import check_options
    from hsemo_jax.predict.writer import CsvOutput, plot

    models = tuple(args.models or ("enet_b0_8_va_mtl",))
    check_options(models=len(models), weights=args.blend, detector=args.detector, detect_width=args.detect_width,
                  detect_every=args.detect_every, smooth=args.smooth, sigma=args.sigma, k=args.k,
                  batch_size=args.batch_size, au_thresholds=args.au_thresholds)
    out = check_writable(args.out or f"{Path(args.input.rstrip('/')).stem or 'predictions'}.emotions.csv", "CSV")
    if args.plot:
        check_writable(args.plot, "plot")
    csv_out = CsvOutput(out)
    try:
        table = predict(args.input, models, weights=args.blend,
                        detector=args.detector, detector_model=args.detector_model,
                        detect_width=args.detect_width, detect_every=args.detect_every, smooth=args.smooth,
                        sigma=args.sigma, k=args.k, batch_size=args.batch_size, head=args.head,
                        au_thresholds=args.au_thresholds, exact_preprocess=args.exact_preprocess,
                        on_rows=csv_out.write_rows, progress=True)
    except KeyboardInterrupt:
        partial = csv_out.abort()
        print(f"interrupted: rows computed so far are in {partial}; {out} was not written", file=sys.stderr)
        return 130
    except BaseException:
        csv_out.abort().unlink(missing_ok=True)
        raise
    csv_out.finalize(table)
    face = table.has_face
    frames = len(set(zip(table["source"], table["frame"])))
    no_face = frames - len(set(zip(table["source"][face], table["frame"][face])))
    print(f"{frames} frame(s), {int(face.sum())} face(s) in {len(set(table['track_id'][face]))} track(s), "
          f"{no_face} frame(s) without a face, {len(table.skipped)} unreadable file(s) skipped")
    if face.any():
        top = Counter(table["expression"][face]).most_common(3)
        print("most frequent expressions: " + ", ".join(f"{e} ({n})" for e, n in top))
        if "valence" in table.columns:
            print(f"mean valence {table['valence'][face].mean():+.3f}, mean arousal {table['arousal'][face].mean():+.3f}")
    else:
        print("no faces were detected; try --detector none for pre-cropped faces")
    print(f"wrote {out}")
    if args.plot:
        print(f"wrote {plot(table, args.plot)}")
    return 0
