"""Depthwise convolution + batch norm + SiLU as one CPU kernel (inference), for EfficientNet.

On XLA:CPU the MBConv middle, `silu(bn2(depthwise(silu(bn1(h)))))` and then the squeeze-excite
mean, costs more than all of B0's GEMMs: XLA recomputes the input activation once per kernel tap
and runs its loops far below the cores' speed (hsemo_jax/bench/NOTES.md). `fused_depthwise.cc`
does it in one pass, reading `h` once and writing `y` and the per-channel sums of `y`. It is
compiled for the host on first use with the system C++ compiler against jaxlib's FFI headers
(`jax.ffi.include_dir()`), cached under `<cache>/kernels/` keyed by source, compiler, jaxlib and
CPU, and registered with `jax.ffi`.

`depthwise_bn_act` picks its form per backend at lowering time: the kernel on CPU where it
applies (float32, channels a multiple of 16, kernel 3 or 5, stride 1 or 2, the library built),
the same arithmetic in XLA ops elsewhere. Gradients always come from the XLA form.
`HSEMO_JAX_FUSED_KERNELS=0` turns the kernel off; without a compiler it is off, with one warning.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hsemo_jax.models import layers

ENV = "HSEMO_JAX_FUSED_KERNELS"
_SOURCE = Path(__file__).with_name("fused_depthwise.cc")
_TARGET = "hsemo_fused_depthwise"
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-w")


def _cpu_signature() -> str:
    """What the compiled code depends on: machine and, on Linux, the CPU's feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _build(cxx: str) -> Path:
    """Compile the kernel (once per source/compiler/jaxlib/CPU) and return the library path."""
    from hsemo_jax import hub  # late: hub imports the model registry

    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([
        _SOURCE.read_text(), version, jax.__version__, " ".join(_FLAGS), _cpu_signature(),
    ]).encode()).hexdigest()[:16]
    out = hub.cache_dir() / "kernels" / f"fused_depthwise-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        subprocess.run([cxx, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", tmp],
                       capture_output=True, text=True, check=True)
        os.replace(tmp, out)  # atomic: concurrent builders leave one complete file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Build, load and register the kernel once per process; False (and why, once) if it can't."""
    if os.environ.get(ENV, "1") == "0":
        return False
    cxx = _compiler()
    if cxx is None:
        warnings.warn("no C++ compiler found (set CXX): the fused CPU depthwise kernel is off and "
                      "EfficientNet runs XLA's slower form", RuntimeWarning, stacklevel=2)
        return False
    try:
        lib = ctypes.cdll.LoadLibrary(str(_build(cxx)))
        jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(lib.HsemoFusedDepthwise), platform="cpu")
    except (OSError, subprocess.CalledProcessError, AttributeError) as e:
        detail = str(getattr(e, "stderr", "") or e).strip()[-600:]  # a compiler's last lines
        warnings.warn(f"could not build the fused CPU depthwise kernel with {cxx} ({detail}); "
                      "EfficientNet runs XLA's slower form", RuntimeWarning, stacklevel=2)
        return False
    return True


def _affine_act(x, scale, shift, act: bool):
    y = x * scale + shift
    return jax.nn.silu(y) if act else y


def _reference(x, kernel_hhc, in_scale, in_shift, out_scale, out_shift, strides, pads, in_act, out_act):
    """The same arithmetic in XLA ops (any backend; the convolution picks its own form)."""
    h = _affine_act(x, in_scale, in_shift, True) if in_act else x
    y = layers.conv2d(h, kernel_hhc[:, :, None, :], strides, pads, groups=x.shape[-1])
    y = _affine_act(y, out_scale, out_shift, out_act)
    return y, y.sum(axis=(1, 2))


def _kernel(x, kernel_hhc, in_scale, in_shift, out_scale, out_shift, strides, pads, in_act, out_act):
    n, h, w, c = x.shape
    k = kernel_hhc.shape[0]
    oh = (h + sum(pads[0]) - k) // strides[0] + 1
    ow = (w + sum(pads[1]) - k) // strides[1] + 1
    like_x = jax.typeof(x)  # results vary over the same shard_map axes as x
    call = jax.ffi.ffi_call(_TARGET, (like_x.update(shape=(n, oh, ow, c)), like_x.update(shape=(n, c))),
                            vmap_method="sequential")
    return call(x, in_scale, in_shift, kernel_hhc, out_scale, out_shift, stride=np.int64(strides[0]),
                pt=np.int64(pads[0][0]), pl=np.int64(pads[1][0]), in_act=np.int64(in_act),
                out_act=np.int64(out_act))


def _kernel_applies(x, kernel_hhc, strides) -> bool:
    k = kernel_hhc.shape
    return (x.dtype == jnp.float32 and kernel_hhc.dtype == jnp.float32 and x.shape[-1] % 16 == 0
            and k[0] == k[1] in (3, 5) and strides[0] == strides[1] in (1, 2) and available())


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _fused(x, kernel_hhc, in_scale, in_shift, out_scale, out_shift, strides, pads, in_act, out_act):
    args = (x, kernel_hhc, in_scale, in_shift, out_scale, out_shift)
    static = (strides, pads, in_act, out_act)
    return lax.platform_dependent(*args, cpu=lambda *a: _kernel(*a, *static),
                                  default=lambda *a: _reference(*a, *static))


def _fused_fwd(*args):
    return _fused(*args), args[:6]


def _fused_bwd(strides, pads, in_act, out_act, residuals, cotangents):
    _, vjp = jax.vjp(lambda *a: _reference(*a, strides, pads, in_act, out_act), *residuals)
    return vjp(cotangents)


_fused.defvjp(_fused_fwd, _fused_bwd)


def depthwise_bn_act(x, kernel_hwio, strides, padding, out_affine, *, in_affine=None,
                     act: bool = True):
    """`(y, sums)`: y = act(depthwise(silu(x*s_in+b_in) or x) * s_out + b_out), sums over H, W.

    kernel_hwio: (k, k, 1, C) as `layers.Conv2d` holds it; padding as `layers.Conv2d` takes it;
    `out_affine` / `in_affine`: per-channel (scale, shift), e.g. `BatchNorm.affine()`.
    """
    strides = layers._pair(strides)
    kernel_hhc = kernel_hwio[:, :, 0, :]
    pads = layers._explicit_padding(padding, x.shape[1:3], kernel_hhc.shape[:2], strides)
    pads = tuple(tuple(p) for p in pads)
    c = x.shape[-1]
    in_act = in_affine is not None
    if not in_act:  # both forms ignore it then; it keeps one argument list
        in_affine = (jnp.ones((c,), x.dtype), jnp.zeros((c,), x.dtype))
    args = (x, kernel_hhc, *in_affine, *out_affine)
    static = (strides, pads, in_act, act)
    if _kernel_applies(x, kernel_hhc, strides):
        return _fused(*args, *static)
    return _reference(*args, *static)
