"""Depthwise convolution + batch norm + SiLU as one CPU kernel, for EfficientNet's and MobileViT's
inverted-residual blocks.

On XLA:CPU the MBConv middle, `silu(bn2(depthwise(silu(bn1(h)))))` and then the squeeze-excite
mean, costs more than all of B0's GEMMs: XLA recomputes the input activation once per kernel tap
and runs its loops far below the cores' speed (hsemo_jax/bench/NOTES.md). `fused_depthwise.cc`
does it in one pass, reading `h` once and writing `y` and the per-channel sums of `y`; it is built
on first use (`cpu_kernels`).

`depthwise_bn_act` picks its form per backend at lowering time: the kernel on CPU where it
applies (float32, channels a multiple of 16, kernel 3 or 5, stride 1 or 2, the library built),
the same arithmetic in XLA ops elsewhere. Gradients always come from the XLA form.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from hsemo_jax.models import cpu_kernels, fused_conv, layers


def _in_dtype(affine, x):
    """A per-channel (scale, shift) in x's dtype: the ops compute in it, as `BatchNorm` does
    (a float32 affine would lift bfloat16 activations to float32)."""
    return tuple(v.astype(x.dtype) for v in affine)


def _affine_act(x, scale, shift, act: bool):
    y = x * scale + shift
    return jax.nn.silu(y) if act else y


def _reference(x, kernel_hhc, in_scale, in_shift, out_scale, out_shift, strides, pads, in_act, out_act):
    """The same arithmetic in XLA ops (any backend; the convolution picks its own form)."""
    h = _affine_act(x, in_scale, in_shift, True) if in_act else x
    y = layers.conv2d(h, kernel_hhc[:, :, None, :], strides, pads, groups=x.shape[-1])
    y = _affine_act(y, out_scale, out_shift, out_act)
    return y, y.sum(axis=(1, 2))


def _out_hw(x, kernel_hhc, strides, pads):
    _, h, w, _ = x.shape
    k = kernel_hhc.shape[0]
    return (h + sum(pads[0]) - k) // strides[0] + 1, (w + sum(pads[1]) - k) // strides[1] + 1


def _kernel(x, kernel_hhc, in_scale, in_shift, out_scale, out_shift, strides, pads, in_act, out_act):
    out_hw = _out_hw(x, kernel_hhc, strides, pads)
    return cpu_kernels.fused_depthwise(x, kernel_hhc, in_scale, in_shift, out_scale, out_shift,
                                       stride=strides[0], pt=pads[0][0], pl=pads[1][0], out_hw=out_hw,
                                       in_act=in_act, out_act=out_act)


def _kernel_applies(x, kernel_hhc, strides) -> bool:
    return cpu_kernels.depthwise_applies(x, kernel_hhc, strides, sizes=(3, 5))


def depthwise_bn_act(x, kernel_hwio, strides, padding, out_affine, *, in_affine=None,
                     act: bool = True):
    """`(y, sums)`: y = act(depthwise(silu(x*s_in+b_in) or x) * s_out + b_out), sums over H, W.

    kernel_hwio: (k, k, 1, C) as `layers.Conv2d` holds it; padding as `layers.Conv2d` takes it;
    `out_affine` / `in_affine`: per-channel (scale, shift), e.g. `BatchNorm.affine()`.
    """
    strides = layers._pair(strides)
    kernel_hhc = kernel_hwio[:, :, 0, :]
    pads = layers._explicit_padding(padding, x.shape[1:3], kernel_hhc.shape[:2], strides)
    c = x.shape[-1]
    in_act = in_affine is not None
    if not in_act:  # both forms ignore it then; it keeps one argument list
        in_affine = (jnp.ones((c,), x.dtype), jnp.zeros((c,), x.dtype))
    args = (x, kernel_hhc, *_in_dtype(in_affine, x), *_in_dtype(out_affine, x))
    static = (strides, pads, in_act, act)
    if _kernel_applies(x, kernel_hhc, strides):
        return layers.kernel_with_xla_gradient(lambda *a: _kernel(*a, *static),
                                               lambda *a: _reference(*a, *static), *args)
    return _reference(*args, *static)


def _expand_reference(x, w_kn, in_scale, in_shift, kernel_hhc, out_scale, out_shift, strides, pads, act):
    e = layers.conv1x1(x, w_kn[None, None], (1, 1))
    return _reference(e, kernel_hhc, in_scale, in_shift, out_scale, out_shift, strides, pads, True, act)


def _expand_kernel(x, w_kn, in_scale, in_shift, kernel_hhc, out_scale, out_shift, strides, pads, act):
    out_hw = _out_hw(x, kernel_hhc, strides, pads)
    return cpu_kernels.expand_depthwise(x, w_kn, in_scale, in_shift, kernel_hhc, out_scale, out_shift,
                                        stride=strides[0], pt=pads[0][0], pl=pads[1][0], out_hw=out_hw,
                                        out_act=act)


# The expansion runs inside the depthwise kernel where the expanded activation of an image is at
# least _EXPAND_MIN_RATIO times the expansion weights (B0's blocks at 112-28 pixels, MobileViT's at
# 112-56) and the weights stay in L2 while the rows stream. Elsewhere (B0 from 14x14: ratio 2.5 and
# less) the kernel would re-read the weights for every input row, against once per block of rows in
# the separate GEMM: fusing all of B0's blocks ran batch 32 5% slower (hsemo_jax/bench/NOTES.md).
_EXPAND_MIN_RATIO = 8
_EXPAND_MAX_BYTES = 512 * 1024


def _expansion_fuses(x, w_kn) -> bool:
    _, h, w, cin = x.shape
    return h * w >= _EXPAND_MIN_RATIO * cin and w_kn.size * w_kn.dtype.itemsize <= _EXPAND_MAX_BYTES


def _linear_1x1(conv: layers.Conv2d) -> bool:
    """An unstrided bias-free 1x1 convolution: a matrix product over channels."""
    return conv.bias is None and fused_conv.is_1x1(conv)


def _composed(before, w_kn, scale, shift):
    """The expansion (w_kn, then bn1's scale and shift) of x0 @ w0 * s0 + t0, `before` = (conv,
    bn) in eval mode, as one map of x0: (w0 * s0) @ w_kn, shift + (t0 @ w_kn) * scale. Two linear
    1x1 convolutions in a row are one; from constant weights XLA computes it at compile time."""
    conv0, bn0 = before
    s0, t0 = bn0.affine()
    dot = functools.partial(jnp.matmul, precision=lax.Precision.HIGHEST)
    return dot(conv0.kernel[...][0, 0] * s0, w_kn), shift + dot(t0, w_kn) * scale


def expand_depthwise_bn_silu(conv_pw: layers.Conv2d, bn1: layers.BatchNorm, conv_dw: layers.Conv2d,
                             bn2: layers.BatchNorm, x, *, before=None):
    """`(y, sums of y over H, W or None)` of an MBConv's expansion and middle,
    y = silu(bn2(conv_dw(silu(bn1(conv_pw(x)))))). In CPU inference of a high-resolution block
    (`_expansion_fuses`), one kernel that computes the expansion row by row into the depthwise
    convolution's input, so the expanded tensor is never written; otherwise `depthwise_bn_silu` of
    `conv_pw(x)`. `before`: (conv, bn), a 1x1 convolution and batch norm without activation that x
    has yet to go through (the previous block's projection, when nothing else reads its output);
    in eval mode composed with the expansion into one 1x1 convolution, so that neither the
    projection's pass nor its output exist (MobileViT's 112x112x96 after its first block)."""
    # the eval-mode forms: batch norms folded into per-channel affines, the expansion a matrix
    folded = (bn1.use_running_average and bn2.use_running_average and _linear_1x1(conv_pw)
              and conv_dw.bias is None)
    if before is not None and not (folded and before[1].use_running_average and _linear_1x1(before[0])):
        x, before = fused_conv.conv_bn_act(*before, x, act=None), None
    if not folded:
        return depthwise_bn_silu(conv_dw, bn2, conv_pw(x), in_bn=bn1)
    w_kn = conv_pw.kernel[...][0, 0]
    scale, shift = bn1.affine()
    if before is not None:
        w_kn, shift = _composed(before, w_kn, scale, shift)
    kernel_hhc = conv_dw.kernel[...][:, :, 0, :]
    strides = layers._pair(conv_dw.strides)
    in_affine = _in_dtype((scale, shift), x)
    if _expansion_fuses(x, w_kn) and x.dtype == w_kn.dtype and _kernel_applies(x, kernel_hhc, strides):
        pads = layers._explicit_padding(conv_dw.padding, x.shape[1:3], kernel_hhc.shape[:2], strides)
        static = (strides, pads, True)
        args = (x, w_kn, *in_affine, kernel_hhc, *_in_dtype(bn2.affine(), x))
        return layers.kernel_with_xla_gradient(lambda *a: _expand_kernel(*a, *static),
                                               lambda *a: _expand_reference(*a, *static), *args)
    return depthwise_bn_act(layers.conv1x1(x, w_kn[None, None], (1, 1)), conv_dw.kernel[...], conv_dw.strides,
                            conv_dw.padding, bn2.affine(), in_affine=in_affine)


def _silu_input_reference(h, kernel_hhc, in_scale, in_shift, strides, pads):
    a = _affine_act(h, in_scale, in_shift, True)
    return layers.conv2d(a, kernel_hhc[:, :, None, :], strides, pads, groups=h.shape[-1])


def _silu_input_kernel(h, kernel_hhc, in_scale, in_shift, strides, pads):
    c = h.shape[-1]
    ones, zeros = jnp.ones((c,), h.dtype), jnp.zeros((c,), h.dtype)
    return _kernel(h, kernel_hhc, in_scale, in_shift, ones, zeros, strides, pads, True, False)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _silu_input(h, kernel_hhc, in_scale, in_shift, strides, pads):
    return lax.platform_dependent(
        h, kernel_hhc, in_scale, in_shift,
        cpu=lambda *a: _silu_input_kernel(*a, strides, pads),
        default=lambda *a: _silu_input_reference(*a, strides, pads))


def _silu_input_fwd(h, kernel_hhc, in_scale, in_shift, strides, pads):
    return _silu_input(h, kernel_hhc, in_scale, in_shift, strides, pads), (h, kernel_hhc, in_scale, in_shift)


def _silu_input_bwd(strides, pads, residuals, g):
    def kernel_form(h, kernel_hhc, in_scale, in_shift, g):  # (dh, dkernel, dscale, dshift)
        return cpu_kernels.depthwise_grad_silu(h, in_scale, in_shift, g, kernel_hhc,
                                               stride=strides[0], pt=pads[0][0], pl=pads[1][0])

    def xla_form(h, kernel_hhc, in_scale, in_shift, g):
        _, vjp = jax.vjp(lambda *a: _silu_input_reference(*a, strides, pads), h, kernel_hhc, in_scale, in_shift)
        return vjp(g)

    return lax.platform_dependent(*residuals, g, cpu=kernel_form, default=xla_form)


_silu_input.defvjp(_silu_input_fwd, _silu_input_bwd)


def depthwise_silu_input(x, kernel_hwio, strides, padding, in_affine):
    """depthwise(silu(x * s + b)) for training, `in_affine` = (s, b) differentiable (e.g. from
    batch statistics, `BatchNorm.batch_affine`). On CPU the forward is the fused kernel and the
    gradient one pass of `cpu_kernels.depthwise_grad_silu`, which rebuilds the activation from x
    (it is never stored); elsewhere XLA ops."""
    strides = layers._pair(strides)
    kernel_hhc = kernel_hwio[:, :, 0, :]
    pads = layers._explicit_padding(padding, x.shape[1:3], kernel_hhc.shape[:2], strides)
    in_affine = _in_dtype(in_affine, x)
    if _kernel_applies(x, kernel_hhc, strides):
        return _silu_input(x, kernel_hhc, *in_affine, strides, pads)
    return _silu_input_reference(x, kernel_hhc, *in_affine, strides, pads)


def depthwise_bn_silu(conv: layers.Conv2d, bn: layers.BatchNorm, x,
                      in_bn: layers.BatchNorm | None = None):
    """silu(bn(conv(x))) of a depthwise `conv` (an MBConv middle), x first through silu(in_bn(.))
    if given; `(y, sums of y over H, W or None)`. In eval mode one fused CPU kernel
    (`depthwise_bn_act`); in training with `in_bn` the kernel pair of `depthwise_silu_input` (on
    CPU) and `bn` as a layer; else the plain layers."""
    if conv.bias is None and bn.use_running_average and (in_bn is None or in_bn.use_running_average):
        return depthwise_bn_act(x, conv.kernel[...], conv.strides, conv.padding, bn.affine(),
                                in_affine=None if in_bn is None else in_bn.affine())
    if conv.bias is None and in_bn is not None and not in_bn.use_running_average:
        d = depthwise_silu_input(x, conv.kernel[...], conv.strides, conv.padding, in_bn.batch_affine(x))
        return jax.nn.silu(bn(d)), None
    if in_bn is not None:
        x = jax.nn.silu(in_bn(x))
    return jax.nn.silu(bn(conv(x))), None
