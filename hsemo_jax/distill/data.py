"""Data for `hsemo-jax distill`: three image streams, shared-annotation matching, a multi-stream iterator.

Stream file (an .npz archive or a directory of .npy files, read by `train.data.load_arrays`):
    images uint8 (N, S, S, 3) RGB
    expr   int   (N,)    class in [0, num_expr), -2 = missing          (required in the EXPR stream)
    va     float (N, 2)  valence, arousal in [-1, 1], -2 = missing     (required in the VA stream)
    video  (N,) str or int, frame (N,) int   optional: where the row comes from, for the matching
Explicit `expr_mask` / `va_mask` (bool (N,)) override the -2 codes, as in `train/data.py`.

Shared annotations (spec §2.3, "each frame gets every label it has anywhere"): the EXPR and VA
annotation sets share videos; `share_annotations` left-joins on (video, frame) so that each EXPR
row gets the VA label of the same frame (and each VA row the EXPR label), keeping a row's own
label where it already has one; rows with no match keep -2. `expr_va_pairs` is the inner join that
builds the EXPR_VA stream from the frames in both sets (spec §2.2, every 3rd frame).
`disable_shared_annotations` makes every sub label missing. Both are pure numpy functions of the
label tables.

`StreamIterator` draws `batch_size` rows from each stream per step; an epoch is as long as the
shortest stream (spec §2.3), and each stream restarts its own seeded shuffle every epoch (the
original builds fresh loaders per epoch), so the whole position is (epoch, batch).
"""
from __future__ import annotations

import os

import numpy as np

from hsemo_jax.errors import InputError
from hsemo_jax.train.data import BatchIterator, _mask, _require, class_labels, load_arrays

MISSING = -2
STREAM_NAMES = ("expr", "va", "expr_va")


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------
def load_stream(path: str | os.PathLike, num_expr: int, *, require: tuple[str, ...] = ()) -> dict:
    """A stream file -> {"images", "expr", "expr_mask", "va", "va_mask"[, "video", "frame"]}.

    Labels of missing rows become 0 (masks False). A value that is neither a label nor -2 is an
    error naming the file and row."""
    arrays = load_arrays(path)
    images = _require(arrays, "images", path, 4, last=3)
    if images.dtype != np.uint8:
        raise InputError(f"{path}: 'images' must be uint8 RGB, got {images.dtype}")
    n = images.shape[0]
    for name in require:
        if name not in arrays:
            raise InputError(f"{path}: missing array {name!r}: this stream needs {name} labels "
                             f"(have {', '.join(sorted(arrays))})")
    out = {"images": images}
    if "expr" in arrays:
        y = np.asarray(_require(arrays, "expr", path, 1, n))
        if not np.issubdtype(y.dtype, np.integer):
            if not np.all(np.equal(np.mod(y, 1), 0)):
                raise InputError(f"{path}: 'expr' must hold class indices, got {y.dtype} with fractions")
            y = y.astype(np.int64)
        out["expr"], out["expr_mask"] = class_labels(arrays, path, y, num_expr, y != MISSING, missing=MISSING)
    else:
        out["expr"], out["expr_mask"] = np.zeros(n, np.int32), np.zeros(n, bool)
    if "va" in arrays:
        va = np.asarray(_require(arrays, "va", path, 2, n, 2), np.float32)
        m = _mask(arrays, "va", path, n, ~(va == MISSING).all(axis=1))
        bad = m & ~(np.abs(va) <= 1).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{path}: va[{i}] = {va[i].tolist()}: expected valence and arousal in [-1, 1], or "
                             f"both {MISSING} (missing)")
        out["va"], out["va_mask"] = np.where(m[:, None], va, 0).astype(np.float32), m
    else:
        out["va"], out["va_mask"] = np.zeros((n, 2), np.float32), np.zeros(n, bool)
    if ("video" in arrays) != ("frame" in arrays):
        raise InputError(f"{path}: 'video' and 'frame' go together (one of them is missing)")
    if "video" in arrays:
        out["video"] = np.asarray(_require(arrays, "video", path, 1, n))
        out["frame"] = np.asarray(_require(arrays, "frame", path, 1, n)).astype(np.int64)
    return out


# ----------------------------------------------------------------------------------------------
# shared annotations (pure numpy over label tables)
# ----------------------------------------------------------------------------------------------
def _codes(a: dict, b: dict, name_a="EXPR", name_b="VA"):
    """Integer codes of the (video, frame) keys of tables a and b (equal keys = equal codes)."""
    va_, vb = np.asarray(a["video"]).astype(str), np.asarray(b["video"]).astype(str)
    _, video = np.unique(np.concatenate([va_, vb]), return_inverse=True)
    frame = np.concatenate([np.asarray(a["frame"]), np.asarray(b["frame"])]).astype(np.int64)
    pairs = np.stack([video.astype(np.int64), frame], axis=1)
    _, code = np.unique(pairs, axis=0, return_inverse=True)
    code = code.reshape(-1)
    ca, cb = code[:len(va_)], code[len(va_):]
    for c, tab, name in ((ca, a, name_a), (cb, b, name_b)):
        uniq, first, counts = np.unique(c, return_index=True, return_counts=True)
        if (counts > 1).any():
            dup = np.flatnonzero(c == uniq[np.argmax(counts > 1)])
            raise InputError(f"{name} table: rows {dup[0]} and {dup[1]} are the same frame "
                             f"(video {tab['video'][dup[0]]!r}, frame {tab['frame'][dup[0]]})")
    return ca, cb


def match_frames(a: dict, b: dict) -> np.ndarray:
    """For each row of table a, the row of table b with the same (video, frame), or -1."""
    ca, cb = _codes(a, b)
    lookup = np.full(max(int(ca.max(initial=-1)), int(cb.max(initial=-1))) + 1, -1, np.int64)
    lookup[cb] = np.arange(len(cb))
    return lookup[ca] if len(ca) else np.zeros(0, np.int64)


def share_annotations(expr_table: dict, va_table: dict, *, disable: bool = False) -> tuple[dict, dict]:
    """Left joins on (video, frame) in both directions (spec §2.3).

    Tables: {"video" (N,), "frame" (N,), "expr" (N,) int, "va" (N, 2) float} with -2 = missing.
    Returns (expr_table, va_table) copies where every row also has the other set's label of the
    same frame (a row's own label wins); disable=True: every sub label is -2 instead."""
    e = {k: np.array(v) for k, v in expr_table.items()}
    v = {k: np.array(x) for k, x in va_table.items()}
    if disable:
        e["va"] = np.full((len(e["expr"]), 2), MISSING, np.float32)
        v["expr"] = np.full(len(v["va"]), MISSING, np.int64)
        return e, v
    e.setdefault("va", np.full((len(e["expr"]), 2), MISSING, np.float32))
    v.setdefault("expr", np.full(len(v["va"]), MISSING, np.int64))
    e2v = match_frames(e, v)
    v2e = match_frames(v, e)
    fill = (e2v >= 0) & (e["va"] == MISSING).all(axis=1)
    e["va"] = e["va"].astype(np.float32)
    e["va"][fill] = v["va"][e2v[fill]]
    fill = (v2e >= 0) & (v["expr"] == MISSING)
    v["expr"] = v["expr"].astype(np.int64)
    v["expr"][fill] = e["expr"][v2e[fill]]
    return e, v


def expr_va_pairs(expr_table: dict, va_table: dict, every: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Inner join on (video, frame) of the rows with an EXPR label and the rows with a VA label:
    (expr rows, va rows) index arrays, ordered by (video, frame), every `every`-th pair kept."""
    e_rows = np.flatnonzero(np.asarray(expr_table["expr"]) != MISSING)
    v_rows = np.flatnonzero(~(np.asarray(va_table["va"]) == MISSING).all(axis=1))
    e = {"video": np.asarray(expr_table["video"])[e_rows], "frame": np.asarray(expr_table["frame"])[e_rows]}
    v = {"video": np.asarray(va_table["video"])[v_rows], "frame": np.asarray(va_table["frame"])[v_rows]}
    hit = match_frames(e, v)
    ie = np.flatnonzero(hit >= 0)
    order = np.lexsort((e["frame"][ie], e["video"][ie].astype(str)))
    ie = ie[order][::every]
    return e_rows[ie], v_rows[hit[ie]]


# ----------------------------------------------------------------------------------------------
# streams
# ----------------------------------------------------------------------------------------------
def _table(stream: dict) -> dict:
    return {"video": stream["video"], "frame": stream["frame"],
            "expr": np.where(stream["expr_mask"], stream["expr"], MISSING),
            "va": np.where(stream["va_mask"][:, None], stream["va"], MISSING).astype(np.float32)}


def _labels_from_table(stream: dict, table: dict) -> dict:
    out = dict(stream)
    out["expr_mask"] = table["expr"] != MISSING
    out["expr"] = np.where(out["expr_mask"], table["expr"], 0).astype(np.int32)
    out["va_mask"] = ~(table["va"] == MISSING).all(axis=1)
    out["va"] = np.where(out["va_mask"][:, None], table["va"], 0).astype(np.float32)
    return out


def assemble_streams(expr: dict, va: dict, expr_va: dict | str | None, *, disable_shared: bool = False,
                     shared_every: int = 3) -> dict[str, dict]:
    """The training streams {"expr", "va"[, "expr_va"]} with device arrays only.

    Sub labels: matched on (video, frame) when both streams carry them (else as in the files);
    disable_shared: all sub labels missing. expr_va: a stream dict, None, or "shared" (inner join
    of the EXPR and VA streams, images from the EXPR stream)."""
    has_keys = "video" in expr and "video" in va
    e_tab, v_tab = (_table(expr), _table(va)) if has_keys else (None, None)
    if disable_shared:
        expr = {**expr, "va": np.zeros_like(expr["va"]), "va_mask": np.zeros_like(expr["va_mask"])}
        va = {**va, "expr": np.zeros_like(va["expr"]), "expr_mask": np.zeros_like(va["expr_mask"])}
    elif has_keys:
        e2, v2 = share_annotations(e_tab, v_tab)
        expr, va = _labels_from_table(expr, e2), _labels_from_table(va, v2)
    streams = {"expr": expr, "va": va}
    if isinstance(expr_va, str) and expr_va == "shared":
        if not has_keys:
            raise InputError("distill.expr_va: 'shared' needs 'video' and 'frame' arrays in the EXPR and VA streams")
        ie, iv = expr_va_pairs(e_tab, v_tab, shared_every)
        if len(ie) == 0:
            raise InputError("distill.expr_va: 'shared': no frame is in both the EXPR and the VA stream")
        streams["expr_va"] = {"images": np.asarray(expr["images"][np.sort(ie)])[np.argsort(np.argsort(ie))],
                              "expr": e_tab["expr"][ie].astype(np.int32), "expr_mask": np.ones(len(ie), bool),
                              "va": v_tab["va"][iv].astype(np.float32), "va_mask": np.ones(len(iv), bool)}
    elif isinstance(expr_va, dict):
        streams["expr_va"] = expr_va
    keep = ("images", "expr", "expr_mask", "va", "va_mask")
    return {s: {k: d[k] for k in keep} for s, d in streams.items()}


def synthetic_frames(videos, frames_per_video: int, size: int, num_expr: int, *, noise: float = 40.0,
                     seed: int = 0, task_seed: int = 0) -> dict:
    """Learnable synthetic frames keyed by (video, frame): the class picks a fixed random colour
    pattern (drawn from `task_seed`), VA is a fixed function of the class plus jitter; frames are
    drawn from `seed`, and the same (video, frame) always gives the same image and labels (so the
    matching between streams is exact)."""
    proto_rng = np.random.default_rng([task_seed, 7])
    protos = proto_rng.standard_normal((num_expr, size, size, 3))
    va_of = proto_rng.uniform(-0.8, 0.8, (num_expr, 2))
    rows = {"images": [], "expr": [], "va": [], "video": [], "frame": []}
    for vid in videos:
        for f in range(frames_per_video):
            r = np.random.default_rng([seed, int(vid), f])
            c = int(r.integers(num_expr))
            img = 128 + 50 * protos[c] + noise * r.standard_normal((size, size, 3))
            rows["images"].append(np.clip(img, 0, 255).astype(np.uint8))
            rows["expr"].append(c)
            rows["va"].append(np.clip(va_of[c] + 0.1 * r.standard_normal(2), -1, 1))
            rows["video"].append(f"video{int(vid):03d}")
            rows["frame"].append(f)
    return {"images": np.stack(rows["images"]), "expr": np.asarray(rows["expr"], np.int32),
            "va": np.asarray(rows["va"], np.float32), "video": np.asarray(rows["video"]),
            "frame": np.asarray(rows["frame"], np.int64)}


def synthetic_stream(kind: str, rows: int, size: int, num_expr: int, seed: int = 0) -> dict:
    """A 'synthetic' stream in `load_stream`'s format: EXPR videos 0..V-1, VA videos V/2..3V/2-1
    (half of them shared, so the matching fills sub labels), EXPR_VA / val on videos of their own."""
    per_video = 16
    n_videos = max(1, -(-rows // per_video))
    first = {"expr": 0, "va": n_videos // 2, "expr_va": 10_000, "val": 20_000}[kind]
    d = synthetic_frames(range(first, first + n_videos), per_video, size, num_expr, seed=seed)
    d = {k: v[:rows] for k, v in d.items()}
    n = len(d["expr"])
    out = {"images": d["images"], "video": d["video"], "frame": d["frame"],
           "expr": d["expr"], "expr_mask": np.ones(n, bool), "va": d["va"], "va_mask": np.ones(n, bool)}
    if kind == "expr":  # labels of the other set come only from the matching
        out["va"], out["va_mask"] = np.zeros_like(d["va"]), np.zeros(n, bool)
    if kind == "va":
        out["expr"], out["expr_mask"] = np.zeros_like(d["expr"]), np.zeros(n, bool)
    return out


class StreamIterator:
    """`batch_size` rows of every stream per step, as one flat batch {"<stream>.<name>": array}.

    Same interface as `data.BatchIterator` (`global_batch`, `epoch`, `state()`, `restore()`), so
    the trainer's `fit` drives it; `global_batch` counts the rows of all streams (images per step)."""

    def __init__(self, streams: dict[str, dict], batch_size: int, *, seed: int = 0, process_index: int = 0,
                 process_count: int = 1):
        self.names = tuple(s for s in STREAM_NAMES if s in streams)
        self.iters = {}
        for i, name in enumerate(self.names):
            try:
                self.iters[name] = BatchIterator(streams[name], batch_size, seed=seed * len(STREAM_NAMES) + i,
                                                 process_index=process_index, process_count=process_count)
            except InputError as e:
                raise InputError(f"{name} stream: {e}") from None
        self.seed = seed
        self.batch_size = batch_size
        self.global_batch = batch_size * len(self.names)
        self.batches_per_epoch = min(it.batches_per_epoch for it in self.iters.values())
        self.epoch, self.batch = 0, 0

    def state(self) -> dict:
        return {"epoch": int(self.epoch), "batch": int(self.batch), "seed": int(self.seed),
                "rows": {k: int(it.n) for k, it in self.iters.items()}}

    def restore(self, state: dict) -> None:
        rows = {k: int(it.n) for k, it in self.iters.items()}
        if state.get("seed") != self.seed or state.get("rows") != rows:
            raise InputError(f"the checkpointed data position (seed {state.get('seed')}, rows {state.get('rows')}) "
                             f"does not match these streams (seed {self.seed}, rows {rows})")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        out = {}
        for name, it in self.iters.items():
            it.epoch, it.batch = self.epoch, self.batch  # every stream restarts its shuffle each epoch
            out.update({f"{name}.{k}": v for k, v in next(it).items()})
        self.batch += 1
        if self.batch >= self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        return out
