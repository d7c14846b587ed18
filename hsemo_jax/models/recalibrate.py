"""Batch-norm statistics recomputed from data, as `torch.optim.swa_utils.update_bn` does.

A model whose running statistics do not fit its weights (weights averaged or edited after
training, or random weights as benchmarks and tests use: at PyTorch's initialization a deep
network's eval-mode outputs are the same for every input to ~1e-7) gets statistics that do.
"""
from __future__ import annotations

from typing import Iterable

from flax import nnx

from hsemo_jax.models.layers import BatchNorm


def recalibrate_batch_norms(model: nnx.Module, batches: Iterable) -> nnx.Module:
    """Set every `BatchNorm`'s running mean and variance to their average over `batches` (model
    inputs): each batch runs as in training for the batch norms (each normalizing with the
    batch's own statistics) and as in eval for every other module (no dropout, no drop path). The
    average is cumulative, as torch's momentum=None (the variance of each batch unbiased). Returns
    `model`, in eval mode."""
    norms = [m for _, m in nnx.iter_modules(model) if isinstance(m, BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    model.eval()
    try:
        for i, x in enumerate(batches):
            for bn in norms:
                bn.momentum, bn.use_running_average = 1.0 / (i + 1), False
            model(x)
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum, bn.use_running_average = momentum, True
    return model
