"""Blending two models' outputs with per-task weights (spec §4.3; paper eqs. 1-3).

    VA:   va   = w_VA   * va_A   + (1 - w_VA)   * va_B      (raw valence/arousal)
    EXPR: p    = w_EXPR * p_A    + (1 - w_EXPR) * p_B       (softmax probabilities)
    AU:   q    = w_AU   * q_A    + (1 - w_AU)   * q_B       (sigmoid probabilities)

The notebook's choice (mtl7#c79, A = ddamfn_mtl, B = enet0_mtl_1) is `NOTEBOOK_WEIGHTS`.
Smoothing is linear, so blend-then-smooth equals smooth-then-blend up to float rounding; the
notebook blends first, and so does `blend_tasks`.
"""
from __future__ import annotations

from typing import Mapping

import jax
import numpy as np

from hsemo_jax import checks
from hsemo_jax.errors import InputError

NOTEBOOK_WEIGHTS = {"VA": 0.8, "EXPR": 0.5, "AU": 0.5}


@jax.jit
def _blend(a, b, w):
    return w * a + (1.0 - w) * b


def blend(a, b, w: float) -> np.ndarray:
    """w * a + (1 - w) * b for two (N, C) score arrays of the same shape; w in [0, 1]."""
    x = checks.as_float(a, "a", ndim=(1, 2))
    y = checks.as_float(b, "b", ndim=(1, 2))
    if x.shape != y.shape:
        raise InputError(f"shape mismatch: model A outputs {x.shape}, model B outputs {y.shape}")
    if not (0.0 <= float(w) <= 1.0):
        raise InputError(f"blend weight must lie in [0, 1], got {w!r}")
    return np.asarray(_blend(x, y, np.float32(w)))


def blend_tasks(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray],
                weights: Mapping[str, float] = NOTEBOOK_WEIGHTS) -> dict:
    """Blend every task present in both `a` and `b` (keys like "VA", "EXPR", "AU") with its weight."""
    out = {}
    for task, xa in a.items():
        if task not in b:
            raise InputError(f"model B has no {task!r} outputs")
        if task not in weights:
            raise InputError(f"no blend weight for task {task!r} (have {sorted(weights)})")
        out[task] = blend(xa, b[task], weights[task])
    return out
