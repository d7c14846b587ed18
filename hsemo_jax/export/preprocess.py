"""Preprocessing and read-out inside an exported graph: uint8 RGB crops of any size in,
expression probabilities and valence/arousal out.

The resize is Pillow's bilinear resampling (`models.transforms.resize_uint8`) as two integer
matrix products whose weights the graph computes from the crop's height and width, so one
artifact takes every crop size. Each output pixel's weights are the triangle filter stretched by
max(in/out, 1) (antialiasing when shrinking), normalized to sum 1 and quantized to 22 fractional
bits as Pillow does; sums start at half a level and are shifted back, so each pass rounds to whole
levels as Pillow's does, in Pillow >= 13's pass order (height first when it shrinks more than twice
as much as the width). The result equals `resize_uint8`, and so Pillow, level for level
(tests/test_export_preprocess.py). A dense weight matrix costs in * out multiply-adds per line
where Pillow's taps cost about 2 * in: for face crops up to a few hundred pixels a small part of
the network's cost.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hsemo_jax.ops.resample import PILLOW_BITS, pillow_weights


def _filter_weights(ones, n_out: int):
    """(n_out, n_in) int32 weights of Pillow's bilinear filter, from n_in ones (float32).

    The triangle at output pixel o over input pixel i is 1 - |(2i+1) n_out - (2o+1) n_in| /
    (2 max(n_in, n_out)): an integer over a common denominator, exact in float32 for crops below
    37,000 pixels. Normalized and quantized as Pillow does, round(w / sum(w) * 2^22), in integer
    long division, so the weights equal Pillow's (which computes them in float64). Indices come
    from a cumulative sum of `ones`, not `arange(n_in)`: jax2onnx keeps the input's symbolic
    height and width through reductions of the input, not through `arange` of a dimension."""
    n_in, m = jnp.sum(ones), np.float32(n_out)  # float32 scalars throughout (no weak types to widen)
    i = jnp.cumsum(ones) - ones  # 0, 1, ..., n_in - 1
    o = np.arange(n_out, dtype=np.float32)
    offset = jnp.expand_dims(2 * i + ones, 0) * m - np.expand_dims(2 * o + 1, 1) * n_in
    w = jnp.maximum(2 * jnp.maximum(n_in, m) - jnp.abs(offset), np.float32(0)).astype(jnp.int32)
    return pillow_weights(w, jnp.sum(w, axis=1, keepdims=True))


def _pass(x, weights, spec: str):
    """One axis resampled: int32 sums of levels times weights, rounded half up to levels 0..255."""
    acc = jnp.einsum(spec, x, weights, preferred_element_type=jnp.int32) + (1 << (PILLOW_BITS - 1))
    return jnp.clip(lax.div(acc, jnp.int32(1 << PILLOW_BITS)), 0, 255)


def resize_bilinear(crops_nhwc, size: int):
    """uint8 (N, H, W, 3) -> int32 (N, size, size, 3), whole levels 0..255; H and W may be
    symbolic (one exported graph for every crop size)."""
    x = crops_nhwc.astype(jnp.int32)
    ones = jnp.ones_like(crops_nhwc, dtype=jnp.float32)
    ones_h, ones_w = jnp.max(ones, axis=(0, 2, 3)), jnp.max(ones, axis=(0, 1, 3))  # (H,), (W,)
    w_h, w_w = _filter_weights(ones_h, size), _filter_weights(ones_w, size)
    in_h, in_w = jnp.sum(ones_h), jnp.sum(ones_w)
    height_first = (in_h > size) & (in_h - size > 2 * (in_w - size))

    def h_then_w(x):
        return _pass(_pass(x, w_h, "nhwc,uh->nuwc"), w_w, "nuwc,vw->nuvc")

    def w_then_h(x):
        return _pass(_pass(x, w_w, "nhwc,vw->nhvc"), w_h, "nhvc,uh->nuvc")

    return lax.cond(height_first, h_then_w, w_then_h, x)


def normalize(levels_nhwc, mean, std):
    """torchvision's ToTensor + Normalize of whole levels: (x / 255 - mean) / std in float32."""
    x = levels_nhwc.astype(jnp.float32) / np.float32(255)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def read_out(scores, with_va: bool):
    """Class scores -> (probabilities,) or (probabilities, valence/arousal): a softmax over the
    expression logits; valence and arousal are the last two scores as they are."""
    scores = scores.astype(jnp.float32)
    if not with_va:
        return (jax.nn.softmax(scores, axis=-1),)
    return jax.nn.softmax(scores[:, :-2], axis=-1), scores[:, -2:]
