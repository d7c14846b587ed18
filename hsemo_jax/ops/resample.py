"""Area resampling of image regions (PyTorch's `interpolate(mode="area")`, i.e. adaptive average
pooling) from an integral image: each output pixel is the mean of its input bin, whose sum is four
lookups, so regions of any size cost the same and their bounds may be traced values.

Bins are torch's: output row i of a region of L rows covers rows [floor(i*L/n), ceil((i+1)*L/n)).
Sums are exact integers (uint32 arithmetic wraps, and every bin's sum fits), then divided by the
bin's height and width as torch's CPU kernel does, so a resampled uint8 image equals torch's to the
last bit or one rounding.
"""
from __future__ import annotations

import jax.numpy as jnp


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
