"""`hsemo-jax intensity train|predict`: video-level emotion intensity (ABAW-5 ERI / ABAW-6 EMI).

HSEmotion's method (spec seed_extras §1): per-frame scores (or embeddings) of a frozen backbone
on every n-th face crop of a video -> per-video [mean ‖ std ‖ min ‖ max] -> a small regressor
with sigmoid outputs, trained with 1 - mean Pearson, the epoch with the best validation mean
Pearson kept. The metric is the mean over targets of Pearson's r over the videos.

    hsemo-jax intensity train --labels train_split.csv [--val-labels valid_split.csv]
        (--features FEATS [FEATS ...] | --faces FACES [FACES ...] --model MODEL [--cache DIR])
        [--targets auto|reaction7|vidmimic6|NAME,...] [--input scores|embedding|both] [--every 5]
        [--variant linear|mlp] [--loss pearson|weighted] [--weights W,...] [--epochs N]
        [--batch-size N] [--lr 1e-3] [--seed 0] [--train-val] [--on-missing error|skip]
        --out RUN
    hsemo-jax intensity predict RUN
        (--features FEATS [FEATS ...] | --faces FACES [FACES ...] [--model MODEL] [--cache DIR])
        [--videos LIST | --labels LABELS.csv] [--on-missing error|skip] --out submission.csv

Label files: header `id,<K target names>`, then `<5-digit video id>,<K floats>` (Hume-Reaction:
7 targets, Hume-Vidmimic2: 6; `hsemo_jax.intensity.labels`). Face crops: FACES/<video id>/<frame>.jpg.
FEATS: an `extract-features --images FACES` output folder or an .npz with `name`
(`<video id>/<frame>.jpg`), `scores` and/or `embedding` (`hsemo_jax.intensity.frames`).

train writes RUN/regressor.npz + RUN/regressor.json (targets, input, every, backbone, per-epoch
history, best epoch and its validation Pearson per target). `--train-val` fits on train + val
(the notebook's final submissions): nothing is held out, so the last epoch is kept.
predict writes the submission CSV (header `Filename,<K names>`, one row per video) atomically;
videos: those of --videos/--labels, else every video folder of the sources. With --labels the
mean Pearson is printed too. A video without face crops stops with an error naming its folder,
unless --on-missing skip (then it is left out and listed).

Light at import: jax is imported only in `run`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _sources(p: argparse.ArgumentParser, model_required_help: str) -> None:
    g = p.add_argument_group("per-frame features (one of)")
    g.add_argument("--features", nargs="+", metavar="FEATS",
                   help="extract-features output folder(s) or .npz file(s) of per-frame features")
    g.add_argument("--faces", nargs="+", metavar="FACES",
                   help="face-crop folder(s) FACES/<video id>/<frame>.jpg; features are extracted with --model")
    g.add_argument("--model", help=model_required_help)
    g.add_argument("--cache", help="folder for the features extracted from --faces, reused by later runs "
                   "(default: RUN/features)")
    g.add_argument("--extract-batch-size", type=int, default=64, help="crops per model call (default 64)")
    p.add_argument("--on-missing", choices=("error", "skip"), default="error",
                   help="a video without face crops: stop with an error naming its folder (default), "
                   "or leave it out and list it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n", 1)[1].rsplit("\n\nLight at import", 1)[0]
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    t = sub.add_parser("train", help="fit a regressor on per-video statistics of frame features",
                       description="Fit the per-video intensity regressor (HSEmotion ERI/EMI).")
    t.add_argument("--labels", required=True, help="training labels (train_split.csv)")
    t.add_argument("--val-labels", help="validation labels (valid_split.csv): best-epoch selection and report")
    _sources(t, "backbone for --faces: a published name (e.g. enet_b0_8_va_mtl), a converted model folder "
             "or a .pt file")
    t.add_argument("--targets", default="auto",
                   help="expected targets: auto (from the header), reaction7 (Hume-Reaction, 7), vidmimic6 "
                   "(Hume-Vidmimic2, 6) or comma-separated names (default auto)")
    t.add_argument("--input", choices=("scores", "embedding", "both"), default="scores",
                   help="per-frame vector: the backbone's 10 scores (default), its embedding, or both")
    t.add_argument("--every", type=int, default=5, help="use every n-th crop of a video, in frame order (default 5)")
    t.add_argument("--variant", choices=("linear", "mlp"), default="linear",
                   help="linear: Dense(K, sigmoid) + L2(1/512); mlp: Dense(64, relu) -> Dense(K, sigmoid)")
    t.add_argument("--loss", choices=("pearson", "weighted"),
                   help="1 - mean Pearson, or 1 - weighted Pearson (default: pearson for linear, weighted for mlp)")
    t.add_argument("--weights", help="comma-separated per-target weights of the weighted loss (normalised); "
                   "default: 1/[1,8,4,2,8,8] for vidmimic6, uniform otherwise")
    t.add_argument("--epochs", type=int, help="default: 100 (linear), 20 (mlp)")
    t.add_argument("--batch-size", type=int,
                   help="videos per step (default: from the training set, about 16 steps an epoch within "
                   "32..512; 512, the notebook's, from 8192 videos on)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    t.add_argument("--hidden", type=int, default=64, help="mlp hidden units (default 64)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--train-val", action="store_true",
                   help="fit on train + val labels together (no held-out data: the last epoch is kept)")
    t.add_argument("--out", required=True, help="run folder (regressor.npz, regressor.json)")
    t.add_argument("--overwrite", action="store_true", help="replace a regressor already in --out")

    q = sub.add_parser("predict", help="per-video intensities of a trained regressor -> submission CSV",
                       description="Predict per-video intensities and write the submission CSV.")
    q.add_argument("run_dir", metavar="RUN", help="run folder of `hsemo-jax intensity train`")
    _sources(q, "backbone for --faces (default: the model recorded by train)")
    which = q.add_mutually_exclusive_group()
    which.add_argument("--videos", help="file of video ids to predict (one per line, first field; header optional)")
    which.add_argument("--labels", help="label CSV: predict its videos and print the mean Pearson")
    q.add_argument("--out", required=True, help="submission CSV to write")


def run(args: argparse.Namespace) -> int:
    return _train(args) if args.action == "train" else _predict(args)


def _report(s: str) -> None:
    """Reports that are never silenced (skipped videos, extraction summaries)."""
    print(s, file=sys.stderr)


def _source_kwargs(args) -> dict:
    return dict(features=args.features, faces=args.faces, model=args.model, cache=args.cache,
                extract_batch_size=args.extract_batch_size, on_missing=args.on_missing,
                progress=not args.no_progress, log=_report)


def _train(args) -> int:
    from hsemo_jax.errors import InputError
    from hsemo_jax.fileio import check_writable
    from hsemo_jax.intensity.regressor import TrainConfig
    from hsemo_jax.intensity.runs import train_run

    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise InputError(f"--weights {args.weights!r}: expected comma-separated numbers") from None
    check_writable(Path(args.out) / "regressor.json", "regressor")
    cfg = TrainConfig(variant=args.variant, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      loss=args.loss, weights=weights, hidden=args.hidden, seed=args.seed)
    res, names = train_run(args.labels, args.out, cfg, val_labels=args.val_labels, targets=args.targets,
                           kind=args.input, every=args.every, train_val=args.train_val, overwrite=args.overwrite,
                           **_source_kwargs(args))
    if res.best_val is not None:
        per = ", ".join(f"{n} {r:.4f}" for n, r in zip(names, res.best_val_per_target))
        print(f"best epoch {res.best_epoch}: validation mean Pearson {res.best_val:.4f} ({per})")
    else:
        print(f"kept the last epoch ({res.best_epoch}); no held-out validation")
    out = Path(args.out)
    print(f"wrote {out}/regressor.npz, {out}/regressor.json", file=sys.stderr)
    return 0


def _predict(args) -> int:
    from hsemo_jax.fileio import check_writable
    from hsemo_jax.intensity.regressor import mean_pearson, pearson_per_target
    from hsemo_jax.intensity.runs import predict_run

    run = Path(args.run_dir)
    check_writable(args.out, "submission", inputs=(args.videos, args.labels, *(args.features or ()),
                                                    run / "regressor.json", run / "regressor.npz"))
    p = predict_run(args.run_dir, args.out, videos=args.videos, labels=args.labels, **_source_kwargs(args))
    print(f"wrote {args.out}: {len(p.videos)} videos", file=sys.stderr)
    if p.truth is not None:
        per = pearson_per_target(p.values, p.truth)
        print(f"mean Pearson {mean_pearson(p.values, p.truth):.4f} over {len(p.videos)} videos ("
              + ", ".join(f"{n} {r:.4f}" for n, r in zip(p.names, per)) + ")")
    return 0
