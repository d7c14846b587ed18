"""Hand-written XLA:CPU kernels, built on first use and called through `jax.ffi`.

Only `hsemo_jax.ops.dispatch` imports this package, when it lowers a program for CPU: tracing,
lowering for GPU/TPU and exporting never build or load it.

`gemm.cc` is the GEMM of every 1x1 convolution (`ops.pointwise`) and the stems' convolution
(`ops.conv_affine_act`);
`fused_depthwise.cc` is the MBConv middle of EfficientNet and MobileViT, with or without the
expansion convolution before it (`ops.fused`);
`depthwise_grad.cc` is the gradient of any depthwise convolution (`ops.conv`'s shift form);
`channel_stats.cc` gives batch norm's training statistics and their gradient sums (`ops.norm`). They are for x86-64 with AVX2 (8-float vectors) or AVX-512 (16-float), and
are compiled into one library for the host CPU (`-march=native`) with the system C++
compiler against jaxlib's FFI headers (`jax.ffi.include_dir()`), about 10 s, cached under
`<cache>/kernels/` keyed by sources, compiler, jaxlib, flags and CPU, written atomically, and
registered once per process. Nothing compiled ships with the package.

`HSEMO_JAX_FUSED_KERNELS=0` turns them off; without a compiler, or if the build fails, they are
off with one warning, and every caller runs its XLA form instead.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hsemo_jax.fileio import atomic_path
from hsemo_jax.paths import cache_dir
from hsemo_jax.runtime import cpu_signature as _cpu_signature  # a module name: tests replace it

ENV = "HSEMO_JAX_FUSED_KERNELS"
_DIR = Path(__file__).parent
_SOURCES = ("fused_depthwise.cc", "depthwise_grad.cc", "channel_stats.cc", "gemm.cc")
_HEADERS = ("cpu_kernels.h", "gemm_tiles.h")
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-w")
# ffi target name -> exported handler symbol
TARGETS = {"hsemo_fused_depthwise": "HsemoFusedDepthwise", "hsemo_expand_depthwise": "HsemoExpandDepthwise",
           "hsemo_depthwise_grad": "HsemoDepthwiseGrad",
           "hsemo_depthwise_grad_silu": "HsemoDepthwiseGradSilu",
           "hsemo_channel_moments": "HsemoChannelMoments", "hsemo_channel_grad_sums": "HsemoChannelGradSums",
           "hsemo_pointwise": "HsemoPointwise",
           "hsemo_conv_act": "HsemoConvAct"}


def _cpu_supported() -> bool:
    """x86-64 with AVX2 and FMA (the kernels' vectors are sized for AVX2 or AVX-512 registers;
    elsewhere XLA's forms run)."""
    flags = _cpu_signature().split()
    return platform.machine().lower() in ("x86_64", "amd64") and "avx2" in flags and "fma" in flags


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _build(cxx: str) -> Path:
    """Compile the kernels (once per sources/compiler/jaxlib/CPU) and return the library path."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    texts = [(_DIR / name).read_text() for name in (*_SOURCES, *_HEADERS)]
    key = hashlib.sha256("\0".join([
        *texts, version, jax.__version__, " ".join(_FLAGS), _cpu_signature(),
    ]).encode()).hexdigest()[:16]
    out = cache_dir() / "kernels" / f"cpu_kernels-{key}.so"
    if out.exists():
        return out
    with atomic_path(out, suffix=".so") as tmp:  # concurrent builders leave one complete file
        subprocess.run([cxx, *_FLAGS, f"-I{jax.ffi.include_dir()}", f"-I{_DIR}",
                        *(str(_DIR / name) for name in _SOURCES), "-o", str(tmp)],
                       capture_output=True, text=True, check=True)
    return out


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Build, load and register the kernels once per process; False (and why, once) if not."""
    if os.environ.get(ENV, "1") == "0" or not _cpu_supported():
        return False
    cxx = _compiler()
    if cxx is None:
        warnings.warn("no C++ compiler found (set CXX): the CPU kernels are off and "
                      "XLA's slower forms run instead", RuntimeWarning, stacklevel=2)
        return False
    try:
        lib = ctypes.cdll.LoadLibrary(str(_build(cxx)))
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except (OSError, subprocess.CalledProcessError, AttributeError) as e:
        detail = str(getattr(e, "stderr", "") or e).strip()[-600:]  # a compiler's last lines
        warnings.warn(f"could not build the CPU kernels with {cxx} ({detail}); "
                      "XLA's slower forms run instead", RuntimeWarning, stacklevel=2)
        return False
    return True


def _like(x, shape):
    """An abstract result like `x` (dtype, and under shard_map the axes it varies over)."""
    return jax.typeof(x).update(shape=shape)


def fused_depthwise(x, kernel_hhc, in_scale, in_shift, out_scale, out_shift, *, stride: int,
                    pt: int, pl: int, out_hw, in_act: bool, out_act: bool):
    """`(y, sums)` of fused_depthwise.cc (see there)."""
    n, _, _, c = x.shape
    call = jax.ffi.ffi_call("hsemo_fused_depthwise", (_like(x, (n, *out_hw, c)), _like(x, (n, c))),
                            vmap_method="sequential")
    return call(x, in_scale, in_shift, kernel_hhc, out_scale, out_shift, stride=np.int64(stride),
                pt=np.int64(pt), pl=np.int64(pl), in_act=np.int64(in_act), out_act=np.int64(out_act))


def expand_depthwise(x, w_kn, in_scale, in_shift, kernel_hhc, out_scale, out_shift, *, stride: int,
                     pt: int, pl: int, out_hw, out_act: bool):
    """`(y, sums)` of fused_depthwise.cc's HsemoExpandDepthwise: `fused_depthwise` (SiLU input)
    of x @ w_kn, the expansion computed row by row inside the kernel."""
    n, c = x.shape[0], w_kn.shape[1]
    call = jax.ffi.ffi_call("hsemo_expand_depthwise", (_like(x, (n, *out_hw, c)), _like(x, (n, c))),
                            vmap_method="sequential")
    return call(x, pack_panels(w_kn), in_scale, in_shift, kernel_hhc, out_scale, out_shift,
                stride=np.int64(stride), pt=np.int64(pt), pl=np.int64(pl), out_act=np.int64(out_act))


def depthwise_grad(xp, g, kernel_hhc, *, stride: int, pt: int, pl: int, in_hw):
    """`(dx, dkernel)` of depthwise_grad.cc: xp the padded input, g the output gradient."""
    n, _, _, c = xp.shape
    call = jax.ffi.ffi_call("hsemo_depthwise_grad", (_like(xp, (n, *in_hw, c)), _like(xp, kernel_hhc.shape)),
                            vmap_method="sequential")
    return call(xp, g, kernel_hhc, stride=np.int64(stride), pt=np.int64(pt), pl=np.int64(pl))


def depthwise_grad_silu(h, in_scale, in_shift, g, kernel_hhc, *, stride: int, pt: int, pl: int):
    """`(dh, dkernel, dscale, dshift)` of a depthwise convolution of pad(silu(h * scale + shift))."""
    c = (h.shape[-1],)
    call = jax.ffi.ffi_call("hsemo_depthwise_grad_silu", (_like(h, h.shape), _like(h, kernel_hhc.shape),
                                                         _like(h, c), _like(h, c)), vmap_method="sequential")
    return call(h, in_scale, in_shift, g, kernel_hhc, stride=np.int64(stride), pt=np.int64(pt), pl=np.int64(pl))


def channel_moments(x_mc):
    """`(mean, biased variance)` over the rows of a float32 (M, C) array (channel_stats.cc)."""
    c = (x_mc.shape[1],)
    call = jax.ffi.ffi_call("hsemo_channel_moments", (_like(x_mc, c), _like(x_mc, c)), vmap_method="sequential")
    return call(x_mc)


def channel_grad_sums(g_mc, x_mc, mean_c):
    """`(sum of g, sum of g * (x - mean))` over the rows of float32 (M, C) arrays."""
    c = (x_mc.shape[1],)
    call = jax.ffi.ffi_call("hsemo_channel_grad_sums", (_like(x_mc, c), _like(x_mc, c)),
                            vmap_method="sequential")
    return call(g_mc, x_mc, mean_c)


PANEL = 32  # columns per packed weight panel (gemm.cc's kPanel)


def pack_panels(w_kn):
    """(K, N) weights -> gemm.cc's panels (ceil(N / 32), K, 32), zero beyond N. For constant
    weights (inference) XLA folds this at compile time."""
    k, n = w_kn.shape
    p = -(-n // PANEL)
    w = jnp.pad(w_kn, ((0, 0), (0, p * PANEL - n)))
    return w.reshape(k, p, PANEL).transpose(1, 0, 2)


ACTS = {None: 0, "silu": 1, "sigmoid": 2}  # gemm_tiles.h's Act


def pointwise(x_mk, w_kn, gate_sk=None, *, scale=None, shift=None, residual=None, act=None):
    """act((x @ w) * scale + shift) + residual by gemm.cc (float32), each part optional (scale and
    shift (N,) both or neither); with `gate_sk` (S, K), row i of x is first scaled by gate row
    i // (M / S) (S samples of M / S rows each). act: None, "silu" or "sigmoid"."""
    (m, k), n = x_mk.shape, w_kn.shape[1]
    none = np.zeros((0,), np.float32)
    if scale is None:
        scale = shift = none
    call = jax.ffi.ffi_call("hsemo_pointwise", _like(x_mk, (m, n)), vmap_method="sequential")
    return call(x_mk, pack_panels(w_kn), np.zeros((0, k), np.float32) if gate_sk is None else gate_sk,
                scale, shift, none if residual is None else residual, act=np.int64(ACTS[act]))


def conv_act(xp, kernel_hwio, scale, shift, *, stride: int, silu: bool):
    """silu?(conv(xp, kernel) * scale + shift) by gemm.cc: a dense convolution of the padded
    input xp (no padding left to do), float32."""
    n, h, w, _ = xp.shape
    k, _, c, d = kernel_hwio.shape
    out = (n, (h - k) // stride + 1, (w - k) // stride + 1, d)
    call = jax.ffi.ffi_call("hsemo_conv_act", _like(xp, out), vmap_method="sequential")
    return call(xp, pack_panels(kernel_hwio.reshape(k * k * c, d)), scale, shift,
                k=np.int64(k), stride=np.int64(stride), act=np.int64(silu))
