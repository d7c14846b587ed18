"""Jitted inference: one compiled function per (model, input shape), pure in the model state."""
from __future__ import annotations

import functools
from typing import Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hsemo_jax import runtime


def make_forward(model: nnx.Module, *, with_features: bool = False) -> Callable:
    """`fn(x_nhwc) -> scores` or, with_features, `-> (embedding, scores)`; jitted, eval mode.

    The model's weights are copied in once, as compile-time constants; calls do not re-trace unless
    the input shape or dtype changes (pad batches to a fixed size to avoid recompiles).
    With several local devices (GPUs, or one CPU device per core, see `hsemo_jax.runtime`) a
    batch divisible by their count is split over all of them; other batches run on the first.
    """
    model.eval()
    graphdef, state = nnx.split(model)
    # The weights enter the compiled program as constants, not arguments: XLA then folds everything
    # computed from weights alone (batch-norm scales folded into convolutions, and so on) once at
    # compile time, and a call passes one array instead of ~300 (B0 batch 1 on CPU: 100 -> 126
    # img/s; hsemo_jax/bench/NOTES.md). A model changed after this call needs a new forward.
    weights = jax.tree.map(np.asarray, state)

    def apply(x_nhwc):
        m = nnx.merge(graphdef, weights)
        f = m.features(x_nhwc)
        return (f, m.head(f)) if with_features else m.head(f)

    jit = functools.partial(jax.jit, compiler_options=runtime.compiler_options())
    forward = jit(apply)

    devices = jax.local_devices()
    if len(devices) == 1:
        return forward
    mesh = Mesh(np.array(devices), ("data",))
    split = NamedSharding(mesh, PartitionSpec("data"))
    # Eval-mode samples are independent: each device runs the model on its slice (shard_map), so
    # custom CPU kernels (ops/cpu_kernels) see local batches, not a partitioned program.
    out_specs = (PartitionSpec("data"),) * 2 if with_features else PartitionSpec("data")
    forward_split = jit(jax.shard_map(apply, mesh=mesh, in_specs=PartitionSpec("data"), out_specs=out_specs))

    def call(x_nhwc):
        if x_nhwc.shape[0] % len(devices) == 0:
            return forward_split(jax.device_put(x_nhwc, split))
        return forward(x_nhwc)

    return call
