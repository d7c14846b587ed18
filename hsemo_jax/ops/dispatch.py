"""How an op picks its form per backend; the one place that does.

Two mechanisms, both decided when a program is lowered, not when it is traced:
- `per_backend(cpu, default, *args)`: two forms written in XLA ops (e.g. a reduction as a
  matrix-vector product on CPU), through `lax.platform_dependent`.
- `kernel_or_xla(kernel, xla_form, *args)`: a hand-written CPU kernel (`ops/cpu_kernels`, called
  through `jax.ffi`) with an XLA form of the same arithmetic. It binds one primitive,
  `hsemo_cpu_kernel`, whose CPU lowering builds and loads the kernels on first use and emits the
  kernel's custom call, or the XLA form where the kernels are off or cannot be built, or where the
  program is being exported (`jax.export` keeps no custom calls without compatibility guarantees).
  Every other platform lowers the XLA form. So tracing, lowering for GPU/TPU and exporting never
  compile or load C++.

`xla_forms()` traces the XLA forms directly instead (no primitive, no `platform_dependent`): for
converters that only know JAX's standard primitives (jax2onnx) and for tests. `xla_forms(onnx=True)`
also takes the forms ONNX runtimes run fastest where they differ (`onnx_forms()` says so): 1x1
convolutions as convolutions, not matrix products over reshaped rows, which would stop the
runtimes' layout passes (onnxruntime keeps convolutions in its blocked NCHWc layout).

The kernels have no derivatives of their own: every op that uses one wraps it in a custom VJP
(`with_xla_gradient` where the gradient is the XLA form's).
"""
from __future__ import annotations

import contextlib
import threading

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

_state = threading.local()


@contextlib.contextmanager
def xla_forms(*, onnx: bool = False):
    """Within it, ops trace their XLA forms only (what is traced inside, not what was compiled
    before: trace a fresh function); with `onnx`, the ONNX forms where an op has one."""
    previous = getattr(_state, "forms", None)
    _state.forms = "onnx" if onnx else "xla"
    try:
        yield
    finally:
        _state.forms = previous


def xla_only() -> bool:
    return getattr(_state, "forms", None) is not None


def onnx_forms() -> bool:
    """Whether ops trace for an ONNX converter (`xla_forms(onnx=True)`)."""
    return getattr(_state, "forms", None) == "onnx"


def per_backend(cpu, default, *args):
    """`cpu(*args)` where the program runs on CPU, `default(*args)` elsewhere; both XLA ops."""
    if xla_only():
        return default(*args)
    return lax.platform_dependent(*args, cpu=cpu, default=default)


kernel_p = Primitive("hsemo_cpu_kernel")
kernel_p.multiple_results = True


def kernel_or_xla(kernel, xla_form, *args):
    """`kernel(*args)` in a program compiled for CPU with the kernels built, else
    `xla_form(*args)`. args: a pytree of arrays (None for absent optional parts); the result
    has the XLA form's structure, shapes and dtypes. The caller checks that the kernel applies to
    these shapes and dtypes."""
    if xla_only():
        return xla_form(*args)
    flat, in_tree = jax.tree.flatten(args)
    # The form's one trace here (on CPU with the kernels, its only one). Keeping it as a jaxpr
    # (make_jaxpr) to lower from instead of re-tracing the form was measured on a B0 forward:
    # tracing and lowering (CPU and cross-lowered for CUDA) no faster, so the form stays a function.
    shapes = jax.eval_shape(xla_form, *args)
    leaves, out_tree = jax.tree.flatten(shapes)
    like = jax.typeof(flat[0])  # keeps what a shard_map'd input varies over
    out_avals = tuple(like.update(shape=s.shape, dtype=s.dtype) for s in leaves)
    outs = kernel_p.bind(*flat, kernel=kernel, xla_form=xla_form, in_tree=in_tree, out_avals=out_avals)
    return jax.tree.unflatten(out_tree, outs)


def _flat(fn, in_tree):
    return lambda *flat: jax.tree.leaves(fn(*jax.tree.unflatten(in_tree, flat)))


kernel_p.def_abstract_eval(lambda *_, out_avals, **__: list(out_avals))
kernel_p.def_impl(lambda *flat, **params: jax.jit(lambda *f: kernel_p.bind(*f, **params))(*flat))


def _lower_xla_form(ctx, *flat, xla_form, in_tree, **_):
    return mlir.lower_fun(_flat(xla_form, in_tree), multiple_results=True)(ctx, *flat)


def cpu_kernels():
    """The kernels' package (`ops/cpu_kernels`), imported here only: kernel forms call this, and
    they run only inside `_lower_for_cpu`."""
    from hsemo_jax.ops import cpu_kernels as package

    return package


def _lower_for_cpu(ctx, *flat, kernel, xla_form, in_tree, **_):
    exporting = ctx.module_context.lowering_parameters.for_export
    fn = kernel if not exporting and cpu_kernels().available() else xla_form
    return mlir.lower_fun(_flat(fn, in_tree), multiple_results=True)(ctx, *flat)


mlir.register_lowering(kernel_p, _lower_xla_form)
mlir.register_lowering(kernel_p, _lower_for_cpu, platform="cpu")


def _batch(flat, dims, *, kernel, xla_form, in_tree, out_avals):
    """vmap: both forms vmapped (the kernels' FFI calls loop over the mapped axis)."""
    args = jax.tree.unflatten(in_tree, [a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(flat, dims)])
    axes = jax.tree.unflatten(in_tree, [None if d is None else 0 for d in dims])
    out = kernel_or_xla(jax.vmap(kernel, in_axes=axes), jax.vmap(xla_form, in_axes=axes), *args)
    leaves = jax.tree.leaves(out)
    return leaves, [0] * len(leaves)


batching.primitive_batchers[kernel_p] = _batch


def with_xla_gradient(kernel, xla_form, *args):
    """`kernel_or_xla(kernel, xla_form, *args)`, differentiated through `xla_form`."""
    @jax.custom_vjp
    def op(*a):
        return kernel_or_xla(kernel, xla_form, *a)

    op.defvjp(lambda *a: (op(*a), a), lambda a, g: jax.vjp(xla_form, *a)[1](g))
    return op(*args)
