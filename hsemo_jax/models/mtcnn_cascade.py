"""MTCNN's cascade as facenet-pytorch's `MTCNN.detect` runs it, in one jittable program per frame
size, with fixed maximum candidate counts and validity masks where the original has lists.

1. Image pyramid: scales 12/min_face_size * factor**k while the shorter side stays >= 12 px; each
   level is the frame area-resampled (torch `interpolate(mode="area")`) to int(side * scale + 1).
   PNet on each level; windows with probability >= thresholds[0] become boxes
   (floor((2 * cell + 1) / scale), floor((2 * cell + 12) / scale)); NMS 0.5 per level, then NMS 0.7
   over all levels; PNet's box regression (offsets times width and height); squared (`_square`).
2. 24x24 area-resampled crops (box truncated to integers, clamped to the frame) -> RNet; probability
   > thresholds[1]; NMS 0.7; RNet's regression (offsets times pixel-inclusive size); squared.
3. 48x48 crops -> ONet; probability > thresholds[2]; five landmarks from the crop box; ONet's
   regression; NMS 0.7 over the smaller box's area (pixel-inclusive), as the original MTCNN code.
Faces come largest first (facenet-pytorch's default `select_largest=True`).

What is fixed (per frame size, so one frame size compiles once): the pyramid, and at most
`level_candidates` windows per level (the best-scoring ones pass), `rnet_candidates` boxes into RNet,
`onet_candidates` into ONet and `max_faces` out. Only the pyramid's scales and sizes are computed on
the host, from the frame size. `Faces.capped` says where a cap dropped candidates that passed a
threshold (the answer may then differ from unbounded MTCNN's). No default cap is reached with 20
faces in a 400x500 frame; 40 faces need rnet_candidates=1024, onet_candidates=256, max_faces=64
(60 faces: more), at the price of larger RNet/ONet batches.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hsemo_jax.errors import InputError
from hsemo_jax.models.mtcnn import MTCNN
from hsemo_jax.ops.nms import nms, top_valid
from hsemo_jax.ops.resample import area_resize, integral_image


@dataclass(frozen=True)
class CascadeConfig:
    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709
    level_candidates: int = 512  # PNet windows per pyramid level entering that level's NMS
    rnet_candidates: int = 512  # PNet boxes (all levels, best first) that RNet sees
    onet_candidates: int = 128  # RNet boxes that ONet sees
    max_faces: int = 32

    def __post_init__(self):
        caps = (self.level_candidates, self.rnet_candidates, self.onet_candidates, self.max_faces)
        if not (self.min_face_size > 0 and 0 < self.factor < 1 and min(caps) >= 1 and len(self.thresholds) == 3):
            raise InputError(f"MTCNN: expected min_face_size > 0, 0 < factor < 1, three thresholds and caps >= 1; "
                             f"got {self}")


class Faces(NamedTuple):
    """Per frame: boxes (x1, y1, x2, y2) in pixels, ONet's probability, landmarks (5 points: eyes,
    nose, mouth corners; (x, y) pixels), which of the `max_faces` rows are faces (valid rows first,
    largest box first), and whether a candidate cap was reached."""

    boxes: jax.Array  # (N, F, 4) float32
    scores: jax.Array  # (N, F) float32
    landmarks: jax.Array  # (N, F, 5, 2) float32
    valid: jax.Array  # (N, F) bool
    capped: jax.Array  # (N,) bool


def pyramid(height: int, width: int, config: CascadeConfig) -> tuple[tuple[float, int, int], ...]:
    """(scale, level height, level width) per level, as facenet-pytorch computes them (float64)."""
    m = 12.0 / config.min_face_size
    minl, scale, levels = min(height, width) * m, m, []
    while minl >= 12:
        levels.append((scale, int(height * scale + 1), int(width * scale + 1)))
        scale, minl = scale * config.factor, minl * config.factor
    return tuple(levels)


def _normalize(pixels):
    return (pixels - 127.5) * 0.0078125


def _square(boxes):
    """facenet-pytorch's `rerec`: the square of side max(w, h) on the same centre."""
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    w, h = x2 - x1, y2 - y1
    side = jnp.maximum(w, h)
    nx1, ny1 = x1 + w * 0.5 - side * 0.5, y1 + h * 0.5 - side * 0.5
    return jnp.stack([nx1, ny1, nx1 + side, ny1 + side], axis=-1)


def _regress(boxes, reg, inclusive: bool):
    """Box + offsets times its size (pixel-inclusive: + 1, `bbreg`; else as PNet's stage)."""
    one = 1.0 if inclusive else 0.0
    w = boxes[:, 2] - boxes[:, 0] + one
    h = boxes[:, 3] - boxes[:, 1] + one
    return boxes + reg * jnp.stack([w, h, w, h], axis=-1)


def _crops(integral_hwc, boxes_k4, size: int):
    """facenet-pytorch's `pad` + crop + `imresample`: rows [y - 1, ey) x columns [x - 1, ex) of the
    truncated box, clamped (x, y >= 1; ex <= W, ey <= H), area-resampled to size x size and
    normalized; and whether the region is non-empty."""
    h, w = integral_hwc.shape[0] - 1, integral_hwc.shape[1] - 1
    b = jnp.trunc(boxes_k4).astype(jnp.int32)
    x, y = jnp.maximum(b[:, 0], 1), jnp.maximum(b[:, 1], 1)
    ex, ey = jnp.minimum(b[:, 2], w), jnp.minimum(b[:, 3], h)
    regions = jnp.stack([y - 1, x - 1, ey, ex], axis=-1)
    crops = jax.vmap(lambda r: area_resize(integral_hwc, r, (size, size)))(regions)
    return _normalize(crops), (ey > y - 1) & (ex > x - 1)


def _level_boxes(reg_hw4, prob_hw, scale: float, k: int, config: CascadeConfig):
    """One level of one frame: its best `k` windows (padded with invalid ones where the level has
    fewer) as (boxes, scores, offsets, valid, capped)."""
    h, w = prob_hw.shape
    flat = prob_hw.reshape(-1)
    passed = flat >= config.thresholds[0]
    idx, ok = top_valid(flat, passed, k)
    cell = jnp.stack([idx % w, idx // w], axis=-1).astype(jnp.float32)
    s = jnp.float32(scale)
    boxes = jnp.concatenate([jnp.floor((2 * cell + 1) / s), jnp.floor((2 * cell + 12) / s)], axis=-1)
    return boxes, flat[idx], reg_hw4.reshape(-1, 4)[idx], ok, jnp.sum(passed) > min(k, h * w)


def _stage1(boxes, scores, offsets, kept, capped, config: CascadeConfig):
    """All levels of one frame -> the best `rnet_candidates` boxes after NMS 0.7, regressed and
    squared. Greedy NMS decides a box by the boxes scoring higher only, so taking the best ones
    first and then NMS keeps exactly the best survivors."""
    n = min(config.rnet_candidates, scores.shape[0])
    idx, ok = top_valid(scores, kept, n)
    boxes, scores, offsets = boxes[idx], scores[idx], offsets[idx]
    keep = nms(boxes, scores, ok, 0.7)
    capped = capped | (jnp.sum(kept) > n)
    return _square(_regress(boxes, offsets, inclusive=False)), keep, capped


def _stage2(boxes, valid, nonempty, offsets, prob, config: CascadeConfig):
    """RNet's verdict on one frame's boxes -> the best `onet_candidates` survivors, regressed, squared."""
    score = prob[:, 1]
    keep = nms(boxes, score, valid & nonempty & (score > config.thresholds[1]), 0.7)
    n = min(config.onet_candidates, score.shape[0])
    idx, ok = top_valid(score, keep, n)
    return _square(_regress(boxes[idx], offsets[idx], inclusive=True)), ok, jnp.sum(keep) > n


def _stage3(boxes, valid, nonempty, offsets, points, prob, config: CascadeConfig):
    """ONet's verdict on one frame's boxes -> `max_faces` rows, valid ones first, largest first."""
    score = prob[:, 1]
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    marks = jnp.stack([w[:, None] * points[:, :5] + boxes[:, :1] - 1,
                       h[:, None] * points[:, 5:] + boxes[:, 1:2] - 1], axis=-1)
    boxes = _regress(boxes, offsets, inclusive=True)
    keep = nms(boxes, score, valid & nonempty & (score > config.thresholds[2]), 0.7,
               overlap="min", inclusive=True)
    idx, ok = top_valid(score, keep, config.max_faces)
    boxes, score, marks = boxes[idx], score[idx], marks[idx]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = jnp.argsort(jnp.where(ok, -area, jnp.inf), stable=True)
    return boxes[order], score[order], marks[order], ok[order], jnp.sum(keep) > config.max_faces


def detect(model: MTCNN, frames_nhwc, config: CascadeConfig = CascadeConfig()) -> Faces:
    """Faces in uint8 RGB frames (N, H, W, 3); traceable (jit with `config` static)."""
    n, height, width, _ = frames_nhwc.shape
    levels = pyramid(height, width, config)
    f = config.max_faces
    if not levels:  # frame shorter than min_face_size: nothing to search
        return Faces(jnp.zeros((n, f, 4)), jnp.zeros((n, f)), jnp.zeros((n, f, 5, 2)),
                     jnp.zeros((n, f), bool), jnp.zeros((n,), bool))
    integral = integral_image(frames_nhwc)
    whole = jnp.array([0, 0, height, width], jnp.int32)
    outputs = [model.pnet(_normalize(jax.vmap(lambda s: area_resize(s, whole, (lh, lw)))(integral)))
               for _, lh, lw in levels]
    # Every level's best windows, padded to one count, so that one (vmapped) NMS serves all levels.
    k = min(config.level_candidates, max(prob.shape[1] * prob.shape[2] for _, prob in outputs))
    per_level = [jax.vmap(functools.partial(_level_boxes, scale=scale, k=k, config=config))(reg, prob[..., 1])
                 for (scale, _, _), (reg, prob) in zip(levels, outputs)]
    boxes, scores, offsets, valid, capped = (jnp.stack([p[i] for p in per_level], axis=1) for i in range(5))
    kept = jax.vmap(jax.vmap(functools.partial(nms, threshold=0.5)))(boxes, scores, valid)  # per level
    flat = lambda a: a.reshape(n, -1, *a.shape[3:])  # noqa: E731 (levels one after another)
    boxes, valid, capped = jax.vmap(functools.partial(_stage1, config=config))(
        flat(boxes), flat(scores), flat(offsets), flat(kept), jnp.any(capped, axis=1))

    crops, nonempty = jax.vmap(functools.partial(_crops, size=24))(integral, boxes)
    reg, prob = model.rnet(crops.reshape(-1, 24, 24, 3))
    k = boxes.shape[1]
    boxes, valid, cap2 = jax.vmap(functools.partial(_stage2, config=config))(
        boxes, valid, nonempty, reg.reshape(n, k, 4), prob.reshape(n, k, 2))

    crops, nonempty = jax.vmap(functools.partial(_crops, size=48))(integral, boxes)
    reg, points, prob = model.onet(crops.reshape(-1, 48, 48, 3))
    k = boxes.shape[1]
    boxes, scores, marks, valid, cap3 = jax.vmap(functools.partial(_stage3, config=config))(
        boxes, valid, nonempty, reg.reshape(n, k, 4), points.reshape(n, k, 10), prob.reshape(n, k, 2))
    return Faces(boxes, scores, marks, valid, capped | cap2 | cap3)


def as_rgb_frames(frames) -> tuple[np.ndarray, bool]:
    """uint8 RGB frames (N, H, W, 3) from a frame (H, W) / (H, W, C) or a batch (N, H, W, C),
    C = 1 (grey, repeated), 3 (RGB) or 4 (RGBA, alpha dropped), uint8 or uint16 (top 8 bits); and
    whether a batch was given. Anything else: InputError."""
    a = np.asarray(frames)
    batched = a.ndim == 4
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim not in (3, 4) or a.shape[-1] not in (1, 3, 4):
        raise InputError(f"expected a frame (H, W) or (H, W, C), or frames (N, H, W, C), with C = 1, 3 or 4; "
                         f"got an array of shape {a.shape}")
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise InputError(f"expected uint8 (or uint16) pixels, got {a.dtype}; convert to uint8 (0..255) first")
    if min(a.shape[-3:-1]) == 0:
        raise InputError(f"empty frame of shape {a.shape}")
    a = a if batched else a[None]
    a = np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a[..., :3]
    return np.ascontiguousarray(a), batched


def make_detect(model: MTCNN, config: CascadeConfig = CascadeConfig()) -> Callable[..., Faces]:
    """`fn(frame or frames) -> Faces` (numpy; no batch axis for a single frame), jitted: one
    compilation per frame size and batch size. The weights are compile-time constants."""
    graphdef, state = nnx.split(model)
    weights = jax.tree.map(np.asarray, state)
    run = jax.jit(lambda x: detect(nnx.merge(graphdef, weights), x, config))

    def fn(frames) -> Faces:
        x, batched = as_rgb_frames(frames)
        out = jax.tree.map(np.asarray, run(x))
        return out if batched else Faces(*(a[0] for a in out))

    return fn
