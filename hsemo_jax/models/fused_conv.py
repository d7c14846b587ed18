"""A convolution with its batch norm (or bias), activation and skip connection as one CPU kernel in
eval mode: `conv_bn_act`.

1x1 convolutions go through `layers.pointwise` (`gemm.cc`'s HsemoPointwise), which applies a
squeeze-excite gate to the weights and the affine, activation and residual before its store: XLA
made one more pass over the output for them (B0 at batch 1: ~0.4 ms of ~8, NOTES.md). Small dense
convolutions (the stems of EfficientNet and MobileViT: 3x3, stride 2, 3 input channels, where
XLA:CPU's library convolution ran at ~27 GMAC/s) go through `HsemoConvAct`, an implicit GEMM with
the affine and SiLU before the store. Training-mode batch norm, other dtypes and other backends
use the plain layers; gradients come from the XLA form.
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


def _affine(conv: layers.Conv2d, bn: layers.BatchNorm | None):
    """(scale, shift) of bn(conv's bias + .) (eval mode), or (None, bias) without bn."""
    bias = None if conv.bias is None else conv.bias[...]
    if bn is None:
        return None, bias
    scale, shift = bn.affine()
    return scale, shift if bias is None else shift + bias * scale


def is_1x1(conv: layers.Conv2d) -> bool:
    """An unstrided, unpadded, ungrouped 1x1 convolution (a GEMM over channels, bias aside)."""
    return (conv.kernel.shape[:2] == (1, 1) and conv.groups == 1 and conv.strides == (1, 1)
            and conv.padding in (0, (0, 0), "SAME", "VALID"))


def conv_bn_act(conv: layers.Conv2d, bn: layers.BatchNorm | None, x, *, act: str | None = "silu",
                gate=None, residual=None):
    """act(bn(conv(x * gate))) + residual; bn None: conv alone (with its bias); act None, "silu"
    or "sigmoid"; gate (N, C_in) a per-sample squeeze-excite gate and residual (like the output)
    a skip connection, both for 1x1 convolutions only. One CPU kernel where `bn` is in eval mode
    (or absent), else the plain layers."""
    eval_mode = bn is None or bn.use_running_average
    if eval_mode and is_1x1(conv):
        scale, shift = _affine(conv, bn)
        return layers.conv1x1_fused(x, conv.kernel[...], gate=gate, scale=scale, shift=shift, residual=residual,
                                    act=act)
    assert gate is None or is_1x1(conv), "a gate only on a 1x1 convolution"
    strides = conv.strides
    if (eval_mode and bn is not None and conv.groups == 1 and conv.bias is None and strides[0] == strides[1]
            and act in (None, "silu") and x.dtype == conv.kernel.dtype == jnp.float32 and cpu_kernels.available()):
        k = conv.kernel.shape[:2]
        pads = layers._explicit_padding(conv.padding, x.shape[1:3], k, strides)
        scale, shift = bn.affine()
        static = (strides, pads, act == "silu")
        y = layers.kernel_with_xla_gradient(lambda *a: _kernel(*a, *static), lambda *a: _reference(*a, *static),
                                            x, conv.kernel[...], scale.astype(x.dtype), shift.astype(x.dtype))
    else:
        if gate is None:
            y = conv(x)
        else:  # training-mode batch norm after a gated 1x1 convolution
            y = layers.conv1x1_fused(x, conv.kernel[...], gate=gate,
                                      shift=None if conv.bias is None else conv.bias[...])
        y = layers.ACTIVATIONS[act](y if bn is None else bn(y))
    return y if residual is None else y + residual
