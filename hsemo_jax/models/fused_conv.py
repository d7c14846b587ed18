"""A small dense convolution + batch norm (+ SiLU) as one CPU kernel in eval mode: the stems of
EfficientNet and MobileViT (3x3, stride 2, 3 input channels).

XLA:CPU's library convolution with 3 input channels ran B0's stem at ~27 GMAC/s, ~7% of a batch-1
forward, and its BN + SiLU took another pass (hsemo_jax/bench/NOTES.md). `gemm.cc`'s
`HsemoConvAct` computes it as an implicit GEMM with the affine and SiLU applied before the store.
Training, other dtypes and other backends use the plain layers; gradients come from the XLA form.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hsemo_jax.models import cpu_kernels, layers


def _reference(x, kernel_hwio, scale, shift, strides, pads, silu):
    y = layers.conv2d_lax(x, kernel_hwio, strides, pads, 1) * scale + shift
    return jax.nn.silu(y) if silu else y


def _kernel(x, kernel_hwio, scale, shift, strides, pads, silu):
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    return cpu_kernels.conv_act(xp, kernel_hwio, scale, shift, stride=strides[0], silu=silu)


def conv_bn_act(conv: layers.Conv2d, bn: layers.BatchNorm, x, *, silu: bool = True):
    """silu?(bn(conv(x))) for a dense, bias-free `conv` with equal strides; one CPU kernel in
    eval mode (float32, the kernels built), else the plain layers."""
    strides = conv.strides
    if (conv.groups == 1 and conv.bias is None and bn.use_running_average and strides[0] == strides[1]
            and x.dtype == conv.kernel.dtype == jnp.float32 and cpu_kernels.available()):
        k = conv.kernel.shape[:2]
        pads = layers._explicit_padding(conv.padding, x.shape[1:3], k, strides)
        scale, shift = bn.affine()
        static = (strides, pads, silu)
        return layers.kernel_with_xla_gradient(lambda *a: _kernel(*a, *static), lambda *a: _reference(*a, *static),
                                               x, conv.kernel[...], scale.astype(x.dtype), shift.astype(x.dtype))
    y = bn(conv(x))
    return jax.nn.silu(y) if silu else y
