"""`predict --abaw-out`: the ABAW MTL prediction file of one or more runs, which `hsemo-jax evaluate`
and `postprocess.abaw_io.read_mtl_predictions` read (formats: `hsemo_jax/postprocess/abaw_io.py`).

* Names: a video `DIR/NAME.mp4` is ABAW video NAME and its frame i (0-based) the image
  `NAME/{i+1:05d}.jpg` (Aff-Wild2 numbers frames from 1); numbered frames `DIR/VIDEO/00042.jpg`
  (ABAW cropped_aligned) keep their folder and number. Other images have no frame number: refused
  before any work.
* One row per frame, for one face: ABAW annotates one person per video (two-person videos as
  `<video>_left` / `<video>_right`). Of several face tracks in a video, the track with the largest
  face area summed over its frames (present longest and largest: the main subject) is written; the
  other faces are left out.
* Frames without that face (not detected, out of frame) repeat the prediction of the nearest
  earlier frame that has one; frames before its first appearance take that first prediction. A
  video without any face gets neutral rows (Neutral 1, valence = arousal = 0, AUs 0) and a warning.
  Unreadable images of a frame folder have no row (they are reported as skipped).
* Columns: valence and arousal as the model gives them; the 8 expression probabilities in Aff-Wild2
  order (Other <- Contempt, as HSEmotion does; 0 for a 7-class model); the 12 AU probabilities of
  `--head`. The model gives no AUs without a head, and the format needs them: refused before any work.
* Layouts: "scores" (probabilities; what `evaluate` and `sweep` smooth, blend and threshold) or
  "submission" (expression index, AUs 0/1 at the head's thresholds: what ABAW accepts).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from hsemo_jax import labels
from hsemo_jax.errors import InputError
from hsemo_jax.postprocess import abaw_io
from hsemo_jax.predict.pipeline import Predictions
from hsemo_jax.predict.video import IMAGE_EXTS, FrameSource

LAYOUTS = ("scores", "submission")
_AFFWILD_FROM = labels.AFFWILD_FROM_HSE_NAMES  # the model's class name in each Aff-Wild2 column


def check_head(head: str | None) -> None:
    """InputError unless a head gives the AUs (before any work)."""
    if head is None:
        raise InputError("--abaw-out: the ABAW MTL format has 12 action-unit columns, and the model predicts no "
                         "AUs; give --head DIR (a head trained with `hsemo-jax train-head`)")


def check_models(classes: Sequence[str], with_va: bool) -> None:
    """InputError unless the models give every other column of the ABAW MTL format (before any work)."""
    missing = [n for n in _AFFWILD_FROM if n != "Contempt" and n not in classes]
    if missing:
        raise InputError(f"--abaw-out: the model predicts {', '.join(classes)}; the ABAW format needs "
                         f"{', '.join(missing)} too")
    if not with_va:
        raise InputError("--abaw-out: the model predicts no valence/arousal; the ABAW MTL format needs them "
                         "(use a *_va_mtl model)")


def video_names(source: FrameSource) -> list[str]:
    """The ABAW video names of an input (checked before any work): the video's file stem, or the
    folders of numbered frames. InputError naming the file for images without a frame number."""
    if source.kind == "video":
        names = [source.files[0].stem]
    else:
        for f in source.files:
            if not re.fullmatch(r"\d+", f.stem):
                raise InputError(f"{f}: --abaw-out needs a video or numbered frames (ABAW cropped_aligned: "
                                 "VIDEO/00001.jpg); this image has no frame number")
        folders = {}
        for f in source.files:
            other = folders.setdefault(f.absolute().parent.name, f.absolute().parent)
            if other != f.absolute().parent:
                raise InputError(f"{f}: its folder and {other} have one name, which ABAW files use for the video; "
                                 "give them one at a time")
        names = list(folders)
    for name in names:
        if not name or "," in name:
            raise InputError(f"{source.spec}: video name {name!r} cannot be written in an ABAW file "
                             "(<video>/<frame>.jpg, no commas)")
    return names


def _image_names(table: Predictions) -> tuple[np.ndarray, np.ndarray]:
    """(ABAW video name, ABAW frame number) of every row."""
    video, number = [], []
    for src, frame in zip(table["source"], table["frame"]):
        p = Path(src)
        if p.suffix.lower() in IMAGE_EXTS:
            video.append(p.absolute().parent.name)
            number.append(int(frame))
        else:
            video.append(p.stem)
            number.append(int(frame) + 1)
    return np.array(video, dtype=object), np.array(number, np.int64)


def mtl_rows(table: Predictions) -> tuple[list[str], dict[str, np.ndarray], list[str]]:
    """One row per frame of the main face (see the module's docstring): image names, {"va" (N, 2),
    "expr" (N, 8) probabilities in Aff-Wild2 order, "au" (N, 12) probabilities, "au_label" (N, 12)},
    and notes for the user (videos without a face, frames filled from a neighbour)."""
    n = len(table)
    zero = np.zeros(n)
    expr = np.stack([table[f"p_{c}"] if c in table.expression_names else zero for c in _AFFWILD_FROM], axis=1)
    au = np.stack([table[f"p_{a}"] for a in labels.AU_NAMES], axis=1)
    au_label = np.stack([table[a] for a in labels.AU_NAMES], axis=1)
    va = np.stack([table[v] for v in labels.VA_NAMES], axis=1)
    face = table.has_face
    area = np.where(face, (table["x2"] - table["x1"]) * (table["y2"] - table["y1"]), 0.0)
    videos, numbers = _image_names(table)
    images, idx, notes = [], [], []
    empty = {"va": np.zeros(2), "expr": np.eye(8)[0], "au": np.zeros(12), "au_label": np.zeros(12)}
    neutral: list[int] = []  # positions in `images` of rows of videos without a face
    for video in dict.fromkeys(videos.tolist()):
        rows = np.flatnonzero(videos == video)
        frames = np.unique(numbers[rows])
        tracks = {}
        for r in rows[face[rows]]:
            tracks[table["track_id"][r]] = tracks.get(table["track_id"][r], 0.0) + area[r]
        main = {}
        if tracks:
            best = max(tracks, key=lambda t: (tracks[t], -t))
            main = {numbers[r]: r for r in rows if face[r] and table["track_id"][r] == best}
        else:
            notes.append(f"{video}: no face in any of its {len(frames)} frame(s); written as neutral "
                         "(Neutral, valence = arousal = 0, no AU)")
        first = main[min(main)] if main else -1
        last, filled = first, 0
        for f in frames:
            images.append(abaw_io.ce_image_name(video, f))
            if f in main:
                last = main[f]
            else:
                filled += 1
            if last < 0:
                neutral.append(len(idx))
            idx.append(last)
        if main and filled:
            notes.append(f"{video}: {filled} of {len(frames)} frame(s) without the main face repeat the "
                         "prediction of the nearest earlier frame with it")
        if len(tracks) > 1:
            notes.append(f"{video}: {len(tracks)} face tracks; the ABAW rows are of track {best}, the largest")
    idx = np.array(idx, np.int64)
    out = {}
    for key, values in (("va", va), ("expr", expr), ("au", au), ("au_label", au_label)):
        picked = values[np.maximum(idx, 0)].astype(np.float64)
        picked[neutral] = empty[key]
        out[key] = picked
    return images, out, notes


def write(path: str | os.PathLike, tables: Sequence[Predictions], layout: str = "scores") -> list[str]:
    """Write the ABAW MTL file of `tables` (one per run; their videos must differ) atomically in
    `layout`; returns the notes of `mtl_rows`."""
    if layout not in LAYOUTS:
        raise InputError(f"ABAW layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    images, parts, notes = [], [], []
    for table in tables:
        im, cols, nt = mtl_rows(table)
        images += im
        parts.append(cols)
        notes += nt
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if layout == "scores":
        abaw_io.write_mtl_scores(os.fspath(path), images, cols["va"].astype(np.float32),
                                 cols["expr"].astype(np.float32), cols["au"].astype(np.float32))
    else:
        abaw_io.write_mtl_submission(os.fspath(path), images, cols["va"].astype(np.float32),
                                     cols["expr"].argmax(axis=1), cols["au_label"].astype(np.int64))
    return notes
