"""Per-channel reductions and broadcasts, with a CPU form: batch statistics, per-channel
gradients and global average pooling go through these."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from hsemo_jax.ops.dispatch import onnx_forms, per_backend


def _gemv_sum(v_mc):
    """Column sums of (M, C) as ones(M) @ v: Eigen's multi-threaded matrix-vector product. XLA:CPU
    turns a long reduction into chains of reduce-windows at ~2 GB/s and fuses the summand's
    producer into each; a MobileFaceNet train step ran 2.6x faster with this (NOTES.md)."""
    ones = jnp.ones((v_mc.shape[0],), v_mc.dtype)
    return lax.dot_general(ones, v_mc, (((0,), (0,)), ((), ())), precision=lax.Precision.HIGHEST)


def leading_sum(x, ndim: int = 1):
    """Sum of `x` over all but its last `ndim` axes (per channel for NHWC): on CPU as a
    matrix-vector product (`_gemv_sum`), elsewhere one reduction. Batch statistics and
    per-channel gradients use it."""
    trailing = x.shape[x.ndim - ndim:]
    flat = x.reshape(-1, math.prod(trailing))
    out = per_backend(_gemv_sum, lambda v: v.sum(axis=0), flat)
    return out.reshape(trailing)


def spatial_mean(x_nhwc):
    """Mean over H and W (global average pooling), on CPU as per-sample matrix-vector products
    with ones, as `leading_sum` (EfficientNet's head, 7x7x1280: XLA's reduction took ~40 us of a
    ~8 ms batch-1 call). For ONNX (`dispatch.onnx_forms`) a mean of x transposed to NCHW: the
    runtimes' layout passes cancel that transpose against the convolution's before it, which a
    reshape would stop."""
    if onnx_forms():
        return jnp.transpose(x_nhwc, (0, 3, 1, 2)).mean(axis=(2, 3))
    n, h, w, c = x_nhwc.shape
    flat = x_nhwc.reshape(n, h * w, c)

    def gemv(v):
        ones = jnp.full((h * w,), 1 / (h * w), v.dtype)
        return lax.dot_general(ones, v, (((0,), (1,)), ((), ())), precision=lax.Precision.HIGHEST)

    return per_backend(gemv, lambda v: v.mean(axis=1), flat)


def broadcast_leading(v, shape):
    """`v` broadcast to `shape` along new leading axes; its gradient is a `leading_sum`. A
    per-channel parameter used through it (scale, bias, PReLU slope, tap weight) gets its
    gradient from the fast reduction instead of XLA's transpose of the broadcast."""
    return _broadcast_leading(v, tuple(shape), v.ndim)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _broadcast_leading(v, shape, ndim):
    return jnp.broadcast_to(v, shape)


def _broadcast_leading_fwd(v, shape, ndim):
    return jnp.broadcast_to(v, shape), None


def _broadcast_leading_bwd(shape, ndim, _, g):
    return (leading_sum(g, ndim),)


_broadcast_leading.defvjp(_broadcast_leading_fwd, _broadcast_leading_bwd)
