"""A regressor run from label files and per-frame sources, and a submission from a run: what
`hsemo-jax intensity train|predict` does, callable without the command line.

    train_run(labels, out, config, ...)   fit on per-video statistics, write RUN/regressor.npz + .json
    predict_run(run_dir, out, ...)        per-video intensities of a run's regressor, submission CSV

Sources of per-frame features: `features` (extract-features output folders or .npz files) or
`faces` (face-crop folders FACES/<video id>/<frame>.jpg) with `model`, extracted into `cache`.
`log(str)` gets the reports that are never silenced (skipped videos, extraction summaries);
`progress=False` silences progress bars and per-epoch lines.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from hsemo_jax.errors import InputError


@dataclass
class Predicted:
    videos: list            # video ids, in submission order
    values: np.ndarray      # (V, K) intensities
    names: tuple            # the K target names
    truth: np.ndarray | None  # (V, K) labels of the videos when `labels` was given


def _rows(labels, ids) -> list:
    """Rows of `labels` for video ids `ids`."""
    pos = {v: i for i, v in enumerate(labels.ids)}
    return [pos[v] for v in ids]


def train_run(labels: str, out: str | Path, config, *, val_labels: str | None = None, targets: str = "auto",
              features: Sequence[str] | None = None, faces: Sequence[str] | None = None, model: str | None = None,
              cache: str | None = None, extract_batch_size: int = 64, kind: str = "scores", every: int = 5,
              train_val: bool = False, on_missing: str = "error", overwrite: bool = False, progress: bool = True,
              log=print):
    """Fit the per-video regressor (`regressor.TrainConfig` `config`) on the videos of `labels`, the
    best epoch by the validation mean Pearson on `val_labels` kept (with `train_val`, fit on both and
    keep the last epoch); write it to `out`. Returns (`regressor.FitResult`, target names)."""
    from hsemo_jax.intensity import labels as L
    from hsemo_jax.intensity.frames import load_frames, video_features
    from hsemo_jax.intensity.regressor import fit, save_regressor
    from hsemo_jax.intensity.stats import stat_columns

    out = Path(out)
    if (out / "regressor.json").exists() and not overwrite:
        raise InputError(f"{out}: already holds a regressor; pass --overwrite to replace it")
    if train_val and not val_labels:
        raise InputError("--train-val needs --val-labels")
    train = L.read_labels(labels, L.resolve_targets(targets))
    val = L.read_labels(val_labels, train.names) if val_labels else None
    if val is not None:
        both = sorted(set(train.ids) & set(val.ids))
        if both:
            raise InputError(f"{val.path}:{val.line_of(both[0])}: video {both[0]} is also in {train.path} "
                             f"(line {train.line_of(both[0])})")
    ff = load_frames(features, faces, kind, every=every, model=model, cache=cache or out / "features",
                     batch_size=extract_batch_size, progress=progress, log=log)
    ids_t, x_t = video_features(ff, train.ids, on_missing=on_missing, what=f"videos of {train.path}", log=log)
    y_t = train.values[_rows(train, ids_t)]
    x_v = y_v = None
    if val is not None:
        ids_v, x_v = video_features(ff, val.ids, on_missing=on_missing, what=f"videos of {val.path}", log=log)
        y_v = val.values[_rows(val, ids_v)]
    if train_val:
        x_t, y_t = np.concatenate([x_t, x_v]), np.concatenate([y_t, y_v])
        x_v = y_v = None
    res = fit(x_t, y_t, train.names, config, x_val=x_v, y_val=y_v, log=log if progress else None)
    if res.config.batch_size >= len(x_t) and res.best_epoch == res.config.epochs:
        log(f"warning: every epoch was a single step (batch size {res.config.batch_size}, {len(x_t)} training "
            f"videos) and the last epoch was the best: the regressor is likely undertrained; use a smaller "
            f"--batch-size or more --epochs")
    names = [f"{kind}_{i}" for i in range(ff.dim)]
    meta = {
        "variant": res.config.variant, "in_dim": int(x_t.shape[1]), "hidden": res.config.hidden,
        "targets": list(train.names), "target_set": L.known_set(train.names),
        "features": {"input": kind, "every": every, "frame_dim": ff.dim,
                     "statistics": ["mean", "std", "min", "max"],
                     "columns": stat_columns(names), "model": ff.model, "model_arg": model,
                     "sources": ff.sources},
        "training": {"labels": str(Path(labels).absolute()),
                     "val_labels": str(Path(val_labels).absolute()) if val_labels else None,
                     "train_val": bool(train_val), "videos": int(len(x_t)),
                     "val_videos": None if x_v is None else int(len(x_v)),
                     "config": {k: v for k, v in vars(res.config).items()},
                     "best_epoch": res.best_epoch, "best_val_mean_pearson": res.best_val,
                     "best_val_pearson_per_target": res.best_val_per_target, "history": res.history},
    }
    save_regressor(res.model, out, meta)
    return res, train.names


def predict_run(run_dir: str | Path, out: str | Path, *, features: Sequence[str] | None = None,
                faces: Sequence[str] | None = None, model: str | None = None, cache: str | None = None,
                extract_batch_size: int = 64, videos: str | None = None, labels: str | None = None,
                on_missing: str = "error", progress: bool = True, log=print) -> Predicted:
    """Per-video intensities of the regressor in `run_dir`, written to the submission CSV `out`.
    Videos: those of the `videos` list file or the `labels` CSV (whose values come back as `truth`),
    else every video folder of the sources. `model` defaults to the backbone the run recorded."""
    from hsemo_jax.intensity import labels as L
    from hsemo_jax.intensity.frames import load_frames, video_features
    from hsemo_jax.intensity.regressor import load_regressor, predict

    regressor, meta = load_regressor(run_dir)
    fmeta = meta["features"]
    names = tuple(meta["targets"])
    truth = L.read_labels(labels, names) if labels else None
    ids = truth.ids if truth is not None else (L.read_video_list(videos) if videos else None)
    if faces and not (model or fmeta.get("model_arg") or (fmeta.get("model") or {}).get("path")):
        raise InputError("--faces needs --model: the run does not record the backbone it was trained on")
    model_arg = model or fmeta.get("model_arg") or (fmeta.get("model") or {}).get("path")
    ff = load_frames(features, faces, fmeta["input"], every=int(fmeta["every"]), model=model_arg,
                     cache=cache or Path(run_dir) / "features", batch_size=extract_batch_size, progress=progress,
                     log=log)
    if ff.dim != fmeta["frame_dim"]:
        raise InputError(f"{ff.where('')}: per-frame {fmeta['input']} have {ff.dim} columns, the regressor in "
                         f"{run_dir} was trained on {fmeta['frame_dim']}")
    trained = fmeta.get("model") or {}
    if ff.model and trained and ff.model.get("arch") != trained.get("arch"):
        raise InputError(f"{ff.where('')}: features of a {ff.model.get('arch')} backbone, the regressor was "
                         f"trained on {trained.get('arch')} features")
    vids, x = video_features(ff, ids, on_missing=on_missing,
                             what="videos" if ids is None else f"videos of {labels or videos}", log=log)
    values = predict(regressor, x)
    L.write_submission(out, vids, values, names)
    return Predicted(vids, values, names, None if truth is None else truth.values[_rows(truth, vids)])
