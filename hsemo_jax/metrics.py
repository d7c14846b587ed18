"""ABAW metrics (spec §3.5, §5, §9.15): CCC, macro-F1, per-AU F1, P_VA/P_EXPR/P_AU/P_MTL, KL, kappa.

Split of work: the O(N) part (confusion counts, first and second moments) runs on the device in a
jitted function; the O(classes) finalisation runs on the host in float64 from those exact integer
counts. F1 and kappa therefore equal scikit-learn's to the last bit of float64 on the same labels;
CCC moments are accumulated in float32 (two-pass, centred), which agrees with numpy float64 to
about 1e-6 relative.

Missing-label codes (spec §3.2): VA is valid iff valence > -5 and arousal > -5; EXPR iff the label
is > -1; AU iff min over the 12 AUs is >= 0 (a whole row is valid or not).
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hsemo_jax import checks
from hsemo_jax.errors import InputError
from hsemo_jax.labels import MISSING_EXPR, MISSING_VA


# ----------------------------------------------------------------------------------------------
# device kernels (shapes: leading batch dims allowed, reduction over the frame axis N)
# ----------------------------------------------------------------------------------------------
@partial(jax.jit, static_argnames="num_classes")
def class_counts(y_true_n, y_pred_n, mask_n, num_classes: int):
    """Per-class counts for multi-class F1, from a scatter-added confusion matrix.

    y_true_n, y_pred_n: int (..., N) in [0, num_classes); mask_n: bool (..., N) (all broadcastable).
    Returns int32 (..., C) arrays (tp, n_pred, n_true) over the masked frames.
    """
    c = num_classes
    yt, yp, m = jnp.broadcast_arrays(y_true_n, y_pred_n, mask_n)
    batch = yt.shape[:-1]
    g = int(np.prod(batch, dtype=np.int64))
    base = (jnp.arange(g, dtype=jnp.int32) * (c * c)).reshape(batch + (1,))
    idx = base + yt.astype(jnp.int32) * c + yp.astype(jnp.int32)
    conf = jnp.zeros(g * c * c, jnp.int32).at[idx.reshape(-1)].add(m.reshape(-1).astype(jnp.int32))
    conf = conf.reshape(batch + (c, c))  # rows = truth, columns = prediction
    return jnp.diagonal(conf, axis1=-2, axis2=-1), conf.sum(-2), conf.sum(-1)


@jax.jit
def binary_counts(y_true_na, pred_na, mask_n):
    """Per-column counts for binary F1 (positive class 1).

    y_true_na: {0,1} (..., N, A); pred_na: bool (..., N, A); mask_n: bool (..., N).
    Returns int32 (..., A) arrays (tp, n_pred, n_true).
    """
    m = mask_n.astype(jnp.int32)[..., None]
    t = (y_true_na > 0).astype(jnp.int32) * m
    p = pred_na.astype(jnp.int32) * m
    return (t * p).sum(-2), p.sum(-2), t.sum(-2)


def _at_least_f32(a):
    a = jnp.asarray(a)
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def ccc_moments(x_n, y_n, mask_n=None, *, ddof: int = 0):
    """Masked moments for CCC over the last axis, two-pass (centred), at least float32, jnp and
    differentiable. x_n, y_n: (..., N); mask_n: (..., N) bool or 0/1, None = every row.

    Returns (mean_x, mean_y, var_x, var_y, cov_xy, count), each (...): means over the masked rows,
    (co)variances divided by max(count - ddof, 1) (ddof 0: population, 1: unbiased)."""
    x, y = _at_least_f32(x_n), _at_least_f32(y_n)
    m = jnp.ones(x.shape[-1:], jnp.float32) if mask_n is None else jnp.asarray(mask_n).astype(jnp.float32)
    count = m.sum(-1, keepdims=True)
    n = jnp.maximum(count, 1.0)
    mx = (x * m).sum(-1, keepdims=True) / n
    my = (y * m).sum(-1, keepdims=True) / n
    dx = (x - mx) * m
    dy = (y - my) * m
    d = jnp.maximum(count - ddof, 1.0)[..., 0]
    return mx[..., 0], my[..., 0], (dx * dx).sum(-1) / d, (dy * dy).sum(-1) / d, (dx * dy).sum(-1) / d, count[..., 0]


@jax.jit
def ccc_stats(x_n, y_n, mask_n):
    """Population moments for CCC over the last axis, masked, float32 two-pass (`ccc_moments`).

    x_n (truth), y_n (prediction): (..., N); mask_n: (..., N). Returns (..., 5):
    [mean_x, mean_y, var_x, var_y, cov_xy].
    """
    return jnp.stack(jnp.broadcast_arrays(*ccc_moments(x_n, y_n, mask_n)[:5]), axis=-1)


def batch_ccc(pred_n, true_n, mask_n=None, *, eps: float = 0.0, unbiased: bool = False):
    """CCC of one batch as a differentiable jnp scalar (the losses' CCC), over the masked rows:
        2 cov / (var(pred) + var(true) + (mean_pred - mean_true)^2 + eps)
    with population (co)variances, or unbiased ones (n - 1) when `unbiased`. 0 where fewer than
    1 (unbiased: 2) rows are masked or the denominator is 0. pred_n, true_n, mask_n: (..., N).

    The ABAW-7 head's loss uses population statistics and eps = Keras' 1e-7 (spec §3.4), the
    ABAW-2 distillation unbiased statistics without eps (spec §2.4); the validation metric is
    `ccc` (host, float64 from `ccc_stats`, NaN where undefined)."""
    mx, my, vx, vy, cxy, count = ccc_moments(pred_n, true_n, mask_n, ddof=int(unbiased))
    den = vx + vy + (mx - my) ** 2 + eps
    ok = (count > int(unbiased)) & (den > 0)
    return jnp.where(ok, 2 * cxy / jnp.where(ok, den, 1.0), 0.0)


@partial(jax.jit, static_argnames="num_classes")
def confusion(a_n, b_n, num_classes: int):
    """int32 (C, C) confusion matrix, rows = a, columns = b."""
    oh_a = jax.nn.one_hot(a_n, num_classes, dtype=jnp.int32)
    oh_b = jax.nn.one_hot(b_n, num_classes, dtype=jnp.int32)
    return oh_a.T @ oh_b


# ----------------------------------------------------------------------------------------------
# host finalisers (float64)
# ----------------------------------------------------------------------------------------------
def f1_from_counts(tp, n_pred, n_true) -> np.ndarray:
    """Binary F1 = 2TP / (2TP + FP + FN) = 2TP / (n_pred + n_true); 0 where undefined (sklearn zero_division=0)."""
    tp, n_pred, n_true = (np.asarray(a, dtype=np.float64) for a in (tp, n_pred, n_true))
    denom = n_pred + n_true
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2.0 * tp / np.where(denom > 0, denom, 1.0), 0.0)


def macro_from_counts(tp, n_pred, n_true, labels="present") -> np.ndarray:
    """Macro average of per-class F1 over the last axis.

    labels="present": classes occurring in y_true or y_pred (sklearn's default labels);
    labels="all": every class, absent ones scoring 0; or a sequence of class ids (sklearn `labels=`).
    """
    f1 = f1_from_counts(tp, n_pred, n_true)
    if isinstance(labels, str):
        if labels == "present":
            sel = (np.asarray(n_pred) + np.asarray(n_true)) > 0
        elif labels == "all":
            sel = np.ones_like(f1, dtype=bool)
        else:
            raise InputError(f"labels: expected 'present', 'all' or a list of class ids, got {labels!r}")
    else:
        ids = np.asarray(labels, dtype=np.int64)
        if ids.size == 0 or ids.min() < 0 or ids.max() >= f1.shape[-1]:
            raise InputError(f"labels: class ids must lie in [0, {f1.shape[-1] - 1}], got {list(ids)}")
        sel = np.zeros(f1.shape[-1], dtype=bool)
        sel[ids] = True
        sel = np.broadcast_to(sel, f1.shape)
    k = sel.sum(-1)
    return np.where(k > 0, (f1 * sel).sum(-1) / np.maximum(k, 1), 0.0)


def ccc_from_stats(stats) -> np.ndarray:
    """CCC = 2 cov / (var_x + var_y + (mean_x - mean_y)^2) from `ccc_stats` output (..., 5).

    This equals the notebook's `CCC_score` (rho * 2 sx sy / (sx^2 + sy^2 + dmu^2), population std)
    whenever both inputs vary; for a constant prediction it gives 0 where `CCC_score` gives NaN.
    """
    s = np.asarray(stats, dtype=np.float64)
    mx, my, vx, vy, cxy = (s[..., i] for i in range(5))
    denom = vx + vy + (mx - my) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2.0 * cxy / np.where(denom > 0, denom, 1.0), np.nan)


# ----------------------------------------------------------------------------------------------
# public metrics
# ----------------------------------------------------------------------------------------------
def _masked_rows(mask, name, n):
    m = checks.as_mask(mask, name, n)
    if not m.any():
        raise InputError(f"{name}: no valid frames to evaluate")
    return m


def ccc(y_true, y_pred, mask=None):
    """Lin's concordance correlation coefficient with population statistics (spec §3.5).

    y_true, y_pred: (N,) -> float, or (N, D) -> (D,) per column (e.g. D=2 for valence, arousal).
    mask: optional bool (N,) selecting the frames to use.
    """
    x = checks.as_float(y_true, "y_true", ndim=(1, 2))
    y = checks.as_float(y_pred, "y_pred", ndim=(1, 2))
    n = checks.same_length(y_true=x, y_pred=y)
    if x.shape != y.shape:
        raise InputError(f"shape mismatch: y_true {x.shape} vs y_pred {y.shape}")
    m = _masked_rows(mask, "mask", n)
    out = ccc_from_stats(ccc_stats(x.T, y.T, m))
    return float(out) if x.ndim == 1 else out


def _labels_from_pred(y_pred, num_classes, name="y_pred"):
    p = np.asarray(y_pred)
    if p.ndim == 2:
        scores = checks.as_float(p, name, ndim=2)
        if scores.shape[1] != num_classes:
            raise InputError(f"{name}: expected {num_classes} score columns, got {scores.shape[1]}")
        return np.argmax(scores, axis=1).astype(np.int32)
    return checks.as_labels(p, name, low=0, high=num_classes - 1)


def macro_f1(y_true, y_pred, num_classes: int = 8, *, labels="present", mask=None) -> float:
    """Macro-F1, scikit-learn semantics (`f1_score(y_true, y_pred, average='macro')`, zero_division=0).

    y_true: int (N,) in [0, num_classes); y_pred: int (N,) labels or (N, num_classes) scores (argmax).
    mask: optional bool (N,); rows outside it are ignored (e.g. EXPR == -1).

    Which classes are averaged:
      * labels="present" (default): the classes that occur in y_true or y_pred, which is what
        sklearn does without `labels=`. This is P_EXPR as published (spec §3.5, §9.15): a class
        absent from both the ground truth and the predictions does not count.
      * labels="all": all `num_classes` classes; an absent class scores F1 = 0 and counts in the
        mean (the notebook's `metric_for_Exp`; equal to the default whenever every class occurs).
      * a sequence of class ids: exactly those (sklearn's `labels=`).
    A class present in y_pred but not in y_true scores 0 and counts, as in sklearn.
    """
    n = checks.same_length(y_true=y_true, y_pred=y_pred)
    m = _masked_rows(mask, "mask", n)
    t = checks.as_labels(np.where(m, np.asarray(y_true), 0), "y_true", low=0, high=num_classes - 1)
    p = _labels_from_pred(y_pred, num_classes)
    tp, npred, ntrue = class_counts(t, p, m, num_classes=num_classes)
    return float(macro_from_counts(tp, npred, ntrue, labels))


def accuracy(y_true, y_pred, num_classes: int = 8, *, mask=None) -> float:
    """Fraction of masked frames with argmax/label equal to y_true."""
    n = checks.same_length(y_true=y_true, y_pred=y_pred)
    m = _masked_rows(mask, "mask", n)
    t = checks.as_labels(np.where(m, np.asarray(y_true), 0), "y_true", low=0, high=num_classes - 1)
    p = _labels_from_pred(y_pred, num_classes)
    return float(np.asarray(class_counts(t, p, m, num_classes=num_classes)[0]).sum() / m.sum())


def au_f1(y_true, probs, thresholds=0.5, *, mask=None) -> np.ndarray:
    """Per-AU binary F1 (sklearn `f1_score(y[:, i], probs[:, i] >= t_i)`, zero_division=0).

    y_true: int (N, A) in {0, 1}, -1 = missing; probs: (N, A) scores; thresholds: scalar or (A,).
    mask: optional bool (N,); default: rows whose min label is >= 0 (spec §3.2).
    Prediction is `probs >= t` compared in float32. Returns float64 (A,); P_AU is its mean.
    """
    t, p, m = checks.au_inputs(y_true, probs, mask)
    thr = np.asarray(thresholds, dtype=np.float32)
    if thr.ndim > 1 or thr.size not in (1, p.shape[1]) or not np.isfinite(thr).all():
        raise InputError(f"thresholds: expected a number or {p.shape[1]} numbers, got {np.asarray(thresholds).tolist()}")
    thr = np.broadcast_to(thr.reshape(-1) if thr.ndim else thr, (p.shape[1],))
    tp, npred, ntrue = binary_counts(np.maximum(t, 0), jnp.asarray(p) >= jnp.asarray(thr), m)
    return f1_from_counts(tp, npred, ntrue)


def va_mask(va_true) -> np.ndarray:
    """Valid VA rows: valence > -5 and arousal > -5 (spec §3.2)."""
    va = np.asarray(va_true)
    return (va[:, 0] > MISSING_VA) & (va[:, 1] > MISSING_VA)


def abaw_mtl(*, va_true=None, va_pred=None, expr_true=None, expr_pred=None, au_true=None, au_probs=None,
             au_thresholds=0.5, num_expr_classes: int = 8) -> dict:
    """ABAW multi-task challenge metrics (spec §3.5) over row-aligned truth and predictions.

    va_true (N, 2) with -5 = missing, va_pred (N, 2); expr_true (N,) with -1 = missing, expr_pred (N,)
    labels or (N, 8) scores; au_true (N, 12) with -1 = missing, au_probs (N, 12) probabilities or
    0/1 predictions, au_thresholds scalar or (12,). A task whose arrays are None is skipped.

    Returns a dict with P_VA, CCC_V, CCC_A, n_VA; P_EXPR, EXPR_accuracy, n_EXPR; P_AU, AU_F1 (12,),
    n_AU; and P_MTL = P_VA + P_EXPR + P_AU when all three tasks are given.
    """
    out: dict = {}
    if (va_true is None) != (va_pred is None):
        raise InputError("abaw_mtl: give both va_true and va_pred, or neither")
    if va_true is not None:
        t = checks.as_float(va_true, "va_true", ndim=2)
        p = checks.as_float(va_pred, "va_pred", ndim=2)
        checks.same_length(va_true=t, va_pred=p)
        if t.shape[1] != 2 or p.shape[1] != 2:
            raise InputError(f"VA arrays need 2 columns (valence, arousal); got {t.shape} and {p.shape}")
        m = va_mask(t)
        c = ccc(np.where(m[:, None], t, 0.0), p, mask=m)
        out.update(CCC_V=float(c[0]), CCC_A=float(c[1]), P_VA=float(c.mean()), n_VA=int(m.sum()))
    if (expr_true is None) != (expr_pred is None):
        raise InputError("abaw_mtl: give both expr_true and expr_pred, or neither")
    if expr_true is not None:
        t = checks.as_labels(expr_true, "expr_true", low=MISSING_EXPR, high=num_expr_classes - 1)
        m = t > MISSING_EXPR
        out.update(P_EXPR=macro_f1(t, expr_pred, num_expr_classes, mask=m),
                   EXPR_accuracy=accuracy(t, expr_pred, num_expr_classes, mask=m), n_EXPR=int(m.sum()))
    if (au_true is None) != (au_probs is None):
        raise InputError("abaw_mtl: give both au_true and au_probs, or neither")
    if au_true is not None:
        f1 = au_f1(au_true, au_probs, au_thresholds)
        out.update(P_AU=float(f1.mean()), AU_F1=f1,
                   n_AU=int((np.asarray(au_true).min(axis=1) >= 0).sum()))
    if all(k in out for k in ("P_VA", "P_EXPR", "P_AU")):
        out["P_MTL"] = out["P_VA"] + out["P_EXPR"] + out["P_AU"]
    return out


def kl_divergence(prior, labels, num_classes: int | None = None) -> float:
    """KL(prior || q) = sum_k p_k log(p_k / q_k), natural log, no epsilon (spec §5).

    prior: (K,) probabilities (normalised here); labels: int (N,) predicted classes, pooled into the
    histogram q. A class with p_k > 0 that is never predicted gives +inf, as in the notebook; terms
    with p_k = 0 contribute 0.
    """
    p = checks.as_float(prior, "prior", ndim=1).astype(np.float64)
    k = p.shape[0] if num_classes is None else num_classes
    if p.shape[0] != k or (p < 0).any() or p.sum() <= 0:
        raise InputError(f"prior: expected {k} non-negative weights, got {p.tolist()}")
    p = p / p.sum()
    lab = checks.as_labels(labels, "labels", low=0, high=k - 1)
    if lab.size == 0:
        raise InputError("labels: no frames")
    q = np.bincount(lab, minlength=k).astype(np.float64) / lab.size
    with np.errstate(divide="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return float(terms.sum())


def cohen_kappa(a, b, num_classes: int | None = None) -> float:
    """Cohen's kappa between two label arrays, equal to sklearn `cohen_kappa_score(a, b)`.

    a, b: int (N,). Classes absent from both do not change the value. Returns NaN when kappa is
    undefined (both raters always give the same single class), as sklearn does.
    """
    checks.same_length(a=a, b=b)
    hi = int(max(np.max(a), np.max(b))) if num_classes is None else num_classes - 1
    x = checks.as_labels(a, "a", low=0, high=hi)
    y = checks.as_labels(b, "b", low=0, high=hi)
    cm = np.asarray(confusion(x, y, num_classes=hi + 1), dtype=np.float64)
    n = cm.sum()
    expected = np.outer(cm.sum(1), cm.sum(0)) / n
    off = 1.0 - np.eye(hi + 1)
    num, den = (off * cm).sum(), (off * expected).sum()
    return float(1.0 - num / den) if den > 0 else float("nan")


__all__: Sequence[str] = (
    "ccc", "macro_f1", "accuracy", "au_f1", "abaw_mtl", "kl_divergence",
    "cohen_kappa", "va_mask", "class_counts", "binary_counts", "ccc_stats", "f1_from_counts",
    "macro_from_counts", "ccc_from_stats", "ccc_moments", "batch_ccc",
)
