"""Building blocks shared by the backbones (NHWC, PyTorch-equivalent semantics).

Parameter leaves use Flax names (`kernel`, `scale`, `mean`, `var`, `alpha`); the torch names they
come from are mapped in `hsemo_jax.convert.keymaps`. Module trees mirror the PyTorch attribute
trees (`nnx.List` where torch has `nn.Sequential`/`nn.ModuleList`) so that a torch key such as
`layers.2.layers.1.layers.0.weight` names the same parameter here.

Train/eval follows NNX: `model.eval()` (the default after construction) uses running statistics,
`model.train()` uses batch statistics and updates the running ones with PyTorch's momentum rule.
"""
from __future__ import annotations

import functools
import math
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from flax import nnx

from hsemo_jax.models import cpu_kernels

Padding = str | int | tuple[int, int] | Sequence[tuple[int, int]]
ConvImpl = Literal["auto", "lax", "shift"]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _explicit_padding(padding: Padding, in_hw, kernel_hw, strides) -> tuple[tuple[int, int], ...]:
    """Padding as ((top, bottom), (left, right)), hashable (a static argument of the custom
    VJPs). "SAME" is TF/XLA same (extra pad bottom/right)."""
    if isinstance(padding, str):
        return tuple(tuple(p) for p in lax.padtype_to_pads(in_hw, kernel_hw, strides, padding.upper()))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    if isinstance(padding[0], int):
        return ((padding[0], padding[0]), (padding[1], padding[1]))
    return tuple(tuple(p) for p in padding)


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
    out = lax.platform_dependent(flat, cpu=_gemv_sum, default=lambda v: v.sum(axis=0))
    return out.reshape(trailing)


def spatial_mean(x_nhwc):
    """Mean over H and W (global average pooling), on CPU as per-sample matrix-vector products
    with ones, as `leading_sum` (EfficientNet's head, 7x7x1280: XLA's reduction took ~40 us of a
    ~8 ms batch-1 call)."""
    n, h, w, c = x_nhwc.shape
    flat = x_nhwc.reshape(n, h * w, c)

    def gemv(v):
        ones = jnp.full((h * w,), 1 / (h * w), v.dtype)
        return lax.dot_general(ones, v, (((0,), (1,)), ((), ())), precision=lax.Precision.HIGHEST)

    return lax.platform_dependent(flat, cpu=gemv, default=lambda v: v.mean(axis=1))


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


def conv2d_lax(x_nhwc, kernel_hwio, strides, padding: Padding, groups: int):
    """Convolution with `lax.conv_general_dilated` (the GPU/TPU form)."""
    pads = _explicit_padding(padding, x_nhwc.shape[1:3], kernel_hwio.shape[:2], strides)
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


def _depthwise_bwd(strides, pads, residuals, g):
    """On CPU one kernel pass (`cpu_kernels.depthwise_grad`) where it applies, else shift-sums."""
    xp, kernel = residuals
    h, w = xp.shape[1] - sum(pads[0]), xp.shape[2] - sum(pads[1])
    if not cpu_kernels.depthwise_applies(xp, kernel, strides, sizes=(3, 5, 7)):
        return _depthwise_grad_shift(strides, pads, xp, g, kernel)
    kernel_form = functools.partial(cpu_kernels.depthwise_grad, stride=strides[0], pt=pads[0][0],
                                    pl=pads[1][0], in_hw=(h, w))
    return lax.platform_dependent(xp, g, kernel, cpu=kernel_form,
                                  default=functools.partial(_depthwise_grad_shift, strides, pads))


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
    pads = _explicit_padding(padding, (h, w), (kh, kw), strides)
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
    convolution on XLA:CPU."""
    sh, sw = strides
    if (sh, sw) != (1, 1):
        x_nhwc = x_nhwc[:, ::sh, ::sw]
    n, h, w, c = x_nhwc.shape
    return _matmul(x_nhwc.reshape(n * h * w, c), kernel_hwio[0, 0]).reshape(n, h, w, -1)


@jax.custom_vjp
def _matmul(x_mc, w_cd):
    """x @ w, with the weight gradient written as a dot with a batch dimension of 1. JAX's own
    transpose gives the same dot without it, for which XLA:CPU lays the output gradient out
    transposed, by a copy fusion that recomputes its producer (B0 train step 6.4 -> 10.2 img/s,
    MobileFaceNet 13.4 -> 19.1 at batch 32; NOTES.md). Where no gradient is taken (inference)
    the CPU forward is `gemm.cc` (float32; faster than XLA's Eigen GEMM on every 1x1 convolution
    of the backbones); a differentiated forward keeps Eigen's, which ran B0's train step as fast
    or faster in A/B runs."""
    if x_mc.dtype == w_cd.dtype == jnp.float32:
        return _on_cpu(cpu_kernels.pointwise, jnp.matmul, x_mc, w_cd)
    return x_mc @ w_cd


def _matmul_fwd(x_mc, w_cd):
    return x_mc @ w_cd, (x_mc, w_cd)


def _matmul_bwd(residuals, g_md):
    x_mc, w_cd = residuals
    dx = (g_md @ w_cd.T).astype(x_mc.dtype)
    dw = lax.dot_general(x_mc[None], g_md[None], (((1,), (1,)), ((0,), (0,))))[0]
    return dx, dw.astype(w_cd.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


ACTIVATIONS = {None: lambda y: y, "silu": jax.nn.silu, "sigmoid": jax.nn.sigmoid}


def _pointwise_xla(act, x_mk, w_kn, gate_sk, scale, shift, residual):
    if gate_sk is not None:
        x_mk = (x_mk.reshape(gate_sk.shape[0], -1, x_mk.shape[1]) * gate_sk[:, None]).reshape(x_mk.shape)
    y = _matmul(x_mk, w_kn)
    if scale is not None:
        y = y * broadcast_leading(scale, y.shape)
    if shift is not None:
        y = y + broadcast_leading(shift, y.shape)
    y = ACTIVATIONS[act](y)
    return y if residual is None else y + residual


def _pointwise_kernel(act, x_mk, w_kn, gate_sk, scale, shift, residual):
    if scale is None and shift is not None:  # numpy constants: XLA would compute a broadcast per call
        scale = np.ones(shift.shape, np.float32)
    elif scale is not None and shift is None:
        shift = np.zeros(scale.shape, np.float32)
    return cpu_kernels.pointwise(x_mk, w_kn, gate_sk, scale=scale, shift=shift, residual=residual, act=act)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _pointwise(act, *args):
    return _on_cpu(functools.partial(_pointwise_kernel, act), functools.partial(_pointwise_xla, act), *args)


def _pointwise_fwd(act, *args):  # differentiated: the XLA form (its matmul Eigen's, `_matmul_fwd`)
    return jax.vjp(functools.partial(_pointwise_xla, act), *args)


def _pointwise_bwd(act, vjp, g):
    return vjp(g)


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def pointwise(x_mk, w_kn, *, gate=None, scale=None, shift=None, residual=None, act=None):
    """act(((x * gate) @ w) * scale + shift) + residual over the rows of x (M, K), each part
    optional: gate (S, K) scales the rows of sample s (M / S rows each; squeeze-excite), scale and
    shift (N,) are a folded batch norm or a bias (scale None: no affine; shift None: no shift),
    act None / "silu" / "sigmoid", residual (M, N) a skip connection. In CPU inference (float32)
    one pass of `gemm.cc` that applies the gate to the weights and the rest before its store, where
    XLA made a pass over x for the gate and one more over the output for the rest; elsewhere and
    differentiated, the XLA form. scale and shift compute in x's dtype (float32 batch-norm
    statistics do not lift bfloat16 activations)."""
    scale, shift = (None if v is None else v.astype(x_mk.dtype) for v in (scale, shift))
    args = (x_mk, w_kn, gate, scale, shift, residual)
    if any(a is not None and a.dtype != jnp.float32 for a in args):
        return _pointwise_xla(act, *args)
    return _pointwise(act, *args)


def conv1x1_fused(x_nhwc, kernel_hwio, *, residual=None, **parts):
    """An unstrided 1x1 convolution of NHWC x through `pointwise` with its optional parts (gate
    (N, C) per sample, scale, shift, act; residual shaped like the output)."""
    n, h, w, c = x_nhwc.shape
    res = None if residual is None else residual.reshape(n * h * w, -1)
    y = pointwise(x_nhwc.reshape(n * h * w, c), kernel_hwio[0, 0], residual=res, **parts)
    return y.reshape(n, h, w, -1)


def conv2d(x_nhwc, kernel_hwio, strides=(1, 1), padding: Padding = 0, groups: int = 1,
           impl: ConvImpl = "auto"):
    """2-D convolution, NHWC x HWIO -> NHWC.

    Grouped/depthwise convolutions pick their form per backend at lowering time
    (`lax.platform_dependent`): shifted multiply-adds on CPU, where XLA's grouped convolution is
    ~10x slower, and `lax.conv` elsewhere. Dense convolutions always use `lax.conv`.
    `impl` forces one form ("lax" or "shift"), e.g. for tests.
    """
    strides = _pair(strides)
    if groups == 1 and kernel_hwio.shape[:2] == (1, 1) and padding in (0, (0, 0), "SAME", "VALID"):
        return conv1x1(x_nhwc, kernel_hwio, strides)
    if groups == 1 or impl == "lax":
        return conv2d_lax(x_nhwc, kernel_hwio, strides, padding, groups)
    if impl == "shift":
        return conv2d_shift(x_nhwc, kernel_hwio, strides, padding, groups)
    return lax.platform_dependent(
        x_nhwc, kernel_hwio,
        cpu=lambda x, k: conv2d_shift(x, k, strides, padding, groups),
        default=lambda x, k: conv2d_lax(x, k, strides, padding, groups),
    )


def _moments_xla(x_mc):
    n = x_mc.shape[0]
    mean = leading_sum(x_mc) / n
    return mean, leading_sum(jnp.square(x_mc - mean)) / n


def _grad_sums_xla(g_mc, x_mc, mean):
    return leading_sum(g_mc), leading_sum(g_mc * (x_mc - mean))


def _on_cpu(kernel, xla_form, *args):
    """`kernel(*args)` on CPU when the CPU kernels are built, else (and elsewhere) `xla_form`."""
    cpu = kernel if cpu_kernels.available() else xla_form
    return lax.platform_dependent(*args, cpu=cpu, default=xla_form)


def kernel_with_xla_gradient(kernel, xla_form, *args):
    """`kernel(*args)` on CPU, `xla_form(*args)` elsewhere; differentiated, always through
    `xla_form` (the kernels have no VJP of their own). The caller checks that the kernel applies."""
    @jax.custom_vjp
    def op(*a):
        return lax.platform_dependent(*a, cpu=kernel, default=xla_form)

    op.defvjp(lambda *a: (op(*a), a), lambda a, g: jax.vjp(xla_form, *a)[1](g))
    return op(*args)


@jax.custom_vjp
def batch_moments(x):
    """`(mean, biased variance)` per channel of float32 `x` over all but its last axis, on CPU in
    one kernel pass; gradients are elementwise."""
    return _on_cpu(cpu_kernels.channel_moments, _moments_xla, x.reshape(-1, x.shape[-1]))


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

    On CPU the statistics are one multi-threaded kernel pass (`cpu_kernels.channel_moments`), and
    the gradient is batch norm's closed form with its two per-channel sums from one more pass
    (`channel_grad_sums`): XLA:CPU wrote (x - mean)^2 and g * x out as full arrays to sum them,
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
    sum_g, sum_gxc = _on_cpu(cpu_kernels.channel_grad_sums, _grad_sums_xla,
                             gy.astype(jnp.float32).reshape(-1, c), xf, mean)
    r = lax.rsqrt(var + eps)
    a = scale * r
    # dx = a * (gy - mean(gy) - xhat * mean(gy * xhat)), plus what flows in through mean and var
    shift = -a * sum_g / n + g_mean / n
    slope = -a * r * r * sum_gxc / n + 2 * g_var / n
    dx = gy * a.astype(gy.dtype) + (shift + slope * -mean).astype(gy.dtype) + x * slope.astype(gy.dtype)
    return dx.astype(x.dtype), (sum_gxc * r).astype(scale.dtype), sum_g.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def _uniform(rng: np.random.Generator, shape, fan_in: int):
    """PyTorch's default init range U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Drawn with numpy: eager `jax.random` would compile once per parameter shape (~40 s for DDAMFN).
    """
    bound = 1.0 / max(fan_in, 1) ** 0.5
    return jax.device_put(rng.uniform(-bound, bound, shape).astype(np.float32))


def _const(n: int, value: float):
    return jax.device_put(np.full((n,), value, np.float32))


class Conv2d(nnx.Module):
    """torch.nn.Conv2d in NHWC. kernel: (kh, kw, in/groups, out).

    padding: "SAME" (TF same, as timm's Conv2dSame), an int or (ph, pw) symmetric, or explicit pairs.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size, *, stride=1, padding: Padding = 0,
                 groups: int = 1, bias: bool = False, rng: np.random.Generator):
        kh, kw = _pair(kernel_size)
        fan_in = (in_ch // groups) * kh * kw
        self.kernel = nnx.Param(_uniform(rng, (kh, kw, in_ch // groups, out_ch), fan_in))
        self.bias = nnx.Param(_uniform(rng, (out_ch,), fan_in)) if bias else None
        self.strides = _pair(stride)
        self.padding = padding
        self.groups = groups

    def __call__(self, x_nhwc):
        y = conv2d(x_nhwc, self.kernel[...], self.strides, self.padding, self.groups)
        return y if self.bias is None else y + broadcast_leading(self.bias[...], y.shape)


class Linear(nnx.Module):
    """torch.nn.Linear. kernel: (in, out)."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, rng: np.random.Generator):
        self.kernel = nnx.Param(_uniform(rng, (in_features, out_features), in_features))
        self.bias = nnx.Param(_uniform(rng, (out_features,), in_features)) if bias else None

    def __call__(self, x):
        y = x @ self.kernel[...]
        return y if self.bias is None else y + self.bias[...]


class BatchNorm(nnx.Module):
    """torch BatchNorm1d/2d over the last axis, with PyTorch's semantics.

    Eval: running statistics. Train: normalizes with the biased batch variance and updates
    `running = (1 - momentum) * running + momentum * batch`, the running variance with the
    unbiased batch variance (as torch does); see `batch_norm_train`. Under `jit` with a batch
    sharded over devices the batch statistics are global (XLA all-reduces the sums).
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1):
        self.scale = nnx.Param(_const(num_features, 1.0))
        self.bias = nnx.Param(_const(num_features, 0.0))
        self.mean = nnx.BatchStat(_const(num_features, 0.0))
        self.var = nnx.BatchStat(_const(num_features, 1.0))
        self.eps = eps
        self.momentum = momentum
        self.use_running_average = True

    def __call__(self, x):
        if not self.use_running_average:
            y, mean, var = batch_norm_train(x, self.scale[...], self.bias[...], self.eps)
            self._update_running(mean, var, x.size // x.shape[-1])
            return y
        per_channel = lambda v: broadcast_leading(v, x.shape)  # noqa: E731 (gradients: leading_sum)
        inv = self._inv_std_scale(self.var[...])
        return ((x - per_channel(self.mean[...].astype(x.dtype))) * per_channel(inv.astype(x.dtype))
                + per_channel(self.bias[...].astype(x.dtype)))

    def _update_running(self, mean, var, n: int):
        m = self.momentum
        self.mean[...] = (1 - m) * self.mean[...] + m * mean
        self.var[...] = (1 - m) * self.var[...] + m * var * (n / max(n - 1, 1))

    def batch_affine(self, x):
        """Training: `(scale, shift)` with y = x * scale + shift the batch norm of `x` on its batch
        statistics (differentiable in x), running statistics updated; for callers that fuse the
        normalization into their own kernel (`fused_depthwise.depthwise_silu_input`)."""
        mean, var = batch_moments(x.astype(jnp.float32))
        self._update_running(mean, var, x.size // x.shape[-1])
        inv = self._inv_std_scale(var)
        return inv, self.bias[...] - mean * inv

    def _inv_std_scale(self, var):
        return lax.rsqrt(var + self.eps) * self.scale[...]

    def affine(self):
        """Eval-mode batch norm as per-channel `(scale, shift)`: y = x * scale + shift."""
        inv = self._inv_std_scale(self.var[...])
        return inv, self.bias[...] - self.mean[...] * inv


class PReLU(nnx.Module):
    """Per-channel PReLU (torch.nn.PReLU(num_parameters=C)); alpha: (C,)."""

    def __init__(self, num_features: int):
        self.alpha = nnx.Param(_const(num_features, 0.25))

    def __call__(self, x):
        return jnp.where(x >= 0, x, broadcast_leading(self.alpha[...], x.shape) * x)


def h_swish(x):
    """x * ReLU6(x + 3) / 6, as in the DDAMFN code."""
    return x * jnp.clip(x + 3.0, 0.0, 6.0) / 6.0
