"""Greedy non-maximum suppression over a fixed number of boxes, with a validity mask.

Greedy NMS keeps the best-scoring box, drops every box that overlaps it by more than the threshold,
and repeats with the best box left. Here it is the fixed point of "a box is kept if it is valid and
no kept box scoring higher overlaps it", iterated from "every valid box is kept": a box's fate is
settled once those of all higher-scoring boxes are, so the iteration reaches greedy NMS's answer
after at most as many steps as the longest chain of suppressions (a few, in practice), each one
(K, K) reduction, instead of K sequential steps.
"""
from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
from jax import lax

Overlap = Literal["iou", "min"]


def overlaps(boxes_k4, *, overlap: Overlap = "iou", inclusive: bool = False):
    """(K, K) overlap of (x1, y1, x2, y2) boxes: intersection over union ("iou", as torchvision's
    `nms`), or over the smaller area ("min"). inclusive: pixel-inclusive sizes (x2 - x1 + 1), as
    MTCNN's original code computes them."""
    one = jnp.float32(1.0 if inclusive else 0.0)
    x1, y1, x2, y2 = (boxes_k4[:, i] for i in range(4))
    area = (x2 - x1 + one) * (y2 - y1 + one)
    w = jnp.maximum(0.0, jnp.minimum(x2[:, None], x2[None]) - jnp.maximum(x1[:, None], x1[None]) + one)
    h = jnp.maximum(0.0, jnp.minimum(y2[:, None], y2[None]) - jnp.maximum(y1[:, None], y1[None]) + one)
    inter = w * h
    if overlap == "min":
        return inter / jnp.minimum(area[:, None], area[None])
    return inter / (area[:, None] + area[None] - inter)


def nms(boxes_k4, scores_k, valid_k, threshold: float, *, overlap: Overlap = "iou", inclusive: bool = False):
    """Greedy NMS: bool (K,), which of the valid boxes are kept (in the input's order). A box is
    dropped when a kept box with a higher score (ties: the earlier one) overlaps it by more than
    `threshold`."""
    k = scores_k.shape[0]
    order = jnp.argsort(jnp.where(valid_k, -scores_k, jnp.inf), stable=True)
    valid = valid_k[order]
    above = overlaps(boxes_k4[order], overlap=overlap, inclusive=inclusive) > threshold
    idx = jnp.arange(k)
    # suppresses[j, i]: j ranks before i, both valid, and j overlaps i by more than the threshold
    suppresses = above & (idx[:, None] < idx[None]) & valid[:, None] & valid[None]

    def step(state):
        keep, _ = state
        new = valid & ~jnp.any(suppresses & keep[:, None], axis=0)
        return new, jnp.any(new != keep)

    keep, _ = lax.while_loop(lambda s: s[1], step, (valid, jnp.array(True)))
    return jnp.zeros(k, bool).at[order].set(keep)


def top_valid(scores_k, valid_k, n: int):
    """Indices of the n best-scoring valid entries (best first; ties: the earlier one) and which of
    them are valid; fewer than n valid entries leave invalid ones at the end (index 0 if n > K)."""
    k = scores_k.shape[0]
    masked = jnp.where(valid_k, scores_k, -jnp.inf)
    if n > k:
        masked = jnp.concatenate([masked, jnp.full((n - k,), -jnp.inf, masked.dtype)])
    _, idx = lax.top_k(masked, n)
    ok = (idx < k) & valid_k[jnp.minimum(idx, k - 1)]
    return jnp.where(ok, idx, 0), ok
