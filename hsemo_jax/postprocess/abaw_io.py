"""ABAW file formats (spec §6): MTL ground truth and predictions, CE submissions, per-video files.

Readers check every field and raise `InputError` naming the file, the 1-based line and the value;
a UTF-8 byte order mark at the start of a file is ignored.
Writers write a temporary file in the target directory and `os.replace` it, so a reader never sees
a half-written file.

Formats
-------
MTL ground truth (`training_set_annotations.txt`, `validation_set_annotations.txt`):
    header line, then `<video>/<frame>.jpg,valence,arousal,expression,AU1,...,AU26` (16 fields);
    missing: V/A = -5, expression = -1, AU = -1. Expression in Aff-Wild2 order (spec §7).
MTL predictions, two layouts told apart by the header:
    * "submission" (what ABAW accepts, mtl7#c87): header `image,valence,arousal,expression,aus`,
      rows `img,v,a,expr_index,au1,...,au12` (16 fields, AUs 0/1);
    * "scores" (this package; keeps what smoothing, blending and threshold search need): header
      `image,valence,arousal,Neutral,...,Other,AU1,...,AU26`, rows of 23 fields: V, A, the 8 EXPR
      probabilities (Aff-Wild2 order, summing to 1) and the 12 AU probabilities, all in [0, 1].
    Predicted V/A outside [-1, 1] are read as they are (`MTLPredictions.va_warning` tells).
Test list (`test_set_examples/MTL.txt`): header, then `img,` rows.
CE submission (ce7#c96): header `image_location,Fearfully_Surprised,...,Sadly_Angry`, rows
    `<video>/<%05d>.jpg,<class 0..6>`.
Per-video uni-task files (`<Challenge>/<Split>/<video>.txt`): header, then line i = frame i:
    EXPR one int (-1..7), VA `v,a` (-5 missing), AU 12 ints (-1 missing).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hsemo_jax.errors import InputError
from hsemo_jax.fileio import atomic_write
from hsemo_jax.labels import AFFWILD_EXPR_8, AU_NAMES, CEXPR_SUBMISSION_NAMES, VA_NAMES

SUBMISSION_HEADER = "image,valence,arousal,expression,aus"
SCORES_HEADER = ",".join(["image", *VA_NAMES, *AFFWILD_EXPR_8, *AU_NAMES])
CE_HEADER = ",".join(["image_location", *CEXPR_SUBMISSION_NAMES])
EXPR_SUM_TOLERANCE = 0.01  # the 8 probabilities of a row sum to 1 up to rounding in the file
_IMAGE = re.compile(r"^(?P<video>[^,]+)/(?P<frame>\d+)\.jpg$")


@dataclass
class MTLLabels:
    """Ground truth rows, file order. va (N, 2) float32; expr (N,) int32; aus (N, 12) int32."""

    path: str
    images: list
    videos: np.ndarray
    frames: np.ndarray
    va: np.ndarray
    expr: np.ndarray
    aus: np.ndarray
    lines: np.ndarray  # 1-based line number of every row

    @property
    def any_valid(self) -> np.ndarray:
        """Rows with at least one valid task label (the notebook keeps only these)."""
        return ((self.va[:, 0] > -5) & (self.va[:, 1] > -5)) | (self.expr > -1) | (self.aus.min(axis=1) >= 0)


@dataclass
class MTLPredictions:
    """Prediction rows, file order. expr (N, 8): probabilities ("scores") or one-hot ("submission");
    aus (N, 12): probabilities or 0/1."""

    path: str
    kind: str
    images: list
    videos: np.ndarray
    frames: np.ndarray
    va: np.ndarray
    expr: np.ndarray
    aus: np.ndarray
    lines: np.ndarray

    @property
    def expr_labels(self) -> np.ndarray:
        return np.argmax(self.expr, axis=1).astype(np.int32)

    def va_warning(self) -> str | None:
        """A warning when predicted valence or arousal leave [-1, 1], the labels' range (CCC uses
        them as they are), naming the first such value and its line; None when all lie inside."""
        bad = np.abs(self.va) > 1
        if not bad.any():
            return None
        i, j = np.argwhere(bad)[0]
        return (f"{self.path}:{self.lines[i]}: {VA_NAMES[j]} {self.va[i, j]:g} outside [-1, 1], the labels' range "
                f"({int(bad.any(axis=1).sum())} row(s) in all); the metrics use the values as they are")


@dataclass
class CESubmission:
    path: str
    images: list
    videos: np.ndarray
    frames: np.ndarray
    labels: np.ndarray
    lines: np.ndarray


# ----------------------------------------------------------------------------------------------


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, "r", encoding="utf-8-sig") as f:  # a byte order mark (Excel's UTF-8) is dropped
            text = f.read()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 text file ({e})") from None
    lines = text.splitlines()
    if not text.strip():
        raise InputError(f"{path}: empty file (expected a header line)")
    return lines


def parse_image(path: str, line: int, name: str) -> tuple[str, int]:
    """`<video>/<frame>.jpg` -> (video, frame)."""
    m = _IMAGE.match(name)
    if not m:
        raise InputError(f"{path}:{line}: image {name!r} is not of the form <video>/<frame number>.jpg")
    return m.group("video"), int(m.group("frame"))


def _num(path, line, field, value, kind=float):
    try:
        x = kind(value)
    except ValueError:
        raise InputError(f"{path}:{line}: {field} {value!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(x):
        raise InputError(f"{path}:{line}: {field} {value!r} is not finite")
    return x


def _rows(path: str, lines: list[str], nfields: int):
    """Yield (line number, fields) for non-empty data lines; checks the field count."""
    n = 0
    for i, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        fields = [f.strip() for f in raw.split(",")]
        if len(fields) != nfields:
            raise InputError(f"{path}:{i}: expected {nfields} comma-separated fields, got {len(fields)}: {raw!r}")
        n += 1
        yield i, fields
    if n == 0:
        raise InputError(f"{path}: no data rows after the header")


def _check_unique(path, images, lines):
    seen: dict = {}
    for name, ln in zip(images, lines):
        if name in seen:
            raise InputError(f"{path}:{ln}: image {name!r} already listed on line {seen[name]}")
        seen[name] = ln


def _va(path, ln, fields, missing_ok: bool):
    out = []
    for name, v in zip(("valence", "arousal"), fields):
        x = _num(path, ln, name, v)
        if not (-1.0 <= x <= 1.0) and not (missing_ok and x == -5.0):
            raise InputError(f"{path}:{ln}: {name} {v!r} outside [-1, 1]" + (" (and not -5 = missing)" if missing_ok else ""))
        out.append(x)
    return out


def _int_in(path, ln, field, v, low, high):
    x = _num(path, ln, field, v, float)
    if x != int(x):
        raise InputError(f"{path}:{ln}: {field} {v!r} is not an integer")
    x = int(x)
    if not low <= x <= high:
        raise InputError(f"{path}:{ln}: {field} {v!r} out of range [{low}, {high}]")
    return x


def read_mtl_labels(path: str) -> MTLLabels:
    """Read an MTL annotation file (header + 16 fields per row)."""
    lines = _read_lines(path)
    if _IMAGE.match(lines[0].split(",")[0].strip()):  # no header: its first labelled row would be dropped
        raise InputError(f"{path}:1: expected a header line (image,valence,arousal,expression,AU1,...), "
                         f"found a data row {lines[0]!r}")
    images, vids, frames, va, expr, aus, lns = [], [], [], [], [], [], []
    for ln, f in _rows(path, lines, 16):
        v, fr = parse_image(path, ln, f[0])
        images.append(f[0]); vids.append(v); frames.append(fr); lns.append(ln)
        va.append(_va(path, ln, f[1:3], missing_ok=True))
        expr.append(_int_in(path, ln, "expression", f[3], -1, 7))
        aus.append([_int_in(path, ln, AU_NAMES[j], x, -1, 1) for j, x in enumerate(f[4:])])
    _check_unique(path, images, lns)
    return MTLLabels(path=path, images=images, videos=np.array(vids, dtype=object), frames=np.array(frames, np.int64),
                     va=np.array(va, np.float32), expr=np.array(expr, np.int32), aus=np.array(aus, np.int32),
                     lines=np.array(lns, np.int64))


def read_mtl_predictions(path: str) -> MTLPredictions:
    """Read MTL predictions in the "submission" or "scores" layout (told apart by the header)."""
    lines = _read_lines(path)
    header = lines[0].strip().replace(" ", "")
    if header == SUBMISSION_HEADER:
        kind, nfields = "submission", 16
    elif header.lower() == SCORES_HEADER.lower():
        kind, nfields = "scores", 23
    else:
        raise InputError(f"{path}:1: unknown header {lines[0]!r}; expected {SUBMISSION_HEADER!r} (submission) "
                         f"or {SCORES_HEADER!r} (scores)")
    images, vids, frames, va, expr, aus, lns = [], [], [], [], [], [], []
    for ln, f in _rows(path, lines, nfields):
        v, fr = parse_image(path, ln, f[0])
        images.append(f[0]); vids.append(v); frames.append(fr); lns.append(ln)
        va.append([_num(path, ln, n, x) for n, x in zip(("valence", "arousal"), f[1:3])])
        if kind == "submission":
            e = _int_in(path, ln, "expression", f[3], 0, 7)
            expr.append(np.eye(8, dtype=np.float32)[e])
            aus.append([_int_in(path, ln, AU_NAMES[j], x, 0, 1) for j, x in enumerate(f[4:])])
        else:
            p = [_num(path, ln, AFFWILD_EXPR_8[j], x) for j, x in enumerate(f[3:11])]
            q = [_num(path, ln, AU_NAMES[j], x) for j, x in enumerate(f[11:])]
            for name, x, raw in zip(AFFWILD_EXPR_8 + AU_NAMES, p + q, f[3:]):
                if not 0.0 <= x <= 1.0:
                    raise InputError(f"{path}:{ln}: {name} probability {raw!r} outside [0, 1]")
            if abs(math.fsum(p) - 1.0) > EXPR_SUM_TOLERANCE:
                raise InputError(f"{path}:{ln}: the 8 expression probabilities sum to {math.fsum(p):.4g}, "
                                 "expected 1 (softmax probabilities, not logits or independent scores)")
            expr.append(p); aus.append(q)
    _check_unique(path, images, lns)
    return MTLPredictions(path=path, kind=kind, images=images, videos=np.array(vids, dtype=object),
                          frames=np.array(frames, np.int64), va=np.array(va, np.float32),
                          expr=np.array(expr, np.float32), aus=np.array(aus, np.float32), lines=np.array(lns, np.int64))


def read_mtl_predictions_for(path: str, images, of: str) -> dict[str, np.ndarray]:
    """Predictions from `path` for exactly `images` (in that order), e.g. a second model to blend
    with the predictions in file `of`: {"VA": (N, 2), "EXPR": (N, 8), "AU": (N, 12)}."""
    b = read_mtl_predictions(path)
    pos = {n: i for i, n in enumerate(b.images)}
    missing = [n for n in images if n not in pos]
    if missing:
        raise InputError(f"{path}: no prediction for image {missing[0]!r} of {of}")
    idx = np.array([pos[n] for n in images])
    return {"VA": b.va[idx], "EXPR": b.expr[idx], "AU": b.aus[idx]}


def read_image_list(path: str) -> list[str]:
    """Image names of a test list (`test_set_examples/MTL.txt`: header, then `img,` rows), in order."""
    lines = _read_lines(path)
    out, lns = [], []
    for i, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        name = raw.split(",")[0].strip()
        parse_image(path, i, name)
        out.append(name); lns.append(i)
    if not out:
        raise InputError(f"{path}: no data rows after the header")
    _check_unique(path, out, lns)
    return out


def is_ce_submission(path: str) -> bool:
    """Whether `path` starts with a C-EXPR submission's header (rather than an MTL file's)."""
    with open(path, "r", encoding="utf-8-sig", errors="replace") as f:
        return f.readline().strip().startswith("image_location,Fearfully_Surprised")


def read_ce_submission(path: str) -> CESubmission:
    """Read a C-EXPR submission (header `image_location,Fearfully_Surprised,...`, rows `img,<0..6>`)."""
    lines = _read_lines(path)
    if lines[0].strip().replace(" ", "") != CE_HEADER:
        raise InputError(f"{path}:1: unknown header {lines[0]!r}; expected {CE_HEADER!r}")
    images, vids, frames, labels, lns = [], [], [], [], []
    for ln, f in _rows(path, lines, 2):
        v, fr = parse_image(path, ln, f[0])
        images.append(f[0]); vids.append(v); frames.append(fr); lns.append(ln)
        labels.append(_int_in(path, ln, "class", f[1], 0, len(CEXPR_SUBMISSION_NAMES) - 1))
    _check_unique(path, images, lns)  # a repeated frame would count twice in the histogram
    return CESubmission(path=path, images=images, videos=np.array(vids, dtype=object), frames=np.array(frames, np.int64),
                        labels=np.array(labels, np.int32), lines=np.array(lns, np.int64))


def read_task_file(path: str, task: str):
    """Per-video uni-task annotation file -> (frames (M,) 1-based, values). Line i >= 1 is frame i.

    task "EXPR": values int32 (M,) in -1..7; "VA": float32 (M, 2), -5 = missing; "AU": int32 (M, 12).
    """
    width = {"EXPR": 1, "VA": 2, "AU": 12}.get(task)
    if width is None:
        raise InputError(f"task must be EXPR, VA or AU, got {task!r}")
    lines = _read_lines(path)
    frames, vals = [], []
    for ln, f in _rows(path, lines, width):
        frames.append(ln - 1)
        if task == "EXPR":
            vals.append(_int_in(path, ln, "expression", f[0], -1, 7))
        elif task == "VA":
            vals.append(_va(path, ln, f, missing_ok=True))
        else:
            vals.append([_int_in(path, ln, AU_NAMES[j], x, -1, 1) for j, x in enumerate(f)])
    dtype = np.float32 if task == "VA" else np.int32
    return np.array(frames, np.int64), np.array(vals, dtype)


# ----------------------------------------------------------------------------------------------
def _fmt(x) -> str:
    return str(np.float32(x))


def _check_rows(images, **arrays):
    n = len(images)
    if n == 0:
        raise InputError("nothing to write: no rows")
    for name, a in arrays.items():
        if len(a) != n:
            raise InputError(f"length mismatch: {n} images but {len(a)} rows of {name}")
        a = np.asarray(a)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            i = int(np.argwhere(~np.isfinite(a))[0][0])
            raise InputError(f"{name} row {i} ({images[i]}): non-finite value")
    for i, name in enumerate(images):
        if not _IMAGE.match(name):
            raise InputError(f"image row {i}: {name!r} is not of the form <video>/<frame number>.jpg")


def write_mtl_submission(path: str, images: Sequence[str], va, expr_labels, au_labels) -> None:
    """ABAW MTL submission: `img,v,a,expr_index,au1,...,au12` rows under SUBMISSION_HEADER."""
    va, e, au = np.asarray(va), np.asarray(expr_labels), np.asarray(au_labels)
    _check_rows(images, va=va, expression=e, aus=au)
    if va.ndim != 2 or va.shape[1] != 2 or au.ndim != 2 or au.shape[1] != 12:
        raise InputError(f"expected va (N, 2) and aus (N, 12), got {va.shape} and {au.shape}")
    if e.min() < 0 or e.max() > 7 or not np.isin(au, (0, 1)).all():
        raise InputError("expression labels must lie in 0..7 and AU labels in {0, 1}")
    out = [SUBMISSION_HEADER]
    for img, (v, a), ex, aus in zip(images, va, e, au):
        out.append(",".join([img, _fmt(v), _fmt(a), str(int(ex)), *(str(int(x)) for x in aus)]))
    atomic_write(path, "\n".join(out) + "\n")


def write_mtl_scores(path: str, images: Sequence[str], va, expr_probs, au_probs) -> None:
    """MTL predictions with scores (SCORES_HEADER): V, A, 8 EXPR probabilities, 12 AU probabilities."""
    va, p, q = np.asarray(va), np.asarray(expr_probs), np.asarray(au_probs)
    _check_rows(images, va=va, expression=p, aus=q)
    if va.shape[1:] != (2,) or p.shape[1:] != (8,) or q.shape[1:] != (12,):
        raise InputError(f"expected va (N, 2), expr (N, 8), aus (N, 12); got {va.shape}, {p.shape}, {q.shape}")
    out = [SCORES_HEADER]
    for img, v, pe, pa in zip(images, va, p, q):
        out.append(",".join([img, *map(_fmt, v), *map(_fmt, pe), *map(_fmt, pa)]))
    atomic_write(path, "\n".join(out) + "\n")


def write_ce_submission(path: str, images: Sequence[str], labels) -> None:
    """C-EXPR submission: CE_HEADER, then `img,<class index 0..6>` per frame."""
    lab = np.asarray(labels)
    _check_rows(images, labels=lab)
    if lab.ndim != 1 or lab.dtype.kind not in "iu" or lab.min() < 0 or lab.max() > 6:
        raise InputError("CE labels must be integers in 0..6")
    atomic_write(path, "\n".join([CE_HEADER] + [f"{img},{int(c)}" for img, c in zip(images, lab)]) + "\n")


def ce_image_name(video: str, frame: int) -> str:
    """`<video>/<%05d>.jpg`, the organisers' image naming."""
    return f"{video}/{int(frame):05d}.jpg"


# ----------------------------------------------------------------------------------------------
@dataclass
class Aligned:
    """Predictions of the known videos in prediction-file order, with the truth of each row
    (missing codes where the ground truth has no row or no label). Ready for smoothing + metrics."""

    videos: np.ndarray
    frames: np.ndarray
    pred_index: np.ndarray  # rows of the prediction file used
    va_true: np.ndarray
    expr_true: np.ndarray
    au_true: np.ndarray
    n_missing: int  # ground-truth rows with a label but no prediction (only with allow_missing)

    def truth(self) -> dict:
        return {"VA": self.va_true, "EXPR": self.expr_true, "AU": self.au_true}


def align(pred: MTLPredictions, gt: MTLLabels, *, allow_missing: bool = False) -> Aligned:
    """Match predictions to ground truth by image name.

    Errors: a prediction for a video that the ground truth does not have (unknown video), and a
    labelled ground-truth row without a prediction (unless allow_missing; then it is skipped and
    counted, as the notebook skips images it has no features for). Prediction rows of known videos
    without a labelled ground-truth row are kept as smoothing context with missing labels.
    """
    known = set(gt.videos.tolist())
    for i, v in enumerate(pred.videos):
        if v not in known:
            raise InputError(f"{pred.path}:{pred.lines[i]}: video {v!r} is not in the ground truth {gt.path}")
    pos = {name: i for i, name in enumerate(pred.images)}
    labelled = gt.any_valid
    n = len(pred.images)
    va = np.full((n, 2), -5.0, np.float32)
    ex = np.full(n, -1, np.int32)
    au = np.full((n, 12), -1, np.int32)
    missing = 0
    for j in np.nonzero(labelled)[0]:
        i = pos.get(gt.images[j])
        if i is None:
            if not allow_missing:
                raise InputError(f"{gt.path}:{gt.lines[j]}: no prediction for labelled image {gt.images[j]!r} "
                                 f"in {pred.path}")
            missing += 1
            continue
        va[i], ex[i], au[i] = gt.va[j], gt.expr[j], gt.aus[j]
    return Aligned(videos=pred.videos, frames=pred.frames, pred_index=np.arange(n), va_true=va, expr_true=ex,
                   au_true=au, n_missing=missing)
