"""Matrix products over channels: `matmul` (1x1 convolutions) and `pointwise`, a 1x1
convolution with its squeeze-excite gate, affine, activation and skip connection. On CPU
inference both run `gemm.cc`; differentiated, and elsewhere, XLA's dot."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hsemo_jax.ops.dispatch import cpu_kernels, kernel_or_xla, onnx_forms
from hsemo_jax.ops.reduce import broadcast_leading


def _gemm_kernel(x_mc, w_cd):
    return cpu_kernels().pointwise(x_mc, w_cd)


@jax.custom_vjp
def matmul(x_mc, w_cd):
    """x @ w, with the weight gradient written as a dot with a batch dimension of 1. JAX's own
    transpose gives the same dot without it, for which XLA:CPU lays the output gradient out
    transposed, by a copy fusion that recomputes its producer (B0 train step 6.4 -> 10.2 img/s,
    MobileFaceNet 13.4 -> 19.1 at batch 32; NOTES.md). Where no gradient is taken (inference)
    the CPU forward is `gemm.cc` (float32; faster than XLA's Eigen GEMM on every 1x1 convolution
    of the backbones); a differentiated forward keeps Eigen's, which ran B0's train step as fast
    or faster in A/B runs."""
    if x_mc.dtype == w_cd.dtype == jnp.float32:
        return kernel_or_xla(_gemm_kernel, jnp.matmul, x_mc, w_cd)
    return x_mc @ w_cd


def _matmul_fwd(x_mc, w_cd):
    return x_mc @ w_cd, (x_mc, w_cd)


def _matmul_bwd(residuals, g_md):
    x_mc, w_cd = residuals
    dx = (g_md @ w_cd.T).astype(x_mc.dtype)
    dw = lax.dot_general(x_mc[None], g_md[None], (((1,), (1,)), ((0,), (0,))))[0]
    return dx, dw.astype(w_cd.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


ACTIVATIONS = {None: lambda y: y, "silu": jax.nn.silu, "sigmoid": jax.nn.sigmoid}


def _pointwise_xla(act, x_mk, w_kn, gate_sk, scale, shift, residual):
    if gate_sk is not None:
        x_mk = (x_mk.reshape(gate_sk.shape[0], -1, x_mk.shape[1]) * gate_sk[:, None]).reshape(x_mk.shape)
    y = matmul(x_mk, w_kn)
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
    return cpu_kernels().pointwise(x_mk, w_kn, gate_sk, scale=scale, shift=shift, residual=residual, act=act)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _pointwise(act, *args):
    return kernel_or_xla(functools.partial(_pointwise_kernel, act), functools.partial(_pointwise_xla, act), *args)


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
    if onnx_forms():
        return _conv1x1_onnx(x_nhwc, kernel_hwio, residual=residual, **parts)
    n, h, w, c = x_nhwc.shape
    res = None if residual is None else residual.reshape(n * h * w, -1)
    y = pointwise(x_nhwc.reshape(n * h * w, c), kernel_hwio[0, 0], residual=res, **parts)
    return y.reshape(n, h, w, -1)


def _conv1x1_onnx(x_nhwc, kernel_hwio, *, gate=None, scale=None, shift=None, residual=None, act=None):
    """`conv1x1_fused` for ONNX converters (`dispatch.onnx_forms`): NHWC throughout and one
    convolution, since a matrix product over reshaped rows stops the runtimes' layout passes."""
    if gate is not None:
        x_nhwc = x_nhwc * gate[:, None, None, :].astype(x_nhwc.dtype)
    y = lax.conv_general_dilated(x_nhwc, kernel_hwio, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y if scale is None else y * scale.astype(y.dtype)
    y = y if shift is None else y + shift.astype(y.dtype)
    y = ACTIVATIONS[act](y)
    return y if residual is None else y + residual
