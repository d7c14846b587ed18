"""Batch normalization's training statistics and gradient: on CPU one kernel pass each
(`channel_stats.cc`), elsewhere XLA reductions."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from hsemo_jax.ops.dispatch import cpu_kernels, kernel_or_xla
from hsemo_jax.ops.reduce import leading_sum


def _moments_kernel(x_mc):
    return cpu_kernels().channel_moments(x_mc)


def _grad_sums_kernel(g_mc, x_mc, mean):
    return cpu_kernels().channel_grad_sums(g_mc, x_mc, mean)


def _moments_xla(x_mc):
    n = x_mc.shape[0]
    mean = leading_sum(x_mc) / n
    return mean, leading_sum(jnp.square(x_mc - mean)) / n


def _grad_sums_xla(g_mc, x_mc, mean):
    return leading_sum(g_mc), leading_sum(g_mc * (x_mc - mean))



@jax.custom_vjp
def batch_moments(x):
    """`(mean, biased variance)` per channel of float32 `x` over all but its last axis, on CPU in
    one kernel pass; gradients are elementwise."""
    return kernel_or_xla(_moments_kernel, _moments_xla, x.reshape(-1, x.shape[-1]))


def _batch_moments_fwd(x):
    mean, var = batch_moments(x)
    return (mean, var), (x, mean)


def _batch_moments_bwd(residuals, cotangents):
    x, mean = residuals
    g_mean, g_var = cotangents
    n = x.size // x.shape[-1]
    return (g_mean / n + (x - mean) * (2 * g_var / n),)


batch_moments.defvjp(_batch_moments_fwd, _batch_moments_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, eps: float):
    """`(y, mean, var)`: batch norm over all but the last axis with the batch's statistics (float32;
    biased variance), y = (x - mean) * rsqrt(var + eps) * scale + bias in x's dtype.

    On CPU the statistics are one multi-threaded kernel pass (`channel_stats.cc`), and
    the gradient is batch norm's closed form with its two per-channel sums from one more pass
    (`channel_stats.cc`): XLA:CPU wrote (x - mean)^2 and g * x out as full arrays to sum them,
    recomputing their producers into them.
    """
    return _batch_norm_train_fwd(x, scale, bias, eps)[0]


def _batch_norm_train_fwd(x, scale, bias, eps):
    mean, var = batch_moments(x.astype(jnp.float32))
    inv = lax.rsqrt(var + eps) * scale
    y = (x - mean.astype(x.dtype)) * inv.astype(x.dtype) + bias.astype(x.dtype)
    return (y, mean, var), (x, mean, var, scale)


def _batch_norm_train_bwd(eps, residuals, cotangents):
    x, mean, var, scale = residuals
    gy, g_mean, g_var = cotangents
    c = x.shape[-1]
    n = x.size // c
    xf = x.astype(jnp.float32).reshape(-1, c)
    sum_g, sum_gxc = kernel_or_xla(_grad_sums_kernel, _grad_sums_xla,
                             gy.astype(jnp.float32).reshape(-1, c), xf, mean)
    r = lax.rsqrt(var + eps)
    a = scale * r
    # dx = a * (gy - mean(gy) - xhat * mean(gy * xhat)), plus what flows in through mean and var
    shift = -a * sum_g / n + g_mean / n
    slope = -a * r * r * sum_gxc / n + 2 * g_var / n
    dx = gy * a.astype(gy.dtype) + (shift + slope * -mean).astype(gy.dtype) + x * slope.astype(gy.dtype)
    return dx.astype(x.dtype), (sum_gxc * r).astype(scale.dtype), sum_g.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)
