"""Training losses (spec §1a, §1c, §3.4, §9.14). Pure `jnp`, jit- and grad-compatible.

Every per-sample loss takes a mask `mask_n` (N,) (bool or 0/1 float) of the rows whose label
exists; masked rows contribute nothing, and a batch with no valid row gives a loss of exactly 0.
"Mean over the batch" means over the valid rows, which is what Keras computes when it is fed
only the rows of one task (the paper's way of training each head on its own rows).

The weight helpers (`class_weights`, `au_weights`) run once on the host over the training labels.
"""
from __future__ import annotations

import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hsemo_jax.metrics import batch_ccc

KERAS_EPSILON = 1e-7  # keras.backend.epsilon(): BCE clip, CCC denominator, Adam epsilon
TORCH_FLOAT_EPS = sys.float_info.epsilon  # DDAM's AttentionLoss eps
L2_LAMBDA = 1.0 / 512  # kernel_regularizer=L2(1/512) on the EXPR and VA kernels (spec §3.3)


# ----------------------------------------------------------------------------------------------
# host-side weights
# ----------------------------------------------------------------------------------------------
def class_weights(labels_n, num_classes: int, mask_n=None) -> np.ndarray:
    """w_c = max_k n_k / n_c over the labelled rows (spec §3.4: (1/n_c) / min_k (1/n_k)).

    Equals the AffectNet recipe's `1/count` normalised so the smallest weight is 1 (spec §1a).
    A class with no example gets weight 0 (it never appears in the loss). Returns float32 (C,).
    """
    labels = np.asarray(labels_n).reshape(-1)
    if mask_n is not None:
        labels = labels[np.asarray(mask_n).reshape(-1).astype(bool)]
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes)[:num_classes].astype(np.float64)
    if counts.max() == 0:
        return np.ones(num_classes, np.float32)
    w = np.where(counts > 0, counts.max() / np.maximum(counts, 1), 0.0)
    return w.astype(np.float32)


def au_weights(au_nk, mask_n=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-AU (w0, w1) = (N / (2 neg), N / (2 pos)) over the labelled rows (spec §3.4).

    au_nk: {0, 1} (N, K). An AU that never (or always) occurs gets weight 1 on the missing side.
    Returns two float32 (K,) arrays.
    """
    au = np.asarray(au_nk, np.float64)
    if mask_n is not None:
        au = au[np.asarray(mask_n).reshape(-1).astype(bool)]
    n = au.shape[0]
    pos = au.sum(0)
    neg = n - pos
    w0 = np.where(neg > 0, n / (2 * np.maximum(neg, 1)), 1.0)
    w1 = np.where(pos > 0, n / (2 * np.maximum(pos, 1)), 1.0)
    return w0.astype(np.float32), w1.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# device losses
# ----------------------------------------------------------------------------------------------
def _f(x):
    """At least float32 (bf16 activations are promoted; float64 stays, e.g. for gradient checks)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _mask(mask_n, n: int):
    return jnp.ones((n,), jnp.float32) if mask_n is None else jnp.asarray(mask_n).astype(jnp.float32)


def weighted_cross_entropy(logits_nc, labels_n, mask_n=None, class_weight_c=None, *,
                           label_smoothing: float = 0.0, normalize: str = "batch"):
    """Class-weighted softmax cross-entropy, a scalar.

    logits_nc (N, C) float; labels_n (N,) int (any value on masked rows); class_weight_c (C,) or
    None (all 1). Smoothing targets are t = (1 - ε) onehot(y) + ε / C.

    normalize="batch" (Keras `class_weight`, spec §9.14): per-sample loss times w_y, summed over
    the valid rows and divided by their number:
        Σ_i w_{y_i} · Σ_c t_ic (-log p_ic) / n
    normalize="weight" (torch `CrossEntropyLoss(weight=w, label_smoothing=ε)`, the AffectNet
    and DDAMFN recipes): the weighted mean
        Σ_i [(1 - ε) w_{y_i} (-log p_{i y_i}) + ε/C Σ_c w_c (-log p_ic)] / Σ_i w_{y_i}
    """
    n, c = logits_nc.shape
    m = _mask(mask_n, n)
    logp = jax.nn.log_softmax(_f(logits_nc), axis=-1)
    y = jnp.where(m > 0, jnp.asarray(labels_n).astype(jnp.int32), 0)
    w = jnp.ones((c,), jnp.float32) if class_weight_c is None else jnp.asarray(class_weight_c, jnp.float32)
    nll = -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]  # (N,)
    w_y = w[y] * m
    eps = label_smoothing
    if normalize == "batch":
        per_sample = (1 - eps) * nll + eps * (-jnp.mean(logp, axis=-1))
        return jnp.sum(w_y * per_sample) / jnp.maximum(jnp.sum(m), 1.0)
    if normalize == "weight":
        smooth = -jnp.sum(logp * w, axis=-1) / c  # (N,)
        num = jnp.sum((1 - eps) * w_y * nll + eps * m * smooth)
        den = jnp.sum(w_y)
        return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
    raise ValueError(f"normalize must be 'batch' or 'weight', got {normalize!r}")


def ccc_loss(pred_nk, true_nk, mask_n=None, eps: float = KERAS_EPSILON):
    """1 - mean_k CCC(pred[:, k], true[:, k]); CCC over the valid rows with population statistics
    and eps in the denominator, 2 s_xy / (var(y) + var(ŷ) + (ȳ - ŷ̄)² + eps) (spec §3.4,
    `metrics.batch_ccc`). For K = 2 (V, A) this is both the Keras head loss
    1 - 0.5 (CCC_V + CCC_A) and the AffectNet recipe's (1 - CCC_V)/2 + (1 - CCC_A)/2.
    pred_nk, true_nk (N, K). 0 when no row is valid."""
    m = _mask(mask_n, pred_nk.shape[0])
    cccs = jnp.stack([batch_ccc(pred_nk[:, k], true_nk[:, k], m, eps=eps) for k in range(pred_nk.shape[1])])
    return jnp.where(jnp.sum(m) > 0, 1.0 - jnp.mean(cccs), 0.0)


def weighted_bce(logits_nk, y_nk, mask_n=None, w0_k=None, w1_k=None, eps: float = KERAS_EPSILON):
    """The ABAW AU loss (spec §3.4): mean over valid rows x K of w0^(1-y) w1^y BCE(y, p), with
    p = sigmoid(logits) and Keras' `K.binary_crossentropy` on probabilities:
        p ← clip(p, eps, 1 - eps);  BCE = -(y log(p + eps) + (1 - y) log(1 - p + eps)).
    logits_nk, y_nk (N, K); w0_k, w1_k (K,) or None (1)."""
    n, k = logits_nk.shape
    m = _mask(mask_n, n)
    y = jnp.where(m[:, None] > 0, _f(y_nk), 0.0)
    p = jnp.clip(jax.nn.sigmoid(_f(logits_nk)), eps, 1 - eps)
    bce = -(y * jnp.log(p + eps) + (1 - y) * jnp.log(1 - p + eps))
    w0 = jnp.ones((k,)) if w0_k is None else jnp.asarray(w0_k, jnp.float32)
    w1 = jnp.ones((k,)) if w1_k is None else jnp.asarray(w1_k, jnp.float32)
    w = w0 ** (1 - y) * w1 ** y
    return jnp.sum(m[:, None] * w * bce) / (jnp.maximum(jnp.sum(m), 1.0) * k)


def l2_penalty(kernels: Sequence, lam: float = L2_LAMBDA):
    """Keras `regularizers.L2(lam)`: lam · Σ W² over the given kernels (not the biases)."""
    return lam * sum(jnp.sum(jnp.square(_f(w))) for w in kernels)


def attention_loss(maps: Sequence, eps: float = TORCH_FLOAT_EPS):
    """DDAMFN's AttentionLoss (spec §1c): n_pairs / (Σ_{i<j} MSE(A_i, A_j) + eps), 0 for one head.

    maps: the heads' attention maps, each (N, 7, 7, 512); MSE is the mean over all elements.
    Large when the heads agree, so minimizing it pushes them apart."""
    if len(maps) < 2:
        return jnp.zeros((), jnp.float32)
    total, pairs = 0.0, 0
    for i in range(len(maps) - 1):
        for j in range(i + 1, len(maps)):
            total = total + jnp.mean(jnp.square(_f(maps[i]) - _f(maps[j])))
            pairs += 1
    return pairs / (total + eps)
