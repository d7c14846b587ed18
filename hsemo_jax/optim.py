"""Optimizers and learning-rate schedules for the trainer (optax).

- "adam" / "adamw": optax's Adam(W) (torch semantics: eps added to sqrt of the bias-corrected
  second moment; AdamW decoupled weight decay lr·wd·θ as torch.optim.AdamW).
- "keras_adam": Keras/TF-2.13 Adam exactly (spec §3.4, §9.14): eps is added to sqrt(v) *before*
  bias correction, θ -= lr·sqrt(1-β2^t)/(1-β1^t) · m / (sqrt(v) + eps), with default eps 1e-7.
- Schedules: "constant", "exponential" (×gamma once per epoch, as torch ExponentialLR stepped
  each epoch: DDAMFN γ=0.6), "cosine", "warmup_cosine".
- Gradient accumulation: `optax.MultiSteps(every_k_schedule=k)` averages k micro-batch gradients
  and updates once, so the effective batch is k × the step batch; schedules count updates.
- Large batches: `scaled_lr` scales the configured lr from the batch it was tuned for to the
  effective batch (batch_size × grad_accum): "linear" (× B/B_ref, Goyal et al. 2017, for SGD),
  "sqrt" (× sqrt(B/B_ref), the usual rule for Adam), "none".
- Freezing: parameters whose path does not match `trainable` get zero updates
  (`optax.multi_transform` with `set_to_zero`), e.g. the AffectNet recipe's classifier-only phase.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hsemo_jax.models.heads import path_str


LR_SCALING = ("none", "linear", "sqrt")


def scaled_lr(lr: float, rule: str, batch: int, reference: int) -> float:
    """`lr`, tuned for an effective batch of `reference` rows, for `batch` rows under `rule`."""
    if rule not in LR_SCALING:
        raise ValueError(f"unknown lr scaling rule {rule!r}; expected one of {LR_SCALING}")
    ratio = batch / reference
    return lr * {"none": 1.0, "linear": ratio, "sqrt": ratio ** 0.5}[rule]


class KerasAdamState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_keras_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7) -> optax.GradientTransformation:
    """Direction of the Keras Adam step (to be scaled by -lr):
    sqrt(1 - b2^t) / (1 - b1^t) · m_t / (sqrt(v_t) + eps)."""

    def init(params):
        zeros = jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params)
        return KerasAdamState(jnp.zeros((), jnp.int32), zeros, zeros)

    def update(grads, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: m + (g - m) * (1 - b1), state.mu, grads)
        nu = jax.tree.map(lambda v, g: v + (jnp.square(g) - v) * (1 - b2), state.nu, grads)
        t = count.astype(jnp.float32)
        alpha = jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        updates = jax.tree.map(lambda m, v: alpha * m / (jnp.sqrt(v) + eps), mu, nu)
        return updates, KerasAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def make_schedule(name: str, lr: float, *, total_updates: int, updates_per_epoch: int = 1,
                  gamma: float = 1.0, warmup_updates: int = 0, final_fraction: float = 0.0) -> optax.Schedule:
    """Learning rate as a function of the update count (see module docstring for the names)."""
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "exponential":
        return optax.exponential_decay(lr, transition_steps=max(updates_per_epoch, 1), decay_rate=gamma,
                                       staircase=True)
    if name == "cosine":
        return optax.cosine_decay_schedule(lr, max(total_updates, 1), alpha=final_fraction)
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_updates, max(total_updates, warmup_updates + 1),
                                                  end_value=lr * final_fraction)
    raise ValueError(f"unknown schedule {name!r}")


def make_optimizer(name: str, schedule: optax.Schedule, *, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, weight_decay: float = 0.0, clip_norm: float = 0.0,
                   accum_steps: int = 1, trainable: Callable[[str], bool] | None = None):
    """The optax transformation for `params` (any pytree; paths as '/'-joined keys for `trainable`)."""
    if name == "adam":
        tx = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
    elif name == "adamw":
        tx = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    elif name == "keras_adam":
        tx = optax.chain(scale_by_keras_adam(b1, b2, eps), optax.scale_by_learning_rate(schedule))
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    if clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
    if trainable is not None:
        def labels(params):
            return jax.tree_util.tree_map_with_path(
                lambda path, _: "train" if trainable(path_str(path)) else "freeze", params)
        tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
    if accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum_steps)
    return tx

