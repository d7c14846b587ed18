"""Per-video intensity labels (`train_split.csv`, `valid_split.csv`) and the submission CSV.

Label files (spec seed_extras §1.2): a header line, then one row per video::

    <video id>,<intensity 1>,...,<intensity K>

The video id is an unsigned integer; it is normalised to the organisers' 5-digit zero-padded form
(`1` and `00001` both become `00001`, `12660` stays `12660`), which is also the name of the
video's face-crop folder. The K intensities are finite floats in the order of the header.

Known target sets (spec §1.1; names in `hsemo_jax.labels`):

* `reaction7`  Hume-Reaction (ABAW-5 ERI): Adoration, Amusement, Anxiety, Disgust, Empathic-Pain,
  Fear, Surprise;
* `vidmimic6`  Hume-Vidmimic2 (ABAW-6 "ERI" / EMI): Admiration, Amusement, Determination,
  Empathic Pain, Excitement, Joy.

Header names are compared case-insensitively with spaces, '-' and '_' ignored ("Empathic Pain" ==
"Empathic-Pain"). Every reader error names the file and the 1-based line.

Submission (spec §1.2): header `Filename,<K names>`, one row `<video id>,<K floats>` per video,
written to a temporary file and renamed (never a partial file).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hsemo_jax.errors import InputError
from hsemo_jax.fileio import atomic_write
from hsemo_jax.labels import INTENSITY_TARGET_SETS
SUBMISSION_ID = "Filename"
_ID = re.compile(r"^\d+$")


def normalize_name(name: str) -> str:
    """Header-name key: lower case without spaces, '-' and '_'."""
    return re.sub(r"[\s\-_]+", "", name).lower()


def known_set(names: Sequence[str]) -> str | None:
    """'reaction7' / 'vidmimic6' when `names` is that set in that order, else None."""
    key = [normalize_name(n) for n in names]
    for set_name, ref in INTENSITY_TARGET_SETS.items():
        if key == [normalize_name(n) for n in ref]:
            return set_name
    return None


def resolve_targets(spec: str | None) -> tuple[str, ...] | None:
    """`--targets`: None/'auto' (from the header), a known set name, or comma-separated names."""
    if spec is None or spec == "auto":
        return None
    if spec in INTENSITY_TARGET_SETS:
        return INTENSITY_TARGET_SETS[spec]
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    if not names:
        raise InputError(f"--targets {spec!r}: expected 'auto', {', '.join(INTENSITY_TARGET_SETS)} "
                         "or comma-separated names")
    return names


def normalize_id(raw: str, where: str) -> str:
    """'1' / '00001' -> '00001'; anything but an unsigned integer -> InputError naming `where`."""
    s = raw.strip()
    if not _ID.match(s):
        raise InputError(f"{where}: video id {raw!r} is not an unsigned integer (expected e.g. 00001)")
    return f"{int(s):05d}"


@dataclass
class VideoLabels:
    """Labels of one split, file order. values (N, K) float32; lines: 1-based line of each row."""

    path: str
    names: tuple
    ids: list
    values: np.ndarray
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def line_of(self, video: str) -> int:
        return int(self.lines[self.ids.index(video)])


def _read_text(path: str) -> list[str]:
    try:
        with open(path, "r", encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        raise InputError(f"{path}: label file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a label CSV file") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 text file ({e})") from None
    if not text.strip():
        raise InputError(f"{path}: empty file (expected a header line `id,<K target names>`)")
    return text.splitlines()


def read_labels(path: str, targets: Sequence[str] | None = None) -> VideoLabels:
    """Read a per-video label CSV.

    targets: the expected K target names in order (an INTENSITY_TARGET_SETS value or any names); the
    header must list them after the id column. None: take the names from the header (K >= 1).
    Errors (InputError, `path:line: ...`): missing/empty file, header with the wrong number or
    names of targets, a row with the wrong number of fields, a bad or duplicate video id, a
    non-numeric or non-finite intensity, no data rows.
    """
    path = str(path)
    lines = _read_text(path)
    header = [h.strip() for h in lines[0].split(",")]
    names = tuple(header[1:])
    if targets is not None:
        targets = tuple(targets)
        if len(names) != len(targets):
            raise InputError(f"{path}:1: header has {len(names)} target columns ({', '.join(names) or 'none'}), "
                             f"expected {len(targets)}: id,{','.join(targets)}")
        bad = [(h, t) for h, t in zip(names, targets) if normalize_name(h) != normalize_name(t)]
        if bad:
            raise InputError(f"{path}:1: header column {bad[0][0]!r} where {bad[0][1]!r} was expected "
                             f"(expected header: id,{','.join(targets)})")
        names = targets
    if not names or any(not n for n in names):
        raise InputError(f"{path}:1: header {lines[0]!r} must be `id,<target 1>,...,<target K>` with K >= 1 names")
    k = len(names)
    ids, values, lns, seen = [], [], [], {}
    for ln, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        fields = [f.strip() for f in raw.split(",")]
        if len(fields) != k + 1:
            raise InputError(f"{path}:{ln}: expected {k + 1} comma-separated fields (video id + {k} intensities: "
                             f"{', '.join(names)}), got {len(fields)}: {raw!r}")
        vid = normalize_id(fields[0], f"{path}:{ln}")
        if vid in seen:
            raise InputError(f"{path}:{ln}: video {vid} already listed on line {seen[vid]}")
        seen[vid] = ln
        row = []
        for name, v in zip(names, fields[1:]):
            try:
                x = float(v)
            except ValueError:
                raise InputError(f"{path}:{ln}: {name} {v!r} is not a number") from None
            if not math.isfinite(x):
                raise InputError(f"{path}:{ln}: {name} {v!r} is not finite")
            row.append(x)
        ids.append(vid); values.append(row); lns.append(ln)
    if not ids:
        raise InputError(f"{path}: no data rows after the header")
    return VideoLabels(path=path, names=names, ids=ids, values=np.asarray(values, np.float32).reshape(-1, k),
                       lines=np.asarray(lns, np.int64))


def read_video_list(path: str) -> list[str]:
    """Video ids to predict: one per line, first comma-separated field; a first line that is not an
    id is taken as a header (so a label CSV or a submission works too). Duplicates are refused."""
    path = str(path)
    try:
        with open(path, "r", encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: video list not found") from None
    out, seen = [], {}
    for ln, raw in enumerate(lines, start=1):
        first = raw.split(",")[0].strip()
        if not first or (ln == 1 and not _ID.match(first)):
            continue
        vid = normalize_id(first, f"{path}:{ln}")
        if vid in seen:
            raise InputError(f"{path}:{ln}: video {vid} already listed on line {seen[vid]}")
        seen[vid] = ln
        out.append(vid)
    if not out:
        raise InputError(f"{path}: no video ids")
    return out


def write_submission(path: str, ids: Sequence[str], values, names: Sequence[str]) -> None:
    """`Filename,<names>` then `<id>,<K floats>` per video; atomic (temp file + rename)."""
    v = np.asarray(values)
    if v.ndim != 2 or v.shape != (len(ids), len(names)):
        raise InputError(f"submission: expected values of shape ({len(ids)}, {len(names)}), got {v.shape}")
    if not np.isfinite(v).all():
        i = int(np.argwhere(~np.isfinite(v))[0][0])
        raise InputError(f"submission: non-finite prediction for video {ids[i]}")
    rows = [",".join([SUBMISSION_ID, *names])]
    rows += [",".join([str(i), *(repr(float(np.float32(x))) for x in r)]) for i, r in zip(ids, v)]
    atomic_write(str(path), "\n".join(rows) + "\n")


def read_submission(path: str, names: Sequence[str] | None = None) -> VideoLabels:
    """A submission written by `write_submission` (same checks as `read_labels`)."""
    lab = read_labels(path, names)
    first = _read_text(str(path))[0].split(",")[0].strip()
    if first != SUBMISSION_ID:
        raise InputError(f"{path}:1: first header field {first!r}, expected {SUBMISSION_ID!r}")
    return lab
