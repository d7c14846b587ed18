"""Face detection with BlazeFace as MediaPipe runs it, traceable end to end (one jitted program):

    frames (N, H, W, 3) uint8 -> letterbox to the model's square input in [-1, 1]
       (by default also overlapping square tiles of the frame, `tile_regions`, one batch)
    -> regressors, classificators -> boxes and keypoints decoded against SSD anchors, scores,
       in frame pixels
    -> MediaPipe's weighted non-maximum suppression per frame over all views' detections
       -> at most `max_faces` faces, in frame pixels, padded, with a validity mask.

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
  antialiasing (`jax.image.scale_and_translate`'s, `ops.resample.linear_scale_translate`), which MediaPipe's OpenCV warp does not do (with
  tiles, after block means by whole factors: `resample`).
The tiles (`detect(..., tiles=True)`) are not MediaPipe's: `tiles=False` is its whole-frame pass.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hsemo_jax.errors import InputError
from hsemo_jax.models.blazeface import NUM_KEYPOINTS, VARIANTS, Variant
from hsemo_jax.ops.resample import linear_scale_translate, materialized

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

    _, out = lax.scan(step, (remaining, jnp.zeros_like(remaining[0])), None, length=max_faces)
    return out


def resample(frames, size: int, region: tuple[int, int, int, int] | None = None, *, box: bool = True):
    """uint8 frames (N, H, W, 3) -> (N, size, size, 3) float32 in [-1, 1]: the frame's `region`
    (x0, y0, width, height; the whole frame by default) scaled by size / max(width, height),
    centred, black border. Also returns (scale, offset (x, y)) with
    input pixel = frame pixel * scale + offset.

    With `box`, shrinking by a whole factor k = floor(1 / scale) is first a mean over k x k
    blocks (the edge repeated to fill the last ones), then the antialiased bilinear resize does
    the rest (a factor in (1/2, 1]): the resize's dense weight matrices are then k^2 times
    smaller than on the whole frame, which is most of the letterbox's cost at 720p."""
    n, h, w, _ = frames.shape
    x0, y0, rw, rh = (0, 0, w, h) if region is None else region
    scale = size / max(rw, rh)
    x = frames[:, y0:y0 + rh, x0:x0 + rw]
    k = max(1, max(rw, rh) // size) if box else 1  # floor(1 / scale), exactly
    if k > 1:  # block sums of the uint8 frame in int32 (XLA fuses the cast: ~20x a float32 mean)
        ph, pw = -rh % k, -rw % k
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
        x = materialized(x.reshape(n, (rh + ph) // k, k, (rw + pw) // k, k, 3).sum(axis=(2, 4), dtype=jnp.int32))
        x = x / (k * k)
    x = x.astype(jnp.float32)
    offset = ((size - rw * scale) / 2, (size - rh * scale) / 2)  # within the input
    x = linear_scale_translate(x, (size, size), (scale * k, scale * k), (offset[1], offset[0]))
    return x / 127.5 - 1.0, scale, (offset[0] - x0 * scale, offset[1] - y0 * scale)


def letterbox(frames, size: int):
    """The whole frame as the model's input, one antialiased resize (`resample` without a region
    or box means): MediaPipe's ImageToTensorCalculator with keep_aspect_ratio and BORDER_ZERO."""
    return resample(frames, size, box=False)


TILE_OVERLAP = 0.2  # the least overlap of neighbouring tiles, a fraction of their side
TILE_SPAN = 0.6  # a tile's side is at most this fraction of the frame's longer side
# the score a tile's detection needs (the whole frame's stays the variant's): a face ~2x smaller
# than the whole-frame pass can find is often scored 0.5-0.6 by full range in a tile; 0.5 is
# short range's own threshold. (On `bench predict`'s clips, of MTCNN's faces 0.6 finds ~87%,
# 0.5 ~95%, 0.45 ~96% but also a "face" scored 0.46 in skimage's hubble_deep_field.)
TILE_MIN_SCORE = 0.5


def tile_regions(h: int, w: int) -> list[tuple[int, int, int, int]]:
    """Square tiles (x0, y0, side, side) covering an H x W frame, overlapping by at least
    TILE_OVERLAP of their side, of side min(short side, TILE_SPAN * long side): two for a 16:9
    frame (side = its height, at x = 0 and W - H), 2 x 2 for a square or 4:3 one. A face narrower
    than the overlap lies entirely inside some tile, where it is at least 1 / TILE_SPAN times
    larger to the network than on the whole frame."""
    side = min(h, w, -(-int(TILE_SPAN * 1000) * max(h, w) // 1000))
    step = side - int(TILE_OVERLAP * side)

    def starts(length):
        count = max(1, -(-(length - side) // step) + 1)
        return [round(i * (length - side) / max(count - 1, 1)) for i in range(count)]

    return [(x, y, side, side) for y in starts(h) for x in starts(w)]


def detect(model, frames, *, max_faces: int = 8, min_score: float | None = None,
           iou_threshold: float = IOU_THRESHOLD, tiles: bool = True,
           tile_min_score: float = TILE_MIN_SCORE) -> Detections:
    """Faces in uint8 RGB frames (N, H, W, 3) of any size with a `models.blazeface` network.

    With `tiles`, the network also sees the frame's `tile_regions` (one batch: the whole frame
    and the tiles), so that faces too small for it on the whole frame are found; a tile's
    detections cut by an edge it shares with the frame's inside are dropped (the face is whole in
    a neighbour, or large enough for the whole frame), and the weighted NMS runs once over all
    the rest, merging a face seen several times; a tile's detections need `tile_min_score`.
    Without, the whole frame only, `letterbox`ed as MediaPipe.

    Traceable (call it under `jax.jit`/`nnx.jit`, shapes static); `min_score` defaults to the
    variant's threshold (short range 0.5, full range 0.6)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != jnp.uint8:
        raise InputError(f"detect: expected uint8 RGB frames (N, H, W, 3); got {frames.dtype} {frames.shape}")
    variant = VARIANTS[model.variant]
    n, h, w, _ = frames.shape
    regions = [(0, 0, w, h)] + (tile_regions(h, w) if tiles else [])
    views = [resample(frames, variant.input_size, r, box=tiles) for r in regions]
    regressors, classificators = model(jnp.concatenate([x for x, _, _ in views]))
    parts = []
    for i, ((x0, y0, rw, rh), (_, scale, offset)) in enumerate(zip(regions, views)):
        boxes, keypoints, scores, candidate = candidates(
            regressors[i * n:(i + 1) * n], classificators[i * n:(i + 1) * n], variant, scale, offset,
            tile_min_score if i else min_score)
        if i:  # a tile: drop what crosses an edge inside the frame
            b = boxes
            candidate &= ((x0 == 0) | (b[..., 0] >= x0)) & ((y0 == 0) | (b[..., 1] >= y0))
            candidate &= ((x0 + rw == w) | (b[..., 2] <= x0 + rw)) & ((y0 + rh == h) | (b[..., 3] <= y0 + rh))
        parts.append((boxes, keypoints, scores, candidate))
    return suppress(*(jnp.concatenate(p, axis=1) for p in zip(*parts)), max_faces=max_faces,
                    iou_threshold=iou_threshold)


def candidates(regressors, classificators, variant: Variant, scale: float, offset: tuple[float, float],
               min_score: float | None = None):
    """The network's outputs for frames resampled with (scale, offset) -> boxes (N, A, 4) and
    keypoints (N, A, 6, 2) in frame pixels, scores (N, A) and which are candidates (N, A): score
    >= `min_score` (the variant's by default), width and height >= 0."""
    size = variant.input_size
    boxes, keypoints, scores = decode(regressors, classificators, jnp.asarray(ssd_anchors(variant)), size)
    threshold = variant.min_score if min_score is None else min_score
    candidate = (scores >= threshold) & (boxes[..., 2] - boxes[..., 0] >= 0) & (boxes[..., 3] - boxes[..., 1] >= 0)
    # model input (normalized) -> frame pixels
    to_pixels = lambda xy: (xy * size - jnp.asarray(offset, jnp.float32)) / scale  # noqa: E731
    boxes = to_pixels(boxes.reshape(*boxes.shape[:-1], 2, 2)).reshape(boxes.shape)
    return boxes, to_pixels(keypoints), scores, candidate


def suppress(boxes, keypoints, scores, candidate, *, max_faces: int,
             iou_threshold: float = IOU_THRESHOLD) -> Detections:
    """Weighted NMS per frame over (N, A, ...) detections in frame pixels -> `Detections`."""
    nms = jax.vmap(lambda b, k, s, c: weighted_nms(b, k, s, c, max_faces, iou_threshold))
    boxes, keypoints, scores, valid = nms(boxes, keypoints, scores, candidate)
    mask = valid[..., None]
    return Detections(jnp.where(mask, boxes, 0.0), jnp.where(mask[..., None], keypoints, 0.0), scores, valid)


def postprocess(regressors, classificators, variant: Variant, scale: float, offset: tuple[float, float], *,
                max_faces: int, min_score: float | None = None, iou_threshold: float = IOU_THRESHOLD) -> Detections:
    """The network's outputs for frames letterboxed with (scale, offset) -> faces in frame pixels."""
    return suppress(*candidates(regressors, classificators, variant, scale, offset, min_score),
                    max_faces=max_faces, iou_threshold=iou_threshold)
