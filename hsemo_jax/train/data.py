"""Array datasets for the trainer (`train-head`, `distill`) and a checkpointable batch iterator.
(`pretrain` reads TFDS builds through grain instead: `pretrain_data.py`.)

Datasets are dicts of row-aligned arrays (numpy, or memory-mapped .npy):

  feature dataset (train-head), spec §3.1-3.2 (or an `hsemo-jax extract-features` output directory:
  x = embedding ++ scores, expression -> expr (mapped to the Aff-Wild2 order by the class names
  recorded in features.json), aus -> au):
    x     float (N, D+10)   embedding ++ the backbone's 10 scores
    expr  int   (N,)        Aff-Wild2 EXPR label, -1 = missing           -> expr_mask
    va    float (N, 2)      valence, arousal, -5 = missing               -> va_mask
    au    int   (N, 12)     AU1..AU26 in {0,1}, -1 = missing (row-wise)  -> au_mask

A file is an `.npz` archive or a directory of `NAME.npy` files (memory-mapped). Explicit masks
(`expr_mask`, `va_mask`, `au_mask`, bool (N,)) override the sentinel codes. Labels of missing
rows are replaced by 0 so every array is safe to feed to the device.

`BatchIterator` yields global batches in a seeded order: the permutation of epoch e is a pure
function of (seed, e), so the iterator's whole state is {"epoch", "batch"} (JSON, saved with each
checkpoint), and restoring it resumes at exactly the next batch. With several processes each
one yields its contiguous slice of every global batch (rows [p·B/P, (p+1)·B/P)).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hsemo_jax.errors import InputError
from hsemo_jax.fileio import read_npz

NUM_EXPR = 8
NUM_AU = 12


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """An .npz file or a directory of .npy files -> {name: array} (directory arrays memory-mapped)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.npy"))
        if not files:
            raise InputError(f"{p}: no .npy files in this directory")
        return {f.stem: np.load(f, mmap_mode="r") for f in files}
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    return read_npz(p)


def _require(arrays, name, path, ndim, n=None, last=None):
    if name not in arrays:
        raise InputError(f"{path}: missing array {name!r} (have {', '.join(sorted(arrays)) or 'none'})")
    a = arrays[name]
    if a.ndim != ndim or (n is not None and a.shape[0] != n) or (last is not None and a.shape[-1] != last):
        want = f"{ndim}-d" + (f" with {n} rows" if n is not None else "") + (f", last axis {last}" if last else "")
        raise InputError(f"{path}: array {name!r} has shape {a.shape}, expected {want}")
    return a


def _mask(arrays, name, path, n, default):
    key = f"{name}_mask"
    if key in arrays:
        m = _require(arrays, key, path, 1, n)
        return np.asarray(m).astype(bool)
    return default


def class_labels(arrays, path, y, num_classes: int, present, *, missing: int):
    """`expr` labels (n,) -> (labels int32, mask): the mask is `expr_mask` if given, else
    `present`; a masked-in label outside [0, num_classes) is an InputError naming the first."""
    m = _mask(arrays, "expr", path, len(y), present)
    bad = m & ((y < 0) | (y >= num_classes))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{path}: expr[{i}] = {y[i]} is not a class in [0, {num_classes}) or {missing} (missing)")
    return np.where(m, y, 0).astype(np.int32), m


def _affwild_expression(y, meta: dict, meta_path: Path) -> np.ndarray:
    """A feature dataset's `expression` column in the Aff-Wild2 EXPR order: mapped by the source's
    class names recorded in features.json (AffectNet codes: Contempt -> Other); a column without
    names is taken as the Aff-Wild2 order (ABAW builds) unless the source is AffectNet."""
    from hsemo_jax.labels import AFFWILD_EXPR_8, affwild_expr_index

    names = meta.get("class_names", {}).get("expression")
    if names is None:
        source = meta.get("source", {})
        if "label" in meta.get("fields", ()) or Path(str(source.get("path", ""))).parent.name == "affectnet":
            raise InputError(f"{meta_path}: features of an AffectNet build made before extract-features recorded "
                             "its class names (AffectNet codes, not the Aff-Wild2 order); re-run "
                             "`hsemo-jax extract-features` with --overwrite")
        return y
    to_affwild = affwild_expr_index(names)
    if to_affwild is None:
        raise InputError(f"{meta_path}: the expression classes {names} do not map to the Aff-Wild2 classes "
                         f"({', '.join(AFFWILD_EXPR_8)}; Contempt counts as Other)")
    y = np.asarray(y)
    known = (y >= 0) & (y < len(names))
    return np.where(known, to_affwild[np.where(known, y, 0)], y)


def _extracted_features(path: Path) -> dict[str, np.ndarray]:
    """The output of `hsemo-jax extract-features` (features.json + chunks) as x / expr / va / au
    arrays and, where the source has them, their row masks (a row is labelled when its whole
    per-element mask is)."""
    from data_pipelines.features import META, FeatureDataset

    ds = FeatureDataset(path)
    cols = ds.arrays()
    if "expression" in cols:
        cols["expression"] = _affwild_expression(cols["expression"], ds.meta, path / META)
    out = {"x": np.concatenate([cols["embedding"], cols["scores"]], axis=1).astype(np.float32)}
    # the source's masks travel as the rows' masks: AffectNet's folder layout has no VA (va = 0,
    # va_mask False), which the missing code alone (-5) would take for labels of 0
    for src, mask, dst in (("expression", "expression_mask", "expr"), ("va", "va_mask", "va"),
                           ("aus", "au_mask", "au")):
        if src in cols:
            out[dst] = cols[src]
            if mask in cols:
                m = np.asarray(cols[mask]).astype(bool)
                out[f"{dst}_mask"] = m.reshape(len(m), -1).all(axis=1)
    return out


def load_features(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A feature dataset (module docstring, or an `hsemo-jax extract-features` directory) ->
    {"x", "expr", "expr_mask", "va", "va_mask", "au", "au_mask"}; a task with no label array
    gets an all-False mask."""
    arrays = _extracted_features(Path(path)) if (Path(path) / "features.json").is_file() else load_arrays(path)
    x = np.asarray(_require(arrays, "x", path, 2), np.float32)
    n = x.shape[0]
    if x.shape[1] < 10:
        raise InputError(f"{path}: 'x' has {x.shape[1]} columns; it must end with the backbone's 10 scores")
    if not np.isfinite(x).all():
        i = int(np.argmax(~np.isfinite(x).all(axis=1)))
        raise InputError(f"{path}: x[{i}] has a non-finite value (NaN or inf); features must be finite")
    out = {"x": x}
    if "expr" in arrays:
        raw = np.asarray(_require(arrays, "expr", path, 1, n))
        if raw.dtype.kind == "f" and not (np.isfinite(raw) & (raw == np.round(raw))).all():  # astype would truncate
            i = int(np.argmax(~(np.isfinite(raw) & (raw == np.round(raw)))))
            raise InputError(f"{path}: expr[{i}] = {raw[i]} is not a class index (an integer; -1 = missing)")
        y = raw.astype(np.int64)
        out["expr"], out["expr_mask"] = class_labels(arrays, path, y, NUM_EXPR, y > -1, missing=-1)
    else:
        out["expr"], out["expr_mask"] = np.zeros(n, np.int32), np.zeros(n, bool)
    if "va" in arrays:
        va = np.asarray(_require(arrays, "va", path, 2, n, 2), np.float32)
        m = _mask(arrays, "va", path, n, (va[:, 0] > -5) & (va[:, 1] > -5))
        bad = m & ~((va >= -1) & (va <= 1)).all(axis=1)  # NaN fails too
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{path}: va[{i}] = {va[i].tolist()} is outside [-1, 1] in a labelled row "
                             "(-5 = missing)")
        out["va"], out["va_mask"] = np.where(m[:, None], va, 0).astype(np.float32), m
    else:
        out["va"], out["va_mask"] = np.zeros((n, 2), np.float32), np.zeros(n, bool)
    if "au" in arrays:
        au = np.asarray(_require(arrays, "au", path, 2, n, NUM_AU))
        m = _mask(arrays, "au", path, n, au.min(axis=1) >= 0)
        if (m[:, None] & ((au != 0) & (au != 1))).any():
            i = int(np.argmax((m[:, None] & ((au != 0) & (au != 1))).any(1)))
            raise InputError(f"{path}: au[{i}] = {au[i].tolist()} has a value other than 0/1 in a labelled row")
        out["au"], out["au_mask"] = np.where(m[:, None], au, 0).astype(np.float32), m
    else:
        out["au"], out["au_mask"] = np.zeros((n, NUM_AU), np.float32), np.zeros(n, bool)
    if not (out["expr_mask"] | out["va_mask"] | out["au_mask"]).any():
        raise InputError(f"{path}: no row has an EXPR, VA or AU label")
    return out


def select_rows(arrays: dict[str, np.ndarray], rows) -> dict[str, np.ndarray]:
    """The dataset restricted to `rows` (bool mask or indices), e.g. the rows with an EXPR label."""
    idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
    return {k: np.asarray(v[idx]) for k, v in arrays.items()}


class BatchIterator:
    """Endless shuffled global batches (drop remainder) with a resumable position.

    arrays: row-aligned dataset; global_batch: rows per step over all processes. Yields this
    process's rows of each global batch as {name: array (global_batch // process_count, ...)}.
    """

    def __init__(self, arrays: dict[str, np.ndarray], global_batch: int, *, seed: int = 0,
                 shuffle: bool = True, process_index: int = 0, process_count: int = 1):
        self.arrays = arrays
        self.n = len(next(iter(arrays.values())))
        if global_batch <= 0 or global_batch % process_count:
            raise InputError(f"batch size {global_batch} must be a positive multiple of the process count "
                             f"{process_count}")
        if self.n < global_batch:
            raise InputError(f"the dataset has {self.n} rows, fewer than one batch of {global_batch}")
        self.global_batch = global_batch
        self.local_batch = global_batch // process_count
        self.offset = process_index * self.local_batch
        self.seed, self.shuffle = seed, shuffle
        self.batches_per_epoch = self.n // global_batch
        self.epoch, self.batch = 0, 0
        self._order_epoch, self._order = None, None

    def state(self) -> dict:
        return {"epoch": int(self.epoch), "batch": int(self.batch), "seed": int(self.seed), "rows": int(self.n)}

    def restore(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed or state.get("rows", self.n) != self.n:
            raise InputError(f"the checkpointed data position (seed {state.get('seed')}, {state.get('rows')} rows) "
                             f"does not match this dataset (seed {self.seed}, {self.n} rows)")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            self._order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
                           if self.shuffle else np.arange(self.n))
            self._order_epoch = self.epoch
        return self._order

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        order = self._epoch_order()
        start = self.batch * self.global_batch + self.offset
        idx = order[start:start + self.local_batch]
        self.batch += 1
        if self.batch >= self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        sorted_idx = np.sort(idx)  # monotone reads from memory-mapped files
        inverse = np.argsort(np.argsort(idx))
        return {k: np.asarray(v[sorted_idx])[inverse] for k, v in self.arrays.items()}


def eval_batches(arrays: dict[str, np.ndarray], global_batch: int, *, process_index: int = 0,
                 process_count: int = 1):
    """All rows once, in order, as fixed-shape global batches; the last one padded (with row 0)
    and flagged by "valid" bool (B_local,). Yields this process's slice of each global batch."""
    n = len(next(iter(arrays.values())))
    local = global_batch // process_count
    for start in range(0, n, global_batch):
        idx = np.arange(start, start + global_batch)[process_index * local:(process_index + 1) * local]
        valid = idx < n
        idx = np.where(valid, idx, 0)
        batch = {k: np.asarray(v[idx]) for k, v in arrays.items()}
        batch["valid"] = valid
        yield batch
