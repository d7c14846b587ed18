"""Face detection with BlazeFace as MediaPipe runs it, traceable end to end (one jitted program):

    frames (N, H, W, 3) uint8 -> the whole frame at two scales (`pyramid_views`: its short side
       `size` px, then a third of that), or MediaPipe's one letterbox to the model's square input
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
  antialiasing (`jax.image.scale_and_translate`'s, `ops.resample.linear_scale_translate`), which
  MediaPipe's OpenCV warp does not do (the pyramid's views after block means by whole factors).
The pyramid (`detect(..., pyramid=True)`, the default) is not MediaPipe's: `pyramid=False` is its pass.
Both networks are fully convolutional, so a view may be any multiple of the coarsest stride high
and wide (`Variant.max_stride`): the anchors are laid on its grid as MediaPipe lays them on the
square one, and regressors are in input pixels in both.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hsemo_jax.errors import InputError
from hsemo_jax.models.blazeface import NUM_COORDS, NUM_KEYPOINTS, VARIANTS, Variant
from hsemo_jax.ops.resample import linear_scale_translate, materialized

IOU_THRESHOLD = 0.3
SCORE_CLIP = 100.0


class Detections(NamedTuple):
    boxes: jax.Array  # (N, max_faces, 4) x1, y1, x2, y2 in frame pixels
    keypoints: jax.Array  # (N, max_faces, 6, 2) x, y in frame pixels
    scores: jax.Array  # (N, max_faces), descending among the valid ones
    valid: jax.Array  # (N, max_faces) bool; invalid rows are zeros


def ssd_anchors(variant: Variant, input_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Anchor centres (A, 2) as x, y in [0, 1] of an input of `input_hw` px (the variant's square
    input by default), in the models' output order."""
    ih, iw = (variant.input_size,) * 2 if input_hw is None else input_hw
    centres, i, strides = [], 0, variant.strides
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:  # consecutive layers of one stride
            j += 1
        per_cell = (j - i) * (2 if variant.interpolated_scale_aspect_ratio > 0 else 1)
        fh, fw = -(-ih // strides[i]), -(-iw // strides[i])  # ceil
        y, x = np.meshgrid((np.arange(fh) + 0.5) / fh, (np.arange(fw) + 0.5) / fw, indexing="ij")
        centres.append(np.repeat(np.stack([x.ravel(), y.ravel()], axis=-1), per_cell, axis=0))
        i = j
    return np.concatenate(centres).astype(np.float32)


def decode(regressors, classificators, anchors, input_hw: tuple[int, int]):
    """Raw outputs (N, A, 16), (N, A, 1) -> corners (N, A, 4) x1 y1 x2 y2 and keypoints
    (N, A, 6, 2), normalized to the model input of `input_hw` px, and scores (N, A) after the
    sigmoid."""
    r = regressors / jnp.tile(jnp.asarray(input_hw[::-1], jnp.float32), NUM_COORDS // 2)  # x by width, y by height
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


def resample(frames, input_hw: tuple[int, int], scale: float, offset: tuple[float, float] = (0.0, 0.0), *,
             box: bool = True):
    """uint8 frames (N, H, W, 3) -> (N, *input_hw, 3) float32 in [-1, 1]: the frame scaled by
    `scale` and moved by `offset` (x, y): input pixel = frame pixel * scale + offset; black
    (-1) where the frame does not reach.

    With `box`, shrinking by a whole factor k = floor(1 / scale) is first a mean over k x k
    blocks (the edge repeated to fill the last ones), then the antialiased bilinear resize does
    the rest (a factor in (1/2, 1]): its taps (or dense weight matrices, off CPU) are then k^2
    times fewer than on the whole frame, which is most of a view's cost at 720p."""
    n, h, w, _ = frames.shape
    x = frames
    k = max(1, int(np.floor(1 / scale + 1e-9))) if box else 1
    if k > 1:  # block sums of the uint8 frame in int32 (XLA fuses the cast: ~20x a float32 mean)
        ph, pw = -h % k, -w % k
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
        x = materialized(x.reshape(n, (h + ph) // k, k, (w + pw) // k, k, 3).sum(axis=(2, 4), dtype=jnp.int32))
        x = x / (k * k)
    x = x.astype(jnp.float32)
    x = linear_scale_translate(x, input_hw, (scale * k, scale * k), (offset[1], offset[0]))
    return x / 127.5 - 1.0


def letterbox(frames, size: int):
    """The whole frame as the model's square input, centred, black border, one antialiased
    resize: MediaPipe's ImageToTensorCalculator with keep_aspect_ratio and BORDER_ZERO. Returns
    (input, scale, offset (x, y)) with input pixel = frame pixel * scale + offset."""
    _, h, w, _ = frames.shape
    scale = size / max(h, w)
    offset = ((size - w * scale) / 2, (size - h * scale) / 2)
    return resample(frames, (size, size), scale, offset, box=False), scale, offset


COARSER = 3  # the coarser view's scale is the finer one's divided by this
MAX_ASPECT = 4  # a view's long side is at most this many times `size` (panoramas are shrunk to fit)
# the score a pyramid detection needs. On `bench predict`'s clips (full range, 224 px), of MTCNN's
# faces 0.5 finds ~99% and 0.6 ~91%; full range scores at most 0.44 in 17 face-free scikit-image
# pictures at their own sizes, 0.38 at 640x480 (tests/test_blazeface.py); at 256 px it scored 0.64 in
# one. Short range's own threshold is 0.5 too.
VIEW_MIN_SCORE = 0.5


def pyramid_views(h: int, w: int, size: int, multiple: int) -> list[tuple[float, tuple[int, int]]]:
    """The views of an H x W frame that `detect` runs: (scale, (input height, input width)) of the
    whole frame scaled so that its short side is `size` px (its long side at most MAX_ASPECT x
    `size`), then at a third of that scale; each input padded at the bottom and right to a multiple of
    `multiple` px (the network's coarsest stride). Full range finds a face in the finer view from
    ~17 px; the coarser one finds faces taller than ~85% of the frame, which the finer view alone
    lost (hsemo_jax/bench/NOTES.md). At 16:9 and 224 px the views are 109k input pixels, where
    MediaPipe's letterbox and two square tiles had been 111k."""
    views = []
    for shrink in (1, COARSER):
        scale = min(size / min(h, w), MAX_ASPECT * size / max(h, w)) / shrink
        views.append((scale, tuple(-(-max(1, round(d * scale)) // multiple) * multiple for d in (h, w))))
    return views


def detect(model, frames, *, max_faces: int = 8, min_score: float | None = None,
           iou_threshold: float = IOU_THRESHOLD, pyramid: bool = True, size: int | None = None) -> Detections:
    """Faces in uint8 RGB frames (N, H, W, 3) of any size with a `models.blazeface` network.

    With `pyramid` (the default), the network sees the whole frame twice (`pyramid_views`), its
    short side scaled to `size` px (by default the variant's `view_size`: full range 224, short
    range 128) and to a third of that, so that both faces too small for MediaPipe's letterbox of a wide
    frame and faces as large as the frame are found; one weighted NMS merges all views'
    detections (a face seen in both). A pyramid detection
    needs `min_score` (default VIEW_MIN_SCORE). Without, MediaPipe's pass: the frame
    `letterbox`ed to the model's square input, `min_score` defaulting to the variant's threshold
    (short range 0.5, full range 0.6).

    Traceable (call it under `jax.jit`/`nnx.jit`, shapes static)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != jnp.uint8:
        raise InputError(f"detect: expected uint8 RGB frames (N, H, W, 3); got {frames.dtype} {frames.shape}")
    variant = VARIANTS[model.variant]
    _, h, w, _ = frames.shape
    if not pyramid:
        x, scale, offset = letterbox(frames, variant.input_size)
        return postprocess(*model(x), variant, scale, offset, max_faces=max_faces, min_score=min_score,
                           iou_threshold=iou_threshold)
    threshold = VIEW_MIN_SCORE if min_score is None else min_score
    size = variant.view_size if size is None else size
    parts = []
    for scale, input_hw in pyramid_views(h, w, size, variant.max_stride):
        parts.append(candidates(*model(resample(frames, input_hw, scale)), variant, scale, (0.0, 0.0), threshold,
                                input_hw=input_hw))
    return suppress(*(jnp.concatenate(p, axis=1) for p in zip(*parts)), max_faces=max_faces,
                    iou_threshold=iou_threshold)


def candidates(regressors, classificators, variant: Variant, scale: float, offset: tuple[float, float],
               min_score: float | None = None, *, input_hw: tuple[int, int] | None = None):
    """The network's outputs for frames resampled with (scale, offset) to an input of
    `input_hw` px (the variant's square by default) -> boxes (N, A, 4) and keypoints (N, A, 6, 2)
    in frame pixels, scores (N, A) and which are candidates (N, A): score >= `min_score` (the
    variant's by default), width and height >= 0."""
    input_hw = (variant.input_size,) * 2 if input_hw is None else input_hw
    anchors = jnp.asarray(ssd_anchors(variant, input_hw))
    boxes, keypoints, scores = decode(regressors, classificators, anchors, input_hw)
    threshold = variant.min_score if min_score is None else min_score
    candidate = (scores >= threshold) & (boxes[..., 2] - boxes[..., 0] >= 0) & (boxes[..., 3] - boxes[..., 1] >= 0)
    # model input (normalized) -> frame pixels
    size_xy = jnp.asarray(input_hw[::-1], jnp.float32)
    to_pixels = lambda xy: (xy * size_xy - jnp.asarray(offset, jnp.float32)) / scale  # noqa: E731
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
