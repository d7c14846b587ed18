"""Jitted inference: one compiled function per (model, input shape), pure in the model state."""
from __future__ import annotations

from typing import Callable

import jax
from flax import nnx


def make_forward(model: nnx.Module, *, with_features: bool = False) -> Callable:
    """`fn(x_nhwc) -> scores` or, with_features, `-> (embedding, scores)`; jitted, eval mode.

    The model is split once into a static graph and its state; calls do not re-trace unless the
    input shape or dtype changes (pad batches to a fixed size to avoid recompiles).
    """
    model.eval()
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x_nhwc):
        m = nnx.merge(graphdef, state)
        f = m.features(x_nhwc)
        return (f, m.head(f)) if with_features else m.head(f)

    return lambda x_nhwc: forward(state, x_nhwc)
