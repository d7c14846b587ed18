"""BlazeFace (Bazarevsky et al., "BlazeFace: Sub-millisecond Neural Face Detection on Mobile GPUs",
2019) as MediaPipe publishes it: the short-range model (128 px input, faces within ~2 m) and the
full-range model (192 px, ~5 m).

Both map an image in [-1, 1] (NHWC) to `(regressors (N, A, 16), classificators (N, A, 1))`, one
row per SSD anchor (`models.detection.ssd_anchors`): box centre offset, size and six keypoints
(x before y, in input pixels relative to the anchor), and the face logit.

* Short range: a 5x5 stride-2 convolution, then single BlazeBlocks (3x3 depthwise -> 1x1
  convolution, plus the input, 2x2 max-pooled when strided and zero-padded to the new width);
  heads on the 16x16 map (2 anchors per cell) and the 8x8 map (6 anchors per cell).
* Full range: a 3x3 stride-2 convolution, double BlazeBlocks (depthwise -> 1x1 down -> ReLU ->
  depthwise -> 1x1 up, plus the shortcut) down to 6x6, then a top-down feature pyramid back to
  48x48 (each step: the coarser map through a 1x1 convolution + ReLU, bilinearly upsampled 2x and
  added to the lateral map's 1x1 convolution + ReLU, then double BlazeBlocks); one anchor per cell.

Every convolution has a bias and TensorFlow's "SAME" padding, as in the `.tflite` files.
`conv_layers()` lists the convolutions in the order the files run them, which is how
`hsemo_jax.convert.blazeface` fills them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from hsemo_jax import ops
from hsemo_jax.models.layers import Conv2d

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
NUM_COORDS = 16  # box (x, y, w, h) + 6 keypoints (x, y)
NUM_KEYPOINTS = 6  # right eye, left eye, nose tip, mouth centre, right ear tragion, left ear tragion


@dataclass(frozen=True)
class Variant:
    """One published model and MediaPipe's options for it (`face_detection_*_range.pbtxt`)."""

    input_size: int
    strides: tuple[int, ...]  # SsdAnchorsCalculator: one anchor layer per stride
    interpolated_scale_aspect_ratio: float  # > 0: a second anchor per layer
    min_score: float  # TensorsToDetectionsCalculator's min_score_thresh
    weights: str  # file name in hsemo_jax/models/weights/
    max_stride: int  # of the coarsest feature map: any input whose sides are multiples of it runs
    view_size: int  # px: the frame's short side in `detection.detect`'s finer view

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / self.weights


VARIANTS = {
    "short_range": Variant(128, (8, 16, 16, 16), 1.0, 0.5, "blazeface_short_range.tflite", 16, 128),
    "full_range": Variant(192, (4,), 0.0, 0.6, "blazeface_full_range.tflite", 32, 224),
}


class DepthwiseConv(Conv2d):
    """A depthwise convolution with its bias through `ops.depthwise_bn_act` (the bias as the affine's
    shift): on CPU one pass of the fused depthwise kernel where it applies (float32, channels a
    multiple of 16), which ran the full-range network 16% faster than XLA's fusion."""

    def __call__(self, x_nhwc):
        c = x_nhwc.shape[-1]
        affine = (jnp.ones((c,), x_nhwc.dtype), self.bias[...])
        return ops.depthwise_bn_act(x_nhwc, self.kernel[...], self.strides, self.padding, affine, act=False)[0]


def _conv(cin: int, cout: int, k: int, stride: int = 1, *, depthwise: bool = False, rng) -> Conv2d:
    if depthwise:
        return DepthwiseConv(cin, cin, k, stride=stride, padding="SAME", groups=cin, bias=True, rng=rng)
    return Conv2d(cin, cout, k, stride=stride, padding="SAME", bias=True, rng=rng)


def _shortcut(x, stride: int, channels: int):
    """The residual path: 2x2 max-pooled when the block is strided, zero channels appended."""
    if stride == 2:
        x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
    extra = channels - x.shape[-1]
    return jnp.pad(x, [(0, 0), (0, 0), (0, 0), (0, extra)]) if extra else x


class BlazeBlock(nnx.Module):
    """3x3 depthwise (stride 1 or 2) -> 1x1 convolution, added to the shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, *, rng):
        self.depthwise = _conv(cin, cin, 3, stride, depthwise=True, rng=rng)
        self.project = _conv(cin, cout, 1, rng=rng)
        self.stride = stride

    def __call__(self, x):
        y = self.project(self.depthwise(x))
        return jax.nn.relu(y + _shortcut(x, self.stride, y.shape[-1]))

    def conv_layers(self) -> list[Conv2d]:
        return [self.depthwise, self.project]


class DoubleBlazeBlock(nnx.Module):
    """Depthwise (stride 1 or 2) -> 1x1 down to `mid` -> ReLU -> depthwise -> 1x1 up to `cout`,
    added to the shortcut, ReLU."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, *, rng):
        self.depthwise1 = _conv(cin, cin, 3, stride, depthwise=True, rng=rng)
        self.project = _conv(cin, mid, 1, rng=rng)
        self.depthwise2 = _conv(mid, mid, 3, depthwise=True, rng=rng)
        self.expand = _conv(mid, cout, 1, rng=rng)
        self.stride = stride

    def __call__(self, x):
        y = jax.nn.relu(self.project(self.depthwise1(x)))
        y = self.expand(self.depthwise2(y))
        return jax.nn.relu(y + _shortcut(x, self.stride, y.shape[-1]))

    def conv_layers(self) -> list[Conv2d]:
        return [self.depthwise1, self.project, self.depthwise2, self.expand]


class Head(nnx.Module):
    """Per cell of one feature map: `anchors` face logits and `anchors` x 16 box values."""

    def __init__(self, cin: int, anchors: int, *, rng):
        self.classifier = _conv(cin, anchors, 1, rng=rng)
        self.regressor = _conv(cin, anchors * NUM_COORDS, 1, rng=rng)

    def __call__(self, x):
        n = x.shape[0]
        return self.regressor(x).reshape(n, -1, NUM_COORDS), self.classifier(x).reshape(n, -1, 1)


def _run(blocks, x):
    for block in blocks:
        x = block(x)
    return x


def _heads(heads, maps):
    """Each head on its map; rows in anchor order (map, then row, column, anchor)."""
    outs = [head(m) for head, m in zip(heads, maps)]
    return jnp.concatenate([r for r, _ in outs], axis=1), jnp.concatenate([c for _, c in outs], axis=1)


class BlazeFaceShort(nnx.Module):
    """Short-range BlazeFace: 128x128 -> 896 anchors (16x16x2 + 8x8x6)."""

    variant = "short_range"

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.stem = _conv(3, 24, 5, 2, rng=rng)
        widths16 = [(24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2), (48, 56, 1),
                    (56, 64, 1), (64, 72, 1), (72, 80, 1), (80, 88, 1)]
        widths8 = [(88, 96, 2), (96, 96, 1), (96, 96, 1), (96, 96, 1), (96, 96, 1)]
        self.blocks16 = nnx.List([BlazeBlock(a, b, s, rng=rng) for a, b, s in widths16])
        self.blocks8 = nnx.List([BlazeBlock(a, b, s, rng=rng) for a, b, s in widths8])
        self.heads = nnx.List([Head(88, 2, rng=rng), Head(96, 6, rng=rng)])

    def __call__(self, x_nhwc):
        x16 = _run(self.blocks16, jax.nn.relu(self.stem(x_nhwc)))
        x8 = _run(self.blocks8, x16)
        return _heads(self.heads, [x16, x8])

    def conv_layers(self) -> list[Conv2d]:
        blocks = [c for b in [*self.blocks16, *self.blocks8] for c in b.conv_layers()]
        return [self.stem, *blocks, *(h.classifier for h in self.heads), *(h.regressor for h in self.heads)]


class TopDown(nnx.Module):
    """One feature-pyramid step: relu(1x1(coarser)) upsampled 2x + relu(1x1(lateral)), then
    double BlazeBlocks."""

    def __init__(self, coarse_ch: int, lateral_ch: int, ch: int, mid: int, blocks: int, *, rng):
        self.coarse = _conv(coarse_ch, ch, 1, rng=rng)
        self.lateral = _conv(lateral_ch, ch, 1, rng=rng)
        self.blocks = nnx.List([DoubleBlazeBlock(ch, mid, ch, rng=rng) for _ in range(blocks)])

    def __call__(self, coarse, lateral):
        up = jax.nn.relu(self.coarse(coarse))
        n, h, w, c = up.shape
        # bilinear with half-pixel centres, as the files' RESIZE_BILINEAR
        up = jax.image.resize(up, (n, 2 * h, 2 * w, c), "linear")
        return _run(self.blocks, jax.nn.relu(self.lateral(lateral)) + up)

    def conv_layers(self) -> list[Conv2d]:
        return [self.coarse, self.lateral, *(c for b in self.blocks for c in b.conv_layers())]


class BlazeFaceFull(nnx.Module):
    """Full-range BlazeFace: 192x192 -> 2304 anchors (48x48x1)."""

    variant = "full_range"

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.stem = _conv(3, 32, 3, 2, rng=rng)
        stages = [  # (in, mid, out, stride) per double block; maps 48, 24, 12, 6 px
            [(32, 8, 32, 1), (32, 8, 32, 1), (32, 12, 48, 2), (48, 12, 48, 1), (48, 16, 64, 1)],
            [(64, 24, 96, 2), (96, 32, 128, 1), (128, 32, 128, 1)],
            [(128, 36, 144, 2), (144, 48, 192, 1), (192, 64, 256, 1)],
            [(256, 96, 384, 2), (384, 96, 384, 1), (384, 96, 384, 1), (384, 96, 384, 1)],
        ]
        self.stages = nnx.List([nnx.List([DoubleBlazeBlock(*w, rng=rng) for w in stage]) for stage in stages])
        self.pyramid = nnx.List([TopDown(384, 256, 96, 48, 2, rng=rng), TopDown(96, 128, 64, 32, 2, rng=rng),
                                 TopDown(64, 64, 48, 24, 1, rng=rng)])
        self.heads = nnx.List([Head(48, 1, rng=rng)])

    def __call__(self, x_nhwc):
        x = jax.nn.relu(self.stem(x_nhwc))
        maps = []
        for stage in self.stages:
            x = _run(stage, x)
            maps.append(x)
        for step, lateral in zip(self.pyramid, maps[-2::-1]):
            x = step(x, lateral)
        return _heads(self.heads, [x])

    def conv_layers(self) -> list[Conv2d]:
        blocks = [c for stage in self.stages for b in stage for c in b.conv_layers()]
        pyramid = [c for step in self.pyramid for c in step.conv_layers()]
        return [self.stem, *blocks, *pyramid, *(h.classifier for h in self.heads), *(h.regressor for h in self.heads)]


MODELS = {"short_range": BlazeFaceShort, "full_range": BlazeFaceFull}


def build(variant: str, seed: int = 0) -> BlazeFaceShort | BlazeFaceFull:
    """A randomly initialized BlazeFace of `variant` (weights: `hsemo_jax.convert.blazeface`)."""
    return MODELS[variant](seed)
