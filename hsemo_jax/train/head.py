"""The ABAW-7 multi-task head (spec §3.3): three independent sub-heads on X = concat(f, scores).

    X (N, D + 10)  ──> expr: Dense(8)              logits (N, 8)   (softmax = class probabilities)
                   ──> va:   Dense(2) on X[:, -10:] tanh (N, 2)    (valence, arousal)
                   ──> au:   Dense(128, relu) -> Dense(12) logits (N, 12) (sigmoid = AU probabilities)

No shared layer and no dropout; the sub-heads share only their input, so training them jointly on
a masked loss or one at a time on their own rows (the paper's way) optimizes the same functions.
Kernels are glorot-uniform, biases zero (Keras defaults). Kernels have layout (in, out).
The heads return pre-activation logits for EXPR and AU (the losses use them in the numerically
safe form, as Keras does for a softmax/sigmoid output layer); `predict` applies the activations.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

NUM_EXPR = 8
NUM_AU = 12
SCORES_LEN = 10  # backbone scores: 8 expression logits, valence, arousal
AU_HIDDEN = 128
TASKS = ("expr", "va", "au")


class Dense(nnx.Module):
    """Keras Dense without activation: x @ kernel + bias; kernel (in, out) glorot-uniform
    U(±sqrt(6 / (in + out))), bias zeros. Drawn with numpy: eager `jax.random` compiles once per
    shape (seconds each on CPU)."""

    def __init__(self, n_in: int, n_out: int, *, rng: np.random.Generator):
        limit = np.sqrt(6.0 / (n_in + n_out))
        self.kernel = nnx.Param(jnp.asarray(rng.uniform(-limit, limit, (n_in, n_out)).astype(np.float32)))
        self.bias = nnx.Param(jnp.asarray(np.zeros((n_out,), np.float32)))

    def __call__(self, x):
        return x @ self.kernel[...] + self.bias[...]


def _dense(n_in: int, n_out: int, rng: np.random.Generator) -> Dense:
    return Dense(n_in, n_out, rng=rng)


class ExprHead(nnx.Module):
    """X (N, in_dim) -> expression logits (N, 8)."""

    def __init__(self, in_dim: int, *, rng: np.random.Generator):
        self.dense = _dense(in_dim, NUM_EXPR, rng)

    def __call__(self, x):
        return self.dense(x)


class VAHead(nnx.Module):
    """X (N, in_dim) -> tanh(X[:, -10:] @ W + b) (N, 2): only the backbone's 10 scores feed it."""

    def __init__(self, scores_len: int = SCORES_LEN, *, rng: np.random.Generator):
        self.dense = _dense(scores_len, 2, rng)
        self.scores_len = scores_len

    def __call__(self, x):
        return jnp.tanh(self.dense(x[:, x.shape[1] - self.scores_len:]))


class AUHead(nnx.Module):
    """X (N, in_dim) -> AU logits (N, 12) through a 128-unit ReLU layer."""

    def __init__(self, in_dim: int, hidden: int = AU_HIDDEN, *, rng: np.random.Generator):
        self.hidden = _dense(in_dim, hidden, rng)
        self.out = _dense(hidden, NUM_AU, rng)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


class MTLHead(nnx.Module):
    """x (N, in_dim), in_dim = D + 10 -> {"expr": (N, 8) logits, "va": (N, 2), "au": (N, 12) logits}.

    `head.expr`, `head.va`, `head.au` are the three Keras sub-models; each is trainable alone.
    """

    def __init__(self, in_dim: int, *, seed: int = 0):
        if in_dim < SCORES_LEN:
            raise ValueError(f"MTL head input must hold at least the {SCORES_LEN} scores, got {in_dim}")
        rng = np.random.default_rng(seed)
        self.in_dim = in_dim
        self.expr = ExprHead(in_dim, rng=rng)
        self.va = VAHead(SCORES_LEN, rng=rng)
        self.au = AUHead(in_dim, rng=rng)

    def __call__(self, x):
        return {"expr": self.expr(x), "va": self.va(x), "au": self.au(x)}

    def predict(self, x):
        """Activated outputs: {"expr": softmax (N, 8), "va": (N, 2), "au": sigmoid (N, 12)}."""
        out = self(x)
        return {"expr": jax.nn.softmax(out["expr"], -1), "va": out["va"], "au": jax.nn.sigmoid(out["au"])}

    def regularized_kernels(self):
        """The kernels under Keras' L2(1/512) regularizer: EXPR and VA (not AU)."""
        return [self.expr.dense.kernel[...], self.va.dense.kernel[...]]
