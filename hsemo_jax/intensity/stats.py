"""Per-video statistics of per-frame features: [mean ‖ std ‖ min ‖ max] (spec seed_extras §1.3 step 2).

Input is flat: N frame rows (video id, integer frame number, a D-dim feature row: the backbone's
embedding or its 10 scores). Per video, the frames are put in frame-number order and every n-th
one is kept (positions 0, n, 2n, ...: the notebook's every 5th face crop); over the kept frames,
per dimension, the mean, the population std (numpy's default ddof=0), the min and the max are
concatenated into a 4·D vector.

The reduction runs in one jitted function, vmapped over videos: videos are laid out with
`hsemo_jax.postprocess.packing.pack` (one video per lane, padded to T slots, padding masked out).
Videos are processed in groups of similar length (sorted by frame count), each group padded to a
fixed number of lanes and a power-of-two T, so memory stays bounded and only a few shapes compile.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from hsemo_jax.errors import InputError
from hsemo_jax.postprocess import packing

STAT_NAMES = ("mean", "std", "min", "max")


def every_nth(video_ids, frames, every: int) -> np.ndarray:
    """Indices (into the N rows, ascending) of the kept rows: per video in frame order, positions
    0, every, 2·every, ... Duplicate (video, frame) pairs are an error."""
    if int(every) != every or every < 1:
        raise InputError(f"every must be a positive integer, got {every!r}")
    vids = np.asarray(video_ids)
    f = np.asarray(frames, np.int64)
    if vids.shape != f.shape or vids.ndim != 1:
        raise InputError(f"length mismatch: {vids.shape} video ids, {f.shape} frames")
    if len(f) == 0:
        return np.zeros(0, np.int64)
    _, code = np.unique(vids, return_inverse=True)
    order = np.lexsort((f, code))
    c, fs = code[order], f[order]
    dup = np.nonzero((c[1:] == c[:-1]) & (fs[1:] == fs[:-1]))[0]
    if dup.size:
        r = int(order[dup[0] + 1])
        raise InputError(f"row {r}: duplicate frame {int(f[r])} of video {vids[r]!r}")
    start = np.r_[True, c[1:] != c[:-1]]
    seg_start = np.maximum.accumulate(np.where(start, np.arange(len(c)), 0))
    pos = np.arange(len(c)) - seg_start
    return np.sort(order[pos % int(every) == 0])


def _stats_one(x_td, mask_t):
    """[mean ‖ std ‖ min ‖ max] (4·D,) over the rows of x_td (T, D) where mask_t (T,) is true."""
    import jax.numpy as jnp

    m = mask_t[:, None]
    n = jnp.maximum(jnp.sum(mask_t.astype(x_td.dtype)), 1)
    mean = jnp.sum(jnp.where(m, x_td, 0), axis=0) / n
    var = jnp.sum(jnp.where(m, jnp.square(x_td - mean), 0), axis=0) / n
    lo = jnp.min(jnp.where(m, x_td, jnp.inf), axis=0)
    hi = jnp.max(jnp.where(m, x_td, -jnp.inf), axis=0)
    return jnp.concatenate([mean, jnp.sqrt(var), lo, hi])


_JITTED = None


def stats_kernel():
    """The jitted, vmapped reduction: (x_btd (B, T, D), mask_bt (B, T)) -> (B, 4·D) float32.
    Lanes without any true mask slot give mean/std 0, min +inf, max -inf."""
    global _JITTED
    if _JITTED is None:
        import jax
        import jax.numpy as jnp

        @jax.jit
        def kernel(x_btd, mask_bt):
            return jax.vmap(_stats_one)(x_btd.astype(jnp.float32), mask_bt)

        _JITTED = kernel
    return _JITTED


def _pow2(t: int, floor: int = 8) -> int:
    return max(floor, 1 << (int(t) - 1).bit_length())


def video_statistics(video_ids: Sequence, frames: Sequence[int], values_nd, *, every: int = 1,
                     lanes: int = 128, budget: int = 1 << 25) -> tuple[tuple, np.ndarray]:
    """(videos, stats (S, 4·D) float32): per-video [mean ‖ std ‖ min ‖ max] of every `every`-th frame.

    videos are in order of first appearance in `video_ids`. values_nd (N, D) numeric, finite.
    `lanes`: videos per device call (the fixed batch; the last group is padded), halved while
    lanes x T x D exceeds `budget` values (long videos of wide embeddings).
    """
    x = np.asarray(values_nd)
    if x.ndim != 2 or x.shape[0] != len(video_ids):
        raise InputError(f"length mismatch: {len(video_ids)} frame rows but values of shape {x.shape}")
    if x.dtype.kind not in "iuf":
        raise InputError(f"frame values must be numeric, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        r = int(np.argwhere(~np.isfinite(x))[0][0])
        raise InputError(f"row {r} (video {np.asarray(video_ids)[r]!r}): non-finite feature value")
    if lanes < 1:
        raise InputError(f"lanes must be >= 1, got {lanes}")
    vids_all = np.asarray(video_ids)
    keep = every_nth(vids_all, frames, every)
    if keep.size == 0:
        raise InputError("no frame rows (empty input)")
    vids, f, xk = vids_all[keep], np.asarray(frames, np.int64)[keep], x[keep].astype(np.float32)
    layout = packing.pack(vids, f, lanes=None, multiple=1)  # one lane per video, frame order
    videos, lengths = layout.videos, layout.lengths_s
    seg_n = layout.seg_bt[layout.lane_n, layout.slot_n]
    d = x.shape[1]
    out = np.empty((len(videos), 4 * d), np.float32)
    kernel = stats_kernel()
    by_len = np.argsort(lengths, kind="stable")
    rows_of = np.argsort(seg_n, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(seg_n, minlength=len(videos)))]
    g = 0
    while g < len(videos):
        b = lanes  # fewer lanes for long videos x wide features: at most `budget` floats per call
        while b > 1 and b * _pow2(int(lengths[by_len[min(g + b, len(videos)) - 1]])) * d > budget:
            b //= 2
        group = by_len[g: g + b]
        g += len(group)
        t = _pow2(int(lengths[group].max()))
        x_btd = np.zeros((b, t, d), np.float32)
        m_bt = np.zeros((b, t), bool)
        for lane, s in enumerate(group):
            rows = rows_of[starts[s]: starts[s + 1]]
            slots = layout.slot_n[rows]
            x_btd[lane, slots] = xk[rows]
            m_bt[lane, slots] = True
        res = np.asarray(kernel(x_btd, m_bt))
        out[group] = res[: len(group)]
    order = list(dict.fromkeys(vids_all.tolist()))  # first appearance in the input, all rows
    pos = {v: i for i, v in enumerate(videos)}
    return tuple(order), out[[pos[v] for v in order]]


def stat_columns(names: Sequence[str]) -> list[str]:
    """Column names of the 4·D vector: mean_<n>..., std_<n>..., min_<n>..., max_<n>..."""
    return [f"{s}_{n}" for s in STAT_NAMES for n in names]


__all__ = ["STAT_NAMES", "every_nth", "stats_kernel", "video_statistics", "stat_columns"]
