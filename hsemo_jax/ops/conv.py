"""2-D convolutions, NHWC x HWIO -> NHWC, in the form each backend runs fastest.

Dense convolutions are `lax.conv` everywhere; 1x1 convolutions are matrix products
(`pointwise.matmul`). Grouped and depthwise convolutions are `lax.conv` on GPU/TPU and, on CPU,
sums of shifted multiply-adds with matching gradients (XLA:CPU's grouped convolution is ~10x
slower); the depthwise gradient is one CPU kernel pass where it applies.
"""
from __future__ import annotations

import functools
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from hsemo_jax.ops.dispatch import cpu_kernels, kernel_or_xla, onnx_forms, per_backend
from hsemo_jax.ops.pointwise import matmul
from hsemo_jax.ops.reduce import leading_sum

Padding = str | int | tuple[int, int] | Sequence[tuple[int, int]]
ConvImpl = Literal["auto", "lax", "shift"]


def pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def explicit_padding(padding: Padding, in_hw, kernel_hw, strides) -> tuple[tuple[int, int], ...]:
    """Padding as ((top, bottom), (left, right)), hashable (a static argument of the custom
    VJPs). "SAME" is TF/XLA same (extra pad bottom/right)."""
    if isinstance(padding, str):
        return tuple(tuple(p) for p in lax.padtype_to_pads(in_hw, kernel_hw, strides, padding.upper()))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    if isinstance(padding[0], int):
        return ((padding[0], padding[0]), (padding[1], padding[1]))
    return tuple(tuple(p) for p in padding)



def conv2d_lax(x_nhwc, kernel_hwio, strides, padding: Padding, groups: int):
    """Convolution with `lax.conv_general_dilated` (the GPU/TPU form)."""
    pads = explicit_padding(padding, x_nhwc.shape[1:3], kernel_hwio.shape[:2], strides)
    return lax.conv_general_dilated(
        x_nhwc, kernel_hwio, window_strides=strides, padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
    )


def _tap(xp, dy: int, dx: int, oh: int, ow: int, strides, channels: int):
    """xp[:, dy + i*sh, dx + j*sw, :channels] for i < oh, j < ow."""
    n, sh, sw = xp.shape[0], strides[0], strides[1]
    return lax.slice(xp, (0, dy, dx, 0), (n, dy + (oh - 1) * sh + 1, dx + (ow - 1) * sw + 1, channels),
                     (1, sh, sw, 1))


def _depthwise_sum(xp, kernel_hhc, strides, oh: int, ow: int):
    """sum over taps of tap(xp) * kernel[dy, dx]: one fused multiply-add loop per output."""
    kh, kw, c = kernel_hhc.shape
    out = None
    for dy in range(kh):
        for dx in range(kw):
            term = _tap(xp, dy, dx, oh, ow, strides, c) * kernel_hhc[dy, dx]
            out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_shift(x_nhwc, kernel_hhc, strides, pads):
    return _depthwise_fwd(x_nhwc, kernel_hhc, strides, pads)[0]


def _depthwise_fwd(x_nhwc, kernel_hhc, strides, pads):
    kh, kw, _ = kernel_hhc.shape
    xp = jnp.pad(x_nhwc, [(0, 0), pads[0], pads[1], (0, 0)])
    oh = (xp.shape[1] - kh) // strides[0] + 1
    ow = (xp.shape[2] - kw) // strides[1] + 1
    return _depthwise_sum(xp, kernel_hhc, strides, oh, ow), (xp, kernel_hhc)


def depthwise_kernel_applies(x, kernel_hhc, strides, sizes=(3, 5)) -> bool:
    """Whether the CPU kernels handle a depthwise convolution of x (or of an expansion of x):
    float32, channels a multiple of 16, a square kernel of one of `sizes`, equal strides of 1
    or 2. (Whether they are built is decided when the program is lowered for CPU.)"""
    k = kernel_hhc.shape
    return (x.dtype == jnp.float32 and kernel_hhc.dtype == jnp.float32 and k[-1] % 16 == 0
            and k[0] == k[1] and k[0] in sizes and strides[0] == strides[1] in (1, 2))


def _depthwise_grad_kernel(strides, pads, in_hw, xp, g, kernel):
    return cpu_kernels().depthwise_grad(xp, g, kernel, stride=strides[0], pt=pads[0][0], pl=pads[1][0],
                                      in_hw=in_hw)


def _depthwise_bwd(strides, pads, residuals, g):
    """On CPU one kernel pass (`depthwise_grad.cc`) where it applies, else shift-sums."""
    xp, kernel = residuals
    shift_form = functools.partial(_depthwise_grad_shift, strides, pads)
    if not depthwise_kernel_applies(xp, kernel, strides, sizes=(3, 5, 7)):
        return shift_form(xp, g, kernel)
    h, w = xp.shape[1] - sum(pads[0]), xp.shape[2] - sum(pads[1])
    return kernel_or_xla(functools.partial(_depthwise_grad_kernel, strides, pads, (h, w)), shift_form, xp, g, kernel)


def _depthwise_grad_shift(strides, pads, xp, g, kernel):
    """Gradients as shift-sums too (XLA's transpose of the forward pads and accumulates one
    full-size tensor per tap, ~10x slower on CPU). Input: the output gradient dilated by the
    stride and padded by k-1 is correlated with the flipped kernel (one fused loop). Kernel:
    per tap, sum over (n, i, j) of tap(xp) * g."""
    kh, kw, c = kernel.shape
    (sh, sw), (_, oh, ow, _) = strides, g.shape
    extra_h = xp.shape[1] - ((oh - 1) * sh + kh)
    extra_w = xp.shape[2] - ((ow - 1) * sw + kw)
    gd = lax.pad(g, jnp.zeros((), g.dtype), [(0, 0, 0), (kh - 1, kh - 1 + extra_h, sh - 1),
                                             (kw - 1, kw - 1 + extra_w, sw - 1), (0, 0, 0)])
    dxp = _depthwise_sum(gd, kernel[::-1, ::-1], (1, 1), xp.shape[1], xp.shape[2])
    h, w = xp.shape[1] - sum(pads[0]), xp.shape[2] - sum(pads[1])
    dx = lax.slice(dxp, (0, pads[0][0], pads[1][0], 0), (dxp.shape[0], pads[0][0] + h, pads[1][0] + w, c))
    dk = jnp.stack([jnp.stack([leading_sum(_tap(xp, dy, dx_, oh, ow, strides, c) * g)
                               for dx_ in range(kw)]) for dy in range(kh)])
    return dx, dk.astype(kernel.dtype)


_depthwise_shift.defvjp(_depthwise_fwd, _depthwise_bwd)


def conv2d_shift(x_nhwc, kernel_hwio, strides, padding: Padding, groups: int):
    """Grouped convolution as a sum of shifted, strided multiply-adds (the fast form on XLA:CPU).

    For each kernel tap (dy, dx) and each input channel `l` of a group, the padded input is sliced
    with the conv's stride and multiplied by that tap's per-output-channel weights. With one input
    channel per group (depthwise) this is kh*kw multiply-adds that XLA fuses into one loop, and
    the gradients are shift-sums as well (`_depthwise_bwd`); other grouped convolutions are
    differentiated as sums of depthwise ones (`_grouped_as_depthwise`).
    """
    n, h, w, cin = x_nhwc.shape
    kh, kw, cin_g, cout = kernel_hwio.shape
    pads = explicit_padding(padding, (h, w), (kh, kw), strides)
    if cin_g == 1 and cout == cin:
        return _depthwise_shift(x_nhwc, kernel_hwio[:, :, 0, :], tuple(strides), pads)
    return _grouped_shift(x_nhwc, kernel_hwio, tuple(strides), pads, groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _grouped_shift(x_nhwc, kernel_hwio, strides, pads, groups):
    """Inference form (the fastest there): channels as (group, position in group), input
    (G, cin_g) and output (G, cout_g), each input channel broadcast to its group's outputs."""
    n = x_nhwc.shape[0]
    kh, kw, cin_g, cout = kernel_hwio.shape
    xp = jnp.pad(x_nhwc, [(0, 0), pads[0], pads[1], (0, 0)])
    oh = (xp.shape[1] - kh) // strides[0] + 1
    ow = (xp.shape[2] - kw) // strides[1] + 1
    cout_g = cout // groups
    xg = xp.reshape(*xp.shape[:3], groups, cin_g)
    kg = kernel_hwio.reshape(kh, kw, cin_g, groups, cout_g)
    out = None
    for l in range(cin_g):
        for dy in range(kh):
            for dx in range(kw):
                tap = lax.slice(xg, (0, dy, dx, 0, l), (n, dy + (oh - 1) * strides[0] + 1,
                                                        dx + (ow - 1) * strides[1] + 1, groups, l + 1),
                                (1, strides[0], strides[1], 1, 1))
                term = tap * kg[dy, dx, l]
                out = term if out is None else out + term
    return out.reshape(n, oh, ow, cout)


def _grouped_as_depthwise(x_nhwc, kernel_hwio, strides, pads, groups):
    """The same convolution as a sum over l < cin_g of depthwise convolutions, the l-th of the
    l-th input channel of each output channel's group (broadcast within the group). Its gradient
    stays 4-D with channels innermost; the 5-D form's has a dimension of cout_g (2 in
    MobileFaceNet) innermost and made a MobileFaceNet train step ~2.5x slower."""
    n, h, w, _ = x_nhwc.shape
    cin_g, cout = kernel_hwio.shape[2:]
    xg = x_nhwc.reshape(n, h, w, groups, cin_g)
    out = None
    for l in range(cin_g):
        x_l = jnp.broadcast_to(xg[..., l:l + 1], (n, h, w, groups, cout // groups)).reshape(n, h, w, cout)
        term = _depthwise_shift(x_l, kernel_hwio[:, :, l, :], strides, pads)
        out = term if out is None else out + term
    return out


def _grouped_shift_fwd(x_nhwc, kernel_hwio, strides, pads, groups):
    """Under differentiation the forward takes the depthwise form as well (faster in training)."""
    return _grouped_as_depthwise(x_nhwc, kernel_hwio, strides, pads, groups), (x_nhwc, kernel_hwio)


def _grouped_shift_bwd(strides, pads, groups, residuals, g):
    _, vjp = jax.vjp(lambda x, k: _grouped_as_depthwise(x, k, strides, pads, groups), *residuals)
    return vjp(g)


_grouped_shift.defvjp(_grouped_shift_fwd, _grouped_shift_bwd)


def conv1x1(x_nhwc, kernel_hwio, strides):
    """A 1x1 convolution without padding as a matmul over channels (subsampled first if strided):
    one GEMM forward and backward, where a convolution's kernel gradient is a slow batch-reduction
    convolution on XLA:CPU. For ONNX a convolution (`dispatch.onnx_forms`)."""
    if onnx_forms():
        return conv2d_lax(x_nhwc, kernel_hwio, strides, 0, 1)
    sh, sw = strides
    if (sh, sw) != (1, 1):
        x_nhwc = x_nhwc[:, ::sh, ::sw]
    n, h, w, c = x_nhwc.shape
    return matmul(x_nhwc.reshape(n * h * w, c), kernel_hwio[0, 0]).reshape(n, h, w, -1)



def conv2d(x_nhwc, kernel_hwio, strides=(1, 1), padding: Padding = 0, groups: int = 1,
           impl: ConvImpl = "auto"):
    """2-D convolution, NHWC x HWIO -> NHWC.

    Grouped/depthwise convolutions pick their form per backend at lowering time
    (`dispatch.per_backend`): shifted multiply-adds on CPU, where XLA's grouped convolution is
    ~10x slower, and `lax.conv` elsewhere. Dense convolutions always use `lax.conv`.
    `impl` forces one form ("lax" or "shift"), e.g. for tests.
    """
    strides = pair(strides)
    if groups == 1 and kernel_hwio.shape[:2] == (1, 1) and padding in (0, (0, 0), "SAME", "VALID"):
        return conv1x1(x_nhwc, kernel_hwio, strides)
    if groups == 1 or impl == "lax":
        return conv2d_lax(x_nhwc, kernel_hwio, strides, padding, groups)
    if impl == "shift":
        return conv2d_shift(x_nhwc, kernel_hwio, strides, padding, groups)
    return per_backend(lambda x, k: conv2d_shift(x, k, strides, padding, groups),
                       lambda x, k: conv2d_lax(x, k, strides, padding, groups), x_nhwc, kernel_hwio)
