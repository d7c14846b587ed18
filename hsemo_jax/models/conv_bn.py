"""A convolution module with its batch norm and activation as one `ops` call.

In eval mode a batch norm is a per-channel affine, so `conv -> bn -> act` (with a squeeze-excite
gate before a 1x1 convolution and a skip connection after it) is one fused op; in training the
batch norm needs its batch's statistics, and the modules run one after the other (with the
fused training op where one exists). Which backend form an op takes is `ops`' business.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from hsemo_jax import ops
from hsemo_jax.models.layers import BatchNorm, Conv2d


def is_1x1(conv: Conv2d) -> bool:
    """An unstrided, unpadded, ungrouped 1x1 convolution (a GEMM over channels, bias aside)."""
    return (conv.kernel.shape[:2] == (1, 1) and conv.groups == 1 and conv.strides == (1, 1)
            and conv.padding in (0, (0, 0), "SAME", "VALID"))


def _linear_1x1(conv: Conv2d) -> bool:
    """An unstrided bias-free 1x1 convolution: a matrix product over channels."""
    return conv.bias is None and is_1x1(conv)


def _affine(conv: Conv2d, bn: BatchNorm | None):
    """(scale, shift) of bn(conv's bias + .) in eval mode, or (None, bias) without bn."""
    bias = None if conv.bias is None else conv.bias[...]
    if bn is None:
        return None, bias
    scale, shift = bn.affine()
    return scale, shift if bias is None else shift + bias * scale


def conv_bn_act(conv: Conv2d, bn: BatchNorm | None, x, *, act: str | None = "silu", gate=None, residual=None):
    """act(bn(conv(x * gate))) + residual; bn None: conv alone (with its bias); act None, "silu"
    or "sigmoid"; gate (N, C_in) a per-sample squeeze-excite gate and residual (like the output)
    a skip connection, both for 1x1 convolutions only."""
    assert gate is None or is_1x1(conv), "a gate only on a 1x1 convolution"
    if bn is None or bn.use_running_average:
        scale, shift = _affine(conv, bn)
        if is_1x1(conv):
            return ops.conv1x1_fused(x, conv.kernel[...], gate=gate, scale=scale, shift=shift, residual=residual,
                                     act=act)
        if bn is not None and conv.groups == 1 and act in (None, "silu"):
            y = ops.conv_affine_act(x, conv.kernel[...], conv.strides, conv.padding, scale, shift, act=act)
            return y if residual is None else y + residual
    if gate is None:
        y = conv(x)
    else:  # training-mode batch norm after a gated 1x1 convolution
        y = ops.conv1x1_fused(x, conv.kernel[...], gate=gate, shift=None if conv.bias is None else conv.bias[...])
    y = ops.ACTIVATIONS[act](y if bn is None else bn(y))
    return y if residual is None else y + residual


def depthwise_bn_silu(conv: Conv2d, bn: BatchNorm, x, in_bn: BatchNorm | None = None):
    """`(y, sums of y over H, W or None)`: y = silu(bn(conv(x))) of a depthwise `conv`, x first
    through silu(in_bn(.)) if given (an MBConv middle)."""
    if conv.bias is None and bn.use_running_average and (in_bn is None or in_bn.use_running_average):
        return ops.depthwise_bn_act(x, conv.kernel[...], conv.strides, conv.padding, bn.affine(),
                                    in_affine=None if in_bn is None else in_bn.affine())
    if conv.bias is None and in_bn is not None and not in_bn.use_running_average:
        d = ops.depthwise_silu_input(x, conv.kernel[...], conv.strides, conv.padding, in_bn.batch_affine(x))
        return jax.nn.silu(bn(d)), None
    if in_bn is not None:
        x = jax.nn.silu(in_bn(x))
    return jax.nn.silu(bn(conv(x))), None


def _composed(before, w_kn, scale, shift):
    """The expansion (w_kn, then bn1's scale and shift) of x0 @ w0 * s0 + t0, `before` = (conv,
    bn) in eval mode, as one map of x0: (w0 * s0) @ w_kn, shift + (t0 @ w_kn) * scale. Two linear
    1x1 convolutions in a row are one; from constant weights XLA computes it at compile time.
    Composed in float32 (the batch norms' statistics are), the matrix rounded to w_kn's dtype
    (bfloat16 under the trainer's compute dtype) once."""
    conv0, bn0 = before
    s0, t0 = bn0.affine()
    dot = functools.partial(jnp.matmul, precision=lax.Precision.HIGHEST)
    w0, w1 = conv0.kernel[...][0, 0].astype(jnp.float32), w_kn.astype(jnp.float32)
    return dot(w0 * s0, w1).astype(w_kn.dtype), shift + dot(t0, w1) * scale


def expand_depthwise_bn_silu(conv_pw: Conv2d, bn1: BatchNorm, conv_dw: Conv2d, bn2: BatchNorm, x, *,
                             before=None):
    """`(y, sums of y over H, W or None)` of an MBConv's expansion and middle,
    y = silu(bn2(conv_dw(silu(bn1(conv_pw(x)))))). `before`: (conv, bn), a 1x1 convolution and
    batch norm without activation that x has yet to go through (the previous block's projection,
    when nothing else reads its output); in eval mode composed with the expansion into one 1x1
    convolution, so that neither the projection's pass nor its output exist (MobileViT's
    112x112x96 after its first block)."""
    # the eval-mode forms: batch norms folded into per-channel affines, the expansion a matrix
    folded = (bn1.use_running_average and bn2.use_running_average and _linear_1x1(conv_pw)
              and conv_dw.bias is None)
    if before is not None and not (folded and before[1].use_running_average and _linear_1x1(before[0])):
        x, before = conv_bn_act(*before, x, act=None), None
    if not folded:
        return depthwise_bn_silu(conv_dw, bn2, conv_pw(x), in_bn=bn1)
    w_kn = conv_pw.kernel[...][0, 0]
    scale, shift = bn1.affine()
    if before is not None:
        w_kn, shift = _composed(before, w_kn, scale, shift)
    return ops.expand_depthwise_bn_act(x, w_kn, (scale, shift), conv_dw.kernel[...], conv_dw.strides,
                                       conv_dw.padding, bn2.affine())
