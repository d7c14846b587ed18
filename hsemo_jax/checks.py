"""Host-side input checks shared by the metrics, post-processing and file readers.

Every public entry point validates its inputs here, in numpy, before anything is traced, so a bad
value is reported as `hsemo_jax.errors.InputError` naming where it came from (a file and line when
the array was read from a file, otherwise the argument name and row) instead of surfacing as a NaN
deep inside a jitted function.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from hsemo_jax.errors import InputError
from hsemo_jax.labels import MISSING_AU


def where(name: str, rows: Sequence[int] | None, i: int) -> str:
    """Describe row `i` of array `name`; `rows` maps rows to 1-based file lines when known."""
    if rows is not None:
        return f"{name} line {int(rows[i])}"
    return f"{name} row {i}"


def as_float(x, name: str, *, ndim: int | tuple[int, ...], lines: Sequence[int] | None = None) -> np.ndarray:
    """`x` as float32 with the given rank(s); NaN/inf rejected with the offending row and value."""
    arr = np.asarray(x)
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in ndims:
        raise InputError(f"{name}: expected a {' or '.join(f'{d}-D' for d in ndims)} array, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: expected numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise InputError(f"{where(name, lines, int(idx[0]))}: non-finite value {float(arr[tuple(idx)])}")
    return arr


def as_labels(x, name: str, *, low: int, high: int, lines: Sequence[int] | None = None,
              ndim: int | tuple[int, ...] = 1) -> np.ndarray:
    """`x` as int32 labels in [low, high]; anything else (fractions, out of range) is an error."""
    arr = np.asarray(x)
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in ndims:
        raise InputError(f"{name}: expected a {' or '.join(f'{d}-D' for d in ndims)} array, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            idx = np.argwhere(bad)[0]
            raise InputError(f"{where(name, lines, int(idx[0]))}: label {float(arr[tuple(idx)])} is not an integer")
    elif arr.dtype.kind not in "biu":
        raise InputError(f"{name}: expected integer labels, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    bad = (arr < low) | (arr > high)
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise InputError(
            f"{where(name, lines, int(idx[0]))}: label {int(arr[tuple(idx)])} out of range [{low}, {high}]"
        )
    return arr.astype(np.int32)


def same_length(**arrays) -> int:
    """All arrays have the same number of rows (> 0); returns it."""
    lengths = {k: len(v) for k, v in arrays.items() if v is not None}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise InputError(f"length mismatch: {desc} rows")
    n = next(iter(lengths.values()))
    if n == 0:
        raise InputError(f"{', '.join(lengths)}: no rows (empty input)")
    return n


def as_mask(mask, name: str, n: int) -> np.ndarray:
    """Optional boolean row mask of length n (None -> all True)."""
    if mask is None:
        return np.ones(n, dtype=bool)
    m = np.asarray(mask)
    if m.shape != (n,):
        raise InputError(f"{name}: expected shape ({n},), got {m.shape}")
    return m.astype(bool)


def au_inputs(y_true, probs, mask=None, name_true: str = "y_true", name_probs: str = "probs"):
    """AU labels and scores of the same (N, A) shape -> (labels int32, scores float32, row mask).

    Labels are in {0, 1} or MISSING_AU. Without `mask`, the rows whose labels are all given are used
    (spec §3.2); a given mask must not select a row with a missing label. At least one row is used.
    """
    t = as_labels(y_true, name_true, low=MISSING_AU, high=1, ndim=2)
    p = as_float(probs, name_probs, ndim=2)
    n = same_length(**{name_true: t, name_probs: p})
    if t.shape != p.shape:
        raise InputError(f"shape mismatch: {name_true} {t.shape} vs {name_probs} {p.shape}")
    if mask is None:
        m = t.min(axis=1) >= 0
    else:
        m = as_mask(mask, "mask", n)
        bad = m[:, None] & (t < 0)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise InputError(f"{name_true} row {i}: label {t[i, j]} in a masked-in row (AU column {j})")
    if not m.any():
        raise InputError(f"{name_true}: no frame with all AU labels >= 0")
    return t, p, m
