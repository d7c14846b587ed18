"""Per-AU decision thresholds that maximise F1 on a validation set (spec §4.1, mtl7#c30).

The frames are sharded over all devices (a 1-D `Mesh` named "frames", padded with masked-out rows
to a multiple of the device count). Each device scans the threshold grid with `jax.lax.scan` and
counts TP / predicted positives / true positives on its shard; the int32 counts are summed across
devices with `psum`. Counts are exact integers, so the answer is the same on 1 or 8 devices.
The choice per AU is made on the host in float64, as the notebook does with sklearn: the first
(lowest) threshold with the maximum F1; a NaN or negative maximum gives threshold 0.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hsemo_jax import checks
from hsemo_jax.errors import InputError
from hsemo_jax.metrics import f1_from_counts

#: The notebook's grid, np.arange(0.1, 1, 0.1): 0.1, 0.2, 0.30000000000000004, ..., 0.9.
DEFAULT_GRID = np.arange(0.1, 1, 0.1)


@lru_cache(maxsize=None)
def _counts_fn(devices: tuple):
    mesh = Mesh(np.array(devices), ("frames",))

    def local(probs_na, labels_na, mask_n, grid_g):
        # AU-major so that every count is a reduction along the contiguous frame axis
        probs_an = probs_na.T
        valid_an = jnp.broadcast_to(mask_n[None, :], probs_an.shape)
        pos_an = (labels_na.T > 0) & valid_an

        def step(carry, t):
            pred_an = (probs_an >= t) & valid_an
            return carry, ((pred_an & pos_an).sum(1, dtype=jnp.int32), pred_an.sum(1, dtype=jnp.int32))

        _, (tp_ga, npred_ga) = jax.lax.scan(step, None, grid_g)
        ntrue_a = pos_an.sum(1, dtype=jnp.int32)
        return (jax.lax.psum(tp_ga, "frames"), jax.lax.psum(npred_ga, "frames"), jax.lax.psum(ntrue_a, "frames"))

    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("frames"), P("frames"), P("frames"), P()),
                               out_specs=(P(), P(), P())))
    return mesh, fn


def threshold_counts(probs_na, labels_na, mask_n, grid_g, *, devices: Sequence | None = None):
    """Exact counts for every (threshold, AU): tp (G, A), n_pred (G, A), n_true (A,), as numpy int.

    probs_na float32 (N, A); labels_na int (N, A) (> 0 = positive); mask_n bool (N,); grid_g (G,).
    Prediction is probs >= t in float32. Frames are sharded over `devices` (default: all).
    """
    devs = tuple(jax.devices() if devices is None else devices)
    mesh, fn = _counts_fn(devs)
    n, d = probs_na.shape[0], len(devs)
    pad = (-n) % d
    if pad:
        probs_na = np.concatenate([probs_na, np.zeros((pad,) + probs_na.shape[1:], probs_na.dtype)])
        labels_na = np.concatenate([labels_na, np.zeros((pad,) + labels_na.shape[1:], labels_na.dtype)])
        mask_n = np.concatenate([mask_n, np.zeros(pad, bool)])
    rows = NamedSharding(mesh, P("frames"))
    args = [jax.device_put(np.asarray(a), rows) for a in (probs_na, labels_na, mask_n)]
    grid = jax.device_put(np.asarray(grid_g, np.float32), NamedSharding(mesh, P()))
    tp, npred, ntrue = fn(*args, grid)
    return np.asarray(tp), np.asarray(npred), np.asarray(ntrue)


def pick_thresholds(f1_ga: np.ndarray, grid_g: np.ndarray):
    """Notebook rule per AU: first argmax of F1 over the grid; NaN or negative max -> (0, 0)."""
    best = f1_ga.max(axis=0)
    idx = np.argmax(f1_ga, axis=0)
    bad = np.isnan(best) | (best < 0)
    thr = np.where(bad, 0.0, np.asarray(grid_g, np.float64)[idx])
    return thr, np.where(bad, 0.0, best)


def search_au_thresholds(probs, labels, grid=None, *, mask=None, devices: Sequence | None = None):
    """Best-F1 threshold per AU.

    probs: (N, A) probabilities (A = 12 for ABAW); labels: int (N, A) in {0, 1}, -1 = missing;
    grid: thresholds to try (default 0.1 .. 0.9, the notebook's np.arange(0.1, 1, 0.1); any 1-D
    grid, e.g. np.linspace(0.01, 0.99, 99)); mask: bool (N,) rows to use (default: rows whose labels
    are all >= 0); devices: devices to shard frames over (default: all of `jax.devices()`).

    Returns (thresholds (A,) float64, taken from `grid`; f1 (A,) float64 at those thresholds).
    """
    t, p, m = checks.au_inputs(labels, probs, mask, name_true="labels", name_probs="probs")
    g = np.asarray(DEFAULT_GRID if grid is None else grid, dtype=np.float64)
    if g.ndim != 1 or g.size == 0 or not np.isfinite(g).all():
        raise InputError(f"grid: expected a non-empty 1-D array of finite thresholds, got {g!r}")
    tp, npred, ntrue = threshold_counts(p, np.maximum(t, 0).astype(np.int32), m, g, devices=devices)
    f1 = f1_from_counts(tp, npred, ntrue[None, :])
    return pick_thresholds(f1, g)
