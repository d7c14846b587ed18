"""Max pooling with PyTorch's output size (`nn.MaxPool2d`, no padding), NHWC."""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def pooled_size(n: int, window: int, stride: int, ceil_mode: bool) -> int:
    """torch's pooled length: floor (or ceil) of (n - window) / stride, plus 1; with ceil_mode the
    last window must start inside the input."""
    if n < window:
        raise ValueError(f"max pool of window {window} over a length of {n}")
    out = -(-(n - window) // stride) + 1 if ceil_mode else (n - window) // stride + 1
    if ceil_mode and (out - 1) * stride >= n:
        out -= 1
    return out


def max_pool2d(x_nhwc, window: int, stride: int, *, ceil_mode: bool = False):
    """`nn.MaxPool2d(window, stride, ceil_mode=ceil_mode)` on NHWC: windows that run past the
    bottom/right edge (ceil_mode) take the maximum of what they cover."""
    pads = [(0, (pooled_size(n, window, stride, ceil_mode) - 1) * stride + window - n) for n in x_nhwc.shape[1:3]]
    return lax.reduce_window(x_nhwc, jnp.array(-jnp.inf, x_nhwc.dtype), lax.max, (1, window, window, 1),
                             (1, stride, stride, 1), [(0, 0), *pads, (0, 0)])
