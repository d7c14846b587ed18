"""Resampling of images.

`linear_scale_translate`: antialiased bilinear scaling and translation of whole images with a
static geometry (`jax.image.scale_and_translate`'s "linear"), as two passes of a few taps per
output pixel on CPU.

`pillow_weights`: Pillow's fixed-point quantization of bilinear filter weights, exact (the device
program's crop resize and the exported graphs' resize both use it).

`area_resize`: area resampling of image regions (PyTorch's `interpolate(mode="area")`, i.e. adaptive
average pooling) from an integral image: each output pixel is the mean of its input bin, whose sum
is four lookups, so regions of any size cost the same and their bounds may be traced values.

Bins are torch's: output row i of a region of L rows covers rows [floor(i*L/n), ceil((i+1)*L/n)).
Sums are exact integers (uint32 arithmetic wraps, and every bin's sum fits), then divided by the
bin's height and width as torch's CPU kernel does, so a resampled uint8 image equals torch's to the
last bit or one rounding.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hsemo_jax.ops.dispatch import per_backend

PILLOW_BITS = 22  # Pillow's fixed-point filter weights: 32 bits - 8 (a uint8 level) - 2 (headroom)


def pillow_weights(w, total):
    """Pillow's fixed-point weight of each integer filter value `w` (int32, >= 0) of an output
    pixel whose values sum to `total` (broadcast against w): round(w / total * 2^22), half up, in
    integer long division, 8 bits a step (r < total < 2^23, so r << 8 fits in int32).

    Exact, as Pillow's float64 quotient is (within 1e-9 of the exact one, never across a half);
    a float32 quotient can round one unit differently, and a pixel whose sum then lands on a half
    rounds one level the other way (an enlarged face crop had 10% of its values one level off)."""
    q, r = jnp.zeros_like(w), w
    for bits in (8, 8, PILLOW_BITS - 16):
        r = r * (1 << bits)
        d = lax.div(r, total)
        q, r = q * (1 << bits) + d, r - d * total
    return q + (2 * r >= total).astype(jnp.int32)  # round half up


def materialized(x):
    """`x`, computed once. XLA:CPU fuses a producer made of cheap ops into a gather that reads it
    and recomputes it for every element gathered (a second resampling pass recomputed the first
    for each of its taps; `lax.optimization_barrier` does not stop fusion). A scatter is not fused
    into what reads it: here one row per index of x's first axis (measured faster than one row of
    all of x, or a dynamic_update_slice)."""
    rows = jnp.arange(x.shape[0])
    return jnp.zeros_like(x).at[rows].set(x, indices_are_sorted=True, unique_indices=True)


def _linear_taps(in_size: int, out_size: int, scale: float, translation: float):
    """`jax.image.scale_and_translate`'s antialiased triangle weights for one axis (its
    `compute_weight_mat`, without edge padding), in numpy, as the few input pixels each output
    pixel reads: indices (out, k) int32 and weights (out, k) float32 (zero where unused)."""
    inv = 1.0 / scale
    support = max(inv, 1.0)  # the triangle is stretched when shrinking (antialiasing)
    centre = (np.arange(out_size) + 0.5) * inv - translation * inv - 0.5
    w = np.maximum(0.0, 1.0 - np.abs(centre[None, :] - np.arange(in_size)[:, None]) / support)  # (in, out)
    total = w.sum(axis=0, keepdims=True)
    w = np.where(np.abs(total) > 1000 * np.finfo(np.float32).eps, w / np.where(total != 0, total, 1), 0.0)
    w = np.where((centre >= -0.5) & (centre <= in_size - 0.5), w, 0.0).T  # (out, in)
    used = w != 0
    first = np.where(used.any(axis=1), used.argmax(axis=1), 0)
    last = np.where(used.any(axis=1), in_size - 1 - used[:, ::-1].argmax(axis=1), 0)
    k = int((last - first).max()) + 1
    taps = first[:, None] + np.arange(k)
    weights = np.take_along_axis(w, np.minimum(taps, in_size - 1), axis=1) * (taps < in_size)
    taps = np.minimum(taps, in_size - 1)  # padded taps (weight 0) must still index validly
    return taps.astype(np.int32), weights.astype(np.float32)


def _linear_taps_form(x_nhwc, out_hw, scale, translation):
    """Two gather passes (rows, then columns), each output pixel a weighted sum of its taps, the
    first pass's result computed once (`materialized`). An expensive input should be too."""
    for axis, (out, s, t) in ((1, (out_hw[0], scale[0], translation[0])), (2, (out_hw[1], scale[1], translation[1]))):
        taps, weights = _linear_taps(x_nhwc.shape[axis], out, s, t)
        x = jnp.take(x_nhwc, taps, axis=axis)  # (..., out, k, ...)
        x_nhwc = jnp.sum(x * weights.reshape(*weights.shape, *[1] * (3 - axis)), axis=axis + 1)
        x_nhwc = materialized(x_nhwc) if axis == 1 else x_nhwc
    return x_nhwc


def linear_scale_translate(x_nhwc, out_hw: tuple[int, int], scale: tuple[float, float],
                           translation: tuple[float, float]):
    """float32 images (N, H, W, C) -> (N, *out_hw, C): `jax.image.scale_and_translate(x, ..., (1, 2),
    scale, translation, "linear", antialias=True)` with a static (Python float) scale and
    translation per axis (y, x). On CPU two passes of a few taps per output pixel; elsewhere
    jax's dense weight-matrix products (MXU work on TPU). On CPU the dense products cost ~100x
    the taps' arithmetic when shrinking 360 px to 192 px (2.9 ms a frame for one view)."""
    shape = (x_nhwc.shape[0], *out_hw, x_nhwc.shape[3])

    def dense(x):
        return jax.image.scale_and_translate(x, shape, (1, 2), jnp.array(scale, jnp.float32),
                                             jnp.array(translation, jnp.float32), method="linear", antialias=True)

    return per_backend(lambda x: _linear_taps_form(x, out_hw, scale, translation), dense, x_nhwc)


def integral_image(images_nhwc):
    """uint8 NHWC -> uint32 (N, H+1, W+1, C): S[y, x] = sum of images[:y, :x] (mod 2**32)."""
    s = jnp.cumsum(jnp.cumsum(images_nhwc.astype(jnp.uint32), axis=1), axis=2)
    return jnp.pad(s, [(0, 0), (1, 0), (1, 0), (0, 0)])


def _bins(start, stop, n: int):
    """[lo, hi) of each of n output bins over input rows [start, stop) (traced ints)."""
    length = stop - start
    i = jnp.arange(n, dtype=jnp.int32)
    return start + (i * length) // n, start + ((i + 1) * length + n - 1) // n


def area_resize(integral_hwc, region, out_hw: tuple[int, int]):
    """Rows [y0, y1) x columns [x0, x1) of one image (its `integral_image`, (H+1, W+1, C)),
    area-resampled to `out_hw`: float32 (out_h, out_w, C). `region` = (y0, x0, y1, x1) int32,
    clamped to the image; an empty region gives zeros."""
    h, w = integral_hwc.shape[0] - 1, integral_hwc.shape[1] - 1
    y0, x0, y1, x1 = (jnp.clip(region[i], 0, (h, w, h, w)[i]) for i in range(4))
    ylo, yhi = _bins(y0, jnp.maximum(y1, y0), out_hw[0])
    xlo, xhi = _bins(x0, jnp.maximum(x1, x0), out_hw[1])
    s = integral_hwc
    total = (s[yhi[:, None], xhi[None, :]] - s[ylo[:, None], xhi[None, :]]
             - s[yhi[:, None], xlo[None, :]] + s[ylo[:, None], xlo[None, :]])
    kh = jnp.maximum(yhi - ylo, 1).astype(jnp.float32)[:, None, None]
    kw = jnp.maximum(xhi - xlo, 1).astype(jnp.float32)[None, :, None]
    return total.astype(jnp.float32) / kh / kw
