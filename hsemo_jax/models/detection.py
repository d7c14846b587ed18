"""Face detection with BlazeFace as MediaPipe runs it, traceable end to end (one jitted program):

    frames (N, H, W, 3) uint8 -> letterbox to the model's square input in [-1, 1]
    -> regressors, classificators -> boxes and keypoints decoded against SSD anchors, scores
    -> MediaPipe's weighted non-maximum suppression per frame -> at most `max_faces` faces,
       in frame pixels, padded, with a validity mask.

MediaPipe semantics followed (`face_detection.pbtxt` and the calculators it names):
* SsdAnchorsCalculator with fixed-size anchors: centres ((x + 0.5) / fw, (y + 0.5) / fh) per cell
  of each stride's feature map, row-major, one anchor per layer sharing the stride (two with an
  interpolated scale), width and height 1.
* TensorsToDetectionsCalculator: values in x, y order, divided by the input size and offset by the
  anchor centre; logits clipped to +-100 before the sigmoid; a detection needs score >=
  min_score_thresh and non-negative width and height.
* NonMaxSuppressionCalculator, WEIGHTED, IoU threshold 0.3: in descending score order, the best
  remaining detection and every remaining one with IoU > 0.3 (itself included) are removed and
  output as one: their score-weighted mean corners and keypoints, with the best one's score. It
  stops when a step removes nothing (a zero-area box) or no detection is left; here also after
  `max_faces` outputs (the first `max_faces` of MediaPipe's list).
* ImageToTensorCalculator with keep_aspect_ratio and BORDER_ZERO: the frame is scaled by
  size / max(H, W), centred, and the border is black (-1). The resampling here is bilinear with
  antialiasing (`jax.image.scale_and_translate`), which MediaPipe's OpenCV warp does not do.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hsemo_jax.errors import InputError
from hsemo_jax.models.blazeface import NUM_KEYPOINTS, VARIANTS, Variant

IOU_THRESHOLD = 0.3
SCORE_CLIP = 100.0


class Detections(NamedTuple):
    boxes: jax.Array  # (N, max_faces, 4) x1, y1, x2, y2 in frame pixels
    keypoints: jax.Array  # (N, max_faces, 6, 2) x, y in frame pixels
    scores: jax.Array  # (N, max_faces), descending among the valid ones
    valid: jax.Array  # (N, max_faces) bool; invalid rows are zeros


def ssd_anchors(variant: Variant) -> np.ndarray:
    """Anchor centres (A, 2) as x, y in [0, 1], in the models' output order."""
    centres, i, strides = [], 0, variant.strides
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:  # consecutive layers of one stride
            j += 1
        per_cell = (j - i) * (2 if variant.interpolated_scale_aspect_ratio > 0 else 1)
        size = -(-variant.input_size // strides[i])  # ceil
        y, x = np.meshgrid((np.arange(size) + 0.5) / size, (np.arange(size) + 0.5) / size, indexing="ij")
        centres.append(np.repeat(np.stack([x.ravel(), y.ravel()], axis=-1), per_cell, axis=0))
        i = j
    return np.concatenate(centres).astype(np.float32)


def decode(regressors, classificators, anchors, input_size: int):
    """Raw outputs (N, A, 16), (N, A, 1) -> corners (N, A, 4) x1 y1 x2 y2 and keypoints
    (N, A, 6, 2), normalized to the model input, and scores (N, A) after the sigmoid."""
    r = regressors / input_size
    centre = r[..., 0:2] + anchors
    half = r[..., 2:4] / 2
    boxes = jnp.concatenate([centre - half, centre + half], axis=-1)
    keypoints = r[..., 4:].reshape(*r.shape[:-1], NUM_KEYPOINTS, 2) + anchors[:, None, :]
    scores = jax.nn.sigmoid(jnp.clip(classificators[..., 0], -SCORE_CLIP, SCORE_CLIP))
    return boxes, keypoints, scores


def _iou(box, boxes):
    """IoU of one box (4,) with each of boxes (A, 4); 0 where the union is empty."""
    lo = jnp.maximum(box[:2], boxes[:, :2])
    hi = jnp.minimum(box[2:], boxes[:, 2:])
    inter = jnp.prod(jnp.clip(hi - lo, 0), axis=-1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    union = area(box) + area(boxes) - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0.0)


def weighted_nms(boxes, keypoints, scores, candidate, max_faces: int, iou_threshold: float = IOU_THRESHOLD):
    """MediaPipe's weighted NMS on one frame's detections (A, ...), `candidate` (A,) those that
    passed the score and size tests. Returns (boxes (F, 4), keypoints (F, 6, 2), scores (F,),
    valid (F,)) with F = max_faces, zeros where not valid."""
    order = jnp.argsort(jnp.where(candidate, -scores, jnp.inf), stable=True)
    boxes, keypoints, scores, remaining = boxes[order], keypoints[order], scores[order], candidate[order]

    def step(state, _):
        remaining, stopped = state
        first = jnp.argmax(remaining)  # the best remaining one (sorted by score)
        found = remaining[first] & ~stopped
        merge = remaining & (_iou(boxes[first], boxes) > iou_threshold)
        w = jnp.where(merge, scores, 0.0)
        total = jnp.sum(w)
        norm = jnp.where(total > 0, total, 1.0)
        # weighted means as float32 sums (a matmul would run in bfloat16 on TPU by default)
        box = jnp.where(total > 0, jnp.sum(w[:, None] * boxes, axis=0) / norm, boxes[first])
        kps = jnp.where(total > 0, jnp.sum(w[:, None, None] * keypoints, axis=0) / norm, keypoints[first])
        out = (jnp.where(found, box, 0.0), jnp.where(found, kps, 0.0), jnp.where(found, scores[first], 0.0), found)
        return (remaining & ~merge, stopped | ~found | ~merge.any()), out

    _, out = lax.scan(step, (remaining, jnp.array(False)), None, length=max_faces)
    return out


def letterbox(frames, size: int):
    """uint8 frames (N, H, W, 3) -> (N, size, size, 3) float32 in [-1, 1]: scaled by
    size / max(H, W), centred, black border. Also returns (scale, offset (x, y)) with
    input pixel = frame pixel * scale + offset."""
    n, h, w, _ = frames.shape
    scale = size / max(h, w)
    offset = ((size - w * scale) / 2, (size - h * scale) / 2)
    x = jax.image.scale_and_translate(frames.astype(jnp.float32), (n, size, size, 3), (1, 2),
                                      jnp.array([scale, scale]), jnp.array([offset[1], offset[0]]),
                                      method="linear", antialias=True)
    return x / 127.5 - 1.0, scale, offset


def detect(model, frames, *, max_faces: int = 8, min_score: float | None = None,
           iou_threshold: float = IOU_THRESHOLD) -> Detections:
    """Faces in uint8 RGB frames (N, H, W, 3) of any size with a `models.blazeface` network.

    Traceable (call it under `jax.jit`/`nnx.jit`, shapes static); `min_score` defaults to the
    variant's threshold (short range 0.5, full range 0.6)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != jnp.uint8:
        raise InputError(f"detect: expected uint8 RGB frames (N, H, W, 3); got {frames.dtype} {frames.shape}")
    variant = VARIANTS[model.variant]
    x, scale, offset = letterbox(frames, variant.input_size)
    return postprocess(*model(x), variant, scale, offset, max_faces=max_faces, min_score=min_score,
                       iou_threshold=iou_threshold)


def postprocess(regressors, classificators, variant: Variant, scale: float, offset: tuple[float, float], *,
                max_faces: int, min_score: float | None = None, iou_threshold: float = IOU_THRESHOLD) -> Detections:
    """The network's outputs for frames letterboxed with (scale, offset) -> faces in frame pixels."""
    size = variant.input_size
    boxes, keypoints, scores = decode(regressors, classificators, jnp.asarray(ssd_anchors(variant)), size)
    threshold = variant.min_score if min_score is None else min_score
    candidate = (scores >= threshold) & (boxes[..., 2] - boxes[..., 0] >= 0) & (boxes[..., 3] - boxes[..., 1] >= 0)
    nms = jax.vmap(lambda b, k, s, c: weighted_nms(b, k, s, c, max_faces, iou_threshold))
    boxes, keypoints, scores, valid = nms(boxes, keypoints, scores, candidate)
    # model input (normalized) -> frame pixels
    to_pixels = lambda xy: (xy * size - jnp.asarray(offset, jnp.float32)) / scale  # noqa: E731
    boxes = to_pixels(boxes.reshape(*boxes.shape[:-1], 2, 2)).reshape(boxes.shape)
    keypoints = to_pixels(keypoints)
    mask = valid[..., None]
    return Detections(jnp.where(mask, boxes, 0.0), jnp.where(mask[..., None], keypoints, 0.0), scores, valid)
