"""Convolutions with their batch norm (as a per-channel affine) and activation as one op: one
CPU kernel pass where it applies, the same arithmetic in XLA ops elsewhere.

- `depthwise_bn_act`: act(depthwise(silu(x * s_in + b_in) or x) * s_out + b_out) and the sums of
  the result over H and W (an MBConv middle and its squeeze-excite mean). On XLA:CPU this part of
  a block cost more than all of B0's GEMMs: XLA recomputed the input activation once per kernel
  tap (hsemo_jax/bench/NOTES.md); `fused_depthwise.cc` reads x once and writes y once.
- `expand_depthwise_bn_act`: the same after a 1x1 expansion of x, which the kernel computes row by
  row into the depthwise input where that pays, so the expanded tensor is never written.
- `depthwise_silu_input`: depthwise(silu(x * s + b)) for training, (s, b) from batch statistics;
  its gradient kernel rebuilds the activation from x instead of storing it.
- `conv_affine_act`: a small dense convolution (the stems: 3x3, stride 2, 3 input channels)
  with its affine and SiLU, an implicit GEMM on CPU.

Gradients come from the XLA forms unless said otherwise. Affines are (scale, shift) pairs of
per-channel vectors; the ops compute in x's dtype.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hsemo_jax.ops.conv import conv1x1, conv2d, conv2d_lax, depthwise_kernel_applies, explicit_padding, pair
from hsemo_jax.ops.dispatch import cpu_kernels, kernel_or_xla, with_xla_gradient


def _in_dtype(affine, x):
    """A per-channel (scale, shift) in x's dtype (a float32 affine would lift bfloat16
    activations to float32)."""
    return tuple(v.astype(x.dtype) for v in affine)


def _affine_act(x, scale, shift, act: bool):
    y = x * scale + shift
    return jax.nn.silu(y) if act else y


def _reference(x, kernel_hhc, in_scale, in_shift, out_scale, out_shift, strides, pads, in_act, out_act):
    h = _affine_act(x, in_scale, in_shift, True) if in_act else x
    y = conv2d(h, kernel_hhc[:, :, None, :], strides, pads, groups=x.shape[-1])
    y = _affine_act(y, out_scale, out_shift, out_act)
    return y, y.sum(axis=(1, 2))


def _out_hw(x, kernel_hhc, strides, pads):
    _, h, w, _ = x.shape
    k = kernel_hhc.shape[0]
    return (h + sum(pads[0]) - k) // strides[0] + 1, (w + sum(pads[1]) - k) // strides[1] + 1


def _kernel(x, kernel_hhc, in_scale, in_shift, out_scale, out_shift, strides, pads, in_act, out_act):
    return cpu_kernels().fused_depthwise(
        x, kernel_hhc, in_scale, in_shift, out_scale, out_shift, stride=strides[0], pt=pads[0][0],
        pl=pads[1][0], out_hw=_out_hw(x, kernel_hhc, strides, pads), in_act=in_act, out_act=out_act)


def _depthwise_geometry(x, kernel_hwio, strides, padding):
    strides = pair(strides)
    kernel_hhc = kernel_hwio[:, :, 0, :]
    return kernel_hhc, strides, explicit_padding(padding, x.shape[1:3], kernel_hhc.shape[:2], strides)


def depthwise_bn_act(x, kernel_hwio, strides, padding, out_affine, *, in_affine=None, act: bool = True):
    """`(y, sums)`: y = act(depthwise(silu(x * s_in + b_in) or x) * s_out + b_out), sums = y summed
    over H and W (N, C). kernel_hwio (k, k, 1, C); padding as `conv2d` takes it; act: SiLU or
    none."""
    kernel_hhc, strides, pads = _depthwise_geometry(x, kernel_hwio, strides, padding)
    c = x.shape[-1]
    in_act = in_affine is not None
    if not in_act:  # both forms ignore it then; it keeps one argument list
        in_affine = (jnp.ones((c,), x.dtype), jnp.zeros((c,), x.dtype))
    args = (x, kernel_hhc, *_in_dtype(in_affine, x), *_in_dtype(out_affine, x))
    static = (strides, pads, in_act, act)
    if depthwise_kernel_applies(x, kernel_hhc, strides):
        return with_xla_gradient(lambda *a: _kernel(*a, *static), lambda *a: _reference(*a, *static), *args)
    return _reference(*args, *static)


def _expand_reference(x, w_kn, in_scale, in_shift, kernel_hhc, out_scale, out_shift, strides, pads, act):
    e = conv1x1(x, w_kn[None, None], (1, 1))
    return _reference(e, kernel_hhc, in_scale, in_shift, out_scale, out_shift, strides, pads, True, act)


def _expand_kernel(x, w_kn, in_scale, in_shift, kernel_hhc, out_scale, out_shift, strides, pads, act):
    return cpu_kernels().expand_depthwise(
        x, w_kn, in_scale, in_shift, kernel_hhc, out_scale, out_shift, stride=strides[0], pt=pads[0][0],
        pl=pads[1][0], out_hw=_out_hw(x, kernel_hhc, strides, pads), out_act=act)


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


def expand_depthwise_bn_act(x, w_kn, in_affine, kernel_hwio, strides, padding, out_affine, *,
                            act: bool = True):
    """`(y, sums)` of `depthwise_bn_act(x @ w_kn, ..., in_affine=in_affine)`: a 1x1 expansion
    (w_kn: (C_in, C)), its affine and SiLU, the depthwise convolution, its affine and
    activation. In CPU inference of a high-resolution block one kernel computes the expansion
    row by row into the depthwise input."""
    kernel_hhc, strides, pads = _depthwise_geometry(x, kernel_hwio, strides, padding)
    in_affine = _in_dtype(in_affine, x)
    if _expansion_fuses(x, w_kn) and x.dtype == w_kn.dtype and depthwise_kernel_applies(x, kernel_hhc, strides):
        static = (strides, pads, act)
        args = (x, w_kn, *in_affine, kernel_hhc, *_in_dtype(out_affine, x))
        return with_xla_gradient(lambda *a: _expand_kernel(*a, *static),
                                 lambda *a: _expand_reference(*a, *static), *args)
    return depthwise_bn_act(conv1x1(x, w_kn[None, None], (1, 1)), kernel_hwio, strides, padding, out_affine,
                            in_affine=in_affine, act=act)


def _silu_input_reference(h, kernel_hhc, in_scale, in_shift, strides, pads):
    a = _affine_act(h, in_scale, in_shift, True).astype(h.dtype)  # a float32 affine: computed in float32
    return conv2d(a, kernel_hhc[:, :, None, :], strides, pads, groups=h.shape[-1])


def _silu_input_kernel(h, kernel_hhc, in_scale, in_shift, strides, pads):
    c = h.shape[-1]
    ones, zeros = jnp.ones((c,), h.dtype), jnp.zeros((c,), h.dtype)
    return _kernel(h, kernel_hhc, in_scale, in_shift, ones, zeros, strides, pads, True, False)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _silu_input(h, kernel_hhc, in_scale, in_shift, strides, pads):
    return kernel_or_xla(lambda *a: _silu_input_kernel(*a, strides, pads),
                         lambda *a: _silu_input_reference(*a, strides, pads), h, kernel_hhc, in_scale, in_shift)


def _silu_input_fwd(h, kernel_hhc, in_scale, in_shift, strides, pads):
    return _silu_input(h, kernel_hhc, in_scale, in_shift, strides, pads), (h, kernel_hhc, in_scale, in_shift)


def _silu_input_bwd(strides, pads, residuals, g):
    def kernel_form(h, kernel_hhc, in_scale, in_shift, g):  # (dh, dkernel, dscale, dshift)
        return cpu_kernels().depthwise_grad_silu(h, in_scale, in_shift, g, kernel_hhc,
                                                 stride=strides[0], pt=pads[0][0], pl=pads[1][0])

    def xla_form(h, kernel_hhc, in_scale, in_shift, g):
        _, vjp = jax.vjp(lambda *a: _silu_input_reference(*a, strides, pads), h, kernel_hhc, in_scale, in_shift)
        return vjp(g)

    return kernel_or_xla(kernel_form, xla_form, *residuals, g)


_silu_input.defvjp(_silu_input_fwd, _silu_input_bwd)


def depthwise_silu_input(x, kernel_hwio, strides, padding, in_affine):
    """depthwise(silu(x * s + b)), `in_affine` = (s, b) differentiable (e.g. from batch
    statistics). On CPU the forward is the fused kernel and the gradient one pass of
    `depthwise_grad.cc`'s SiLU variant, which rebuilds the activation from x (it is never
    stored). A float32 affine of a bfloat16 x (batch statistics) is applied in float32, like
    `batch_norm_train`, and its activation rounded to x's dtype for the convolution."""
    kernel_hhc, strides, pads = _depthwise_geometry(x, kernel_hwio, strides, padding)
    if depthwise_kernel_applies(x, kernel_hhc, strides):
        return _silu_input(x, kernel_hhc, *in_affine, strides, pads)
    return _silu_input_reference(x, kernel_hhc, *in_affine, strides, pads)


def _conv_reference(x, kernel_hwio, scale, shift, strides, pads, silu):
    y = conv2d_lax(x, kernel_hwio, strides, pads, 1) * scale + shift
    return jax.nn.silu(y) if silu else y


def _conv_kernel(x, kernel_hwio, scale, shift, strides, pads, silu):
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    return cpu_kernels().conv_act(xp, kernel_hwio, scale, shift, stride=strides[0], silu=silu)


def conv_affine_act(x, kernel_hwio, strides, padding, scale, shift, *, act: str | None = "silu"):
    """act(conv(x) * scale + shift) of a dense (ungrouped) convolution, act None or "silu"; on CPU
    (float32, equal strides) an implicit GEMM with the affine and SiLU before its store."""
    strides = pair(strides)
    pads = explicit_padding(padding, x.shape[1:3], kernel_hwio.shape[:2], strides)
    static = (strides, pads, act == "silu")
    args = (x, kernel_hwio, *_in_dtype((scale, shift), x))
    assert act in (None, "silu"), act
    if strides[0] == strides[1] and x.dtype == kernel_hwio.dtype == jnp.float32:
        return with_xla_gradient(lambda *a: _conv_kernel(*a, *static), lambda *a: _conv_reference(*a, *static),
                                 *args)
    return _conv_reference(*args, *static)
