"""Batch normalization's training statistics and gradient: on CPU one kernel pass each
(`channel_stats.cc`, float32), elsewhere XLA reductions.

Whatever the activations' dtype (bfloat16 under `train.compute_dtype`), the statistics and the
per-channel sums of the gradient are float32, and the elementwise normalization and its gradient
compute in float32 from x's values (conversions that XLA fuses into the passes reading x) and
return x's dtype: the backward keeps x itself, not a float32 copy, and neither the mean nor the
gradient's closed form (a difference of large terms) lose precision to bfloat16 rounding.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from hsemo_jax.ops.dispatch import cpu_kernels, kernel_or_xla, onnx_forms
from hsemo_jax.ops.reduce import broadcast_leading, leading_sum


def _moments_kernel(x_mc):
    return cpu_kernels().channel_moments(x_mc)


def _grad_sums_kernel(g_mc, x_mc, mean):
    return cpu_kernels().channel_grad_sums(g_mc, x_mc, mean)


def _moments_xla(x_mc):
    n = x_mc.shape[0]
    x_mc = x_mc.astype(jnp.float32)
    mean = leading_sum(x_mc) / n
    return mean, leading_sum(jnp.square(x_mc - mean)) / n


def _grad_sums_xla(g_mc, x_mc, mean):
    g_mc, x_mc = g_mc.astype(jnp.float32), x_mc.astype(jnp.float32)
    return leading_sum(g_mc), leading_sum(g_mc * (x_mc - mean))


def _float32_kernel(kernel, xla_form, *args):
    """`kernel_or_xla` where every array is float32 (the kernels' only dtype), else the XLA form
    (which computes in float32 from any float dtype)."""
    if all(a.dtype == jnp.float32 for a in args):
        return kernel_or_xla(kernel, xla_form, *args)
    return xla_form(*args)


@jax.custom_vjp
def batch_moments(x):
    """`(mean, biased variance)` per channel of `x` over all but its last axis, float32 for any
    float x (on CPU, for a float32 x, one kernel pass); gradients are elementwise, in x's
    dtype."""
    return _float32_kernel(_moments_kernel, _moments_xla, x.reshape(-1, x.shape[-1]))


def _batch_moments_fwd(x):
    mean, var = batch_moments(x)
    return (mean, var), (x, mean)


def _batch_moments_bwd(residuals, cotangents):
    x, mean = residuals
    g_mean, g_var = cotangents
    n = x.size // x.shape[-1]
    return ((g_mean / n + (x.astype(jnp.float32) - mean) * (2 * g_var / n)).astype(x.dtype),)


batch_moments.defvjp(_batch_moments_fwd, _batch_moments_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, eps: float):
    """`(y, mean, var)`: batch norm over all but the last axis with the batch's statistics (float32;
    biased variance), y = (x - mean) * rsqrt(var + eps) * scale + bias computed in float32 and
    returned in x's dtype.

    On CPU the statistics are one multi-threaded kernel pass (`channel_stats.cc`), and
    the gradient is batch norm's closed form with its two per-channel sums from one more pass
    (`channel_stats.cc`): XLA:CPU wrote (x - mean)^2 and g * x out as full arrays to sum them,
    recomputing their producers into them.
    """
    return _batch_norm_train_fwd(x, scale, bias, eps)[0]


def _batch_norm_train_fwd(x, scale, bias, eps):
    mean, var = batch_moments(x)
    inv = lax.rsqrt(var + eps) * scale.astype(jnp.float32)
    y = (x.astype(jnp.float32) - mean) * inv + bias.astype(jnp.float32)
    return (y.astype(x.dtype), mean, var), (x, mean, var, scale)


def _batch_norm_train_bwd(eps, residuals, cotangents):
    x, mean, var, scale = residuals
    gy, g_mean, g_var = cotangents
    c = x.shape[-1]
    n = x.size // c
    sum_g, sum_gxc = _float32_kernel(_grad_sums_kernel, _grad_sums_xla, gy.reshape(-1, c), x.reshape(-1, c), mean)
    r = lax.rsqrt(var + eps)
    a = scale.astype(jnp.float32) * r
    # dx = a * (gy - mean(gy) - xhat * mean(gy * xhat)), plus what flows in through mean and var
    shift = -a * sum_g / n + g_mean / n
    slope = -a * r * r * sum_gxc / n + 2 * g_var / n
    gyf, xf = gy.astype(jnp.float32), x.astype(jnp.float32)
    dx = gyf * a + (shift + slope * -mean) + xf * slope
    return dx.astype(x.dtype), (sum_gxc * r).astype(scale.dtype), sum_g.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def batch_norm_eval(x, mean, var, scale, bias, eps: float):
    """Batch norm with running statistics, (x - mean) * rsqrt(var + eps) * scale + bias in x's
    dtype; the per-channel gradients through `leading_sum`. For ONNX converters
    (`dispatch.onnx_forms`) as x * s + t, which ONNX runtimes fold into the convolution before it."""
    inv = lax.rsqrt(var + eps) * scale
    if onnx_forms():
        return x * inv.astype(x.dtype) + (bias - mean * inv).astype(x.dtype)
    per_channel = lambda v: broadcast_leading(v.astype(x.dtype), x.shape)  # noqa: E731
    return (x - per_channel(mean)) * per_channel(inv) + per_channel(bias)
