"""ABAW-2 multi-database teacher-student losses and objective (spec §2.2-2.4).

Batches hold three streams (spec §2.3), each `batch_size` rows, keys "<stream>.<name>":
    streams   expr (EXPR labels), va (VA labels), expr_va (both; spec §2.2: a data stream, not a head)
    names     images uint8 (B, S, S, 3); expr int (B,) + expr_mask; va float (B, 2) + va_mask
A label that does not exist (the files' -2) has mask False. The "sub" label of a stream (VA on the
EXPR stream, EXPR on the VA stream) comes from the shared-annotation matching (`distill/data.py`).

Losses (spec §2.4; the original `optimize_parameters` / `optimize_parameters_kd_v2`):
    L_EXPR(s, y)  = CE(s, y)
    L_d(s_d, y_d) = CE(s_d, bin(y_d)) + lambda_ccc (1 - CCC(E[s_d], y_d)),   d in {v, a}, CCC unbiased
    KD(s, t)      = T^2 KL(softmax(t / T) || softmax(s / T)), mean over rows; per 20-bin block for VA
    G             = (1 - lambda) L_sup + lambda KD,  lambda = lambda_teacher = 0.4, T = 1.5
  teacher: L = mean(L_EXPR on expr, L_EXPR on expr_va) + mean(L_v + L_a on va, L_v + L_a on expr_va)
           (ground truth only: sub labels are not used)
  student: every head on every stream takes the split rule on its label mask:
           labelled rows -> G, unlabelled rows -> KD only, entry = unweighted mean of the two group
           losses (for VA per dimension d, then L_v-entry + L_a-entry). A stream's own head is fully
           labelled, so this is G on the whole batch, as in the spec; EXPR_VA gets G on both heads.
           L = mean of the 3 EXPR-head entries + mean of the 3 VA-head entries.
Corner cases (choices; the original gives NaN or skips):
  * an empty group contributes nothing: the entry is the mean over the non-empty groups (as the
    original's list mean, which only appends a group that has rows); an entry is never NaN;
  * CCC over fewer than 2 labelled rows (the original: NaN for 1 row) -> its 1 - CCC term is 0;
    a zero CCC denominator gives CCC 0;
  * a row whose *main* label is missing is treated like a missing sub label (KD only for the
    student; no loss for the teacher), so half-labelled streams train without special cases.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from hsemo_jax import metrics as M
from hsemo_jax.distill import model as distill_model
from hsemo_jax.train import losses

STREAMS = ("expr", "va", "expr_va")
MISSING = -2  # the spec's missing-label sentinel (spec §2.3)


# ----------------------------------------------------------------------------------------------
# VA bins
# ----------------------------------------------------------------------------------------------
def va_bin_edges(bins: int = 20) -> np.ndarray:
    """linspace(-1, 1, bins + 1) in float64, each rounded *up* to float32, so that a float32 y
    compares with them exactly as with the float64 edges (np.digitize in the original)."""
    e64 = np.linspace(-1.0, 1.0, bins + 1)
    e32 = e64.astype(np.float32)
    return np.where(e32 < e64, np.nextafter(e32, np.float32(np.inf)), e32).astype(np.float32)


def va_bin_centers(bins: int = 20):
    """The values the bins decode to: linspace(-1, 1, bins) (the original's `self.bins`)."""
    return jnp.linspace(-1.0, 1.0, bins)


def va_to_bins(y, bins: int = 20):
    """Bin index of y in [-1, 1] with `bins + 1` equal edges; y = 1 goes into the last bin
    (np.digitize(y, edges) - 1, clipped). Values outside [-1, 1] are clipped too (masked rows)."""
    y = jnp.asarray(y, jnp.float32)
    idx = jnp.sum(y[..., None] >= va_bin_edges(bins), axis=-1) - 1  # = np.digitize(y, edges) - 1
    return jnp.clip(idx, 0, bins - 1).astype(jnp.int32)


def decode_va(va_logits, bins: int = 20):
    """(N, 2 bins) logits -> (N, 2) [valence, arousal]: softmax per block, expectation over the centers."""
    c = va_bin_centers(bins)
    v = jax.nn.softmax(va_logits[:, :bins].astype(jnp.float32), -1) @ c
    a = jax.nn.softmax(va_logits[:, bins:].astype(jnp.float32), -1) @ c
    return jnp.stack([v, a], axis=1)


# ----------------------------------------------------------------------------------------------
# masked losses (mean over the rows whose mask is set)
# ----------------------------------------------------------------------------------------------
def _m(mask, n):
    return jnp.ones((n,), jnp.float32) if mask is None else jnp.asarray(mask).astype(jnp.float32)


def kd_loss(student_logits, teacher_logits, mask=None, temperature: float = 1.5):
    """T^2 KL(softmax(t/T) || softmax(s/T)), summed over classes, mean over the masked rows
    (torch `KLDivLoss(reduction='batchmean')` on the rows of the group); 0 for no row."""
    m = _m(mask, student_logits.shape[0])
    log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, -1)
    log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, -1)
    kl = jnp.sum(jnp.exp(log_t) * (log_t - log_s), -1)
    return temperature ** 2 * jnp.sum(m * kl) / jnp.maximum(jnp.sum(m), 1.0)


def expr_sup_loss(logits, y, mask=None):
    """CE(logits, y) over the masked rows (unweighted `losses.weighted_cross_entropy`)."""
    return losses.weighted_cross_entropy(logits, y, mask)


def va_dim_sup_loss(logits_d, y_d, mask=None, lambda_ccc: float = 1.0):
    """L_d = CE(K-bin logits, bin(y_d)) + lambda_ccc (1 - CCC(E[bin], y_d)) over the masked rows;
    CCC with unbiased statistics and no epsilon (the original CCCLoss); the CCC term is 0 with
    fewer than 2 rows, and the CCC 0 where its denominator is 0."""
    bins = logits_d.shape[1]
    m = _m(mask, logits_d.shape[0])
    ce = losses.weighted_cross_entropy(logits_d, va_to_bins(y_d, bins), m)
    expect = jax.nn.softmax(logits_d.astype(jnp.float32), -1) @ va_bin_centers(bins)
    ccc_term = jnp.where(jnp.sum(m) >= 2, 1.0 - M.batch_ccc(expect, y_d, m, unbiased=True), 0.0)
    return ce + lambda_ccc * ccc_term


def split_rule(sup_fn, kd_fn, mask, lambda_teacher: float):
    """Spec §2.4 split: labelled rows -> (1 - lam) sup + lam KD, unlabelled rows -> KD, then the
    unweighted mean over the non-empty groups. sup_fn(mask), kd_fn(mask) -> scalars."""
    lab = jnp.asarray(mask).astype(jnp.float32)
    unl = 1.0 - lab
    g_lab = (1.0 - lambda_teacher) * sup_fn(lab) + lambda_teacher * kd_fn(lab)
    g_unl = kd_fn(unl)
    has_lab = (jnp.sum(lab) > 0).astype(jnp.float32)
    has_unl = (jnp.sum(unl) > 0).astype(jnp.float32)
    return (has_lab * g_lab + has_unl * g_unl) / jnp.maximum(has_lab + has_unl, 1.0)


def student_expr_entry(logits, teacher_logits, y, mask, *, temperature=1.5, lambda_teacher=0.4):
    return split_rule(lambda m: expr_sup_loss(logits, y, m),
                      lambda m: kd_loss(logits, teacher_logits, m, temperature), mask, lambda_teacher)


def student_va_entry(logits, teacher_logits, y, mask, *, temperature=1.5, lambda_teacher=0.4, lambda_ccc=1.0):
    """Sum over d in {v, a} of the split rule on that dimension's K-bin block."""
    k = logits.shape[1] // 2
    total = 0.0
    for d in range(2):
        s, t = logits[:, d * k:(d + 1) * k], teacher_logits[:, d * k:(d + 1) * k]
        total = total + split_rule(lambda m: va_dim_sup_loss(s, y[:, d], m, lambda_ccc),
                                   lambda m: kd_loss(s, t, m, temperature), mask, lambda_teacher)
    return total


def teacher_va_entry(logits, y, mask, lambda_ccc=1.0):
    k = logits.shape[1] // 2
    return sum(va_dim_sup_loss(logits[:, d * k:(d + 1) * k], y[:, d], mask, lambda_ccc) for d in range(2))


# ----------------------------------------------------------------------------------------------
# objective
# ----------------------------------------------------------------------------------------------
def _images01(images_nhwc):
    return images_nhwc.astype(jnp.float32) / 255.0



@dataclass
class DistillObjective:
    """mode "teacher" (ground truth only) or "student" (needs a model with `attach_teacher`).

    streams: the streams present in the batches (a subset of STREAMS, in that order). hflip:
    mirror each image with probability 1/2 (teacher and student see the same flipped image).
    Follows the trainer's objective interface (loss / predict / evaluate, `objectives.py`).
    Logged parts: loss_expr / loss_va (the two means) and entry_<head>_<stream> (each entry).
    compute_dtype: the trainer's (`train.compute_dtype`); the student's and the teacher's inputs
    and the teacher's weights are cast to it (`distill/model.py`)."""

    mode: str
    streams: tuple[str, ...] = STREAMS
    temperature: float = 1.5
    lambda_teacher: float = 0.4
    lambda_ccc: float = 1.0
    hflip: bool = True
    compute_dtype: str = "float32"

    def __post_init__(self):
        if self.mode not in ("teacher", "student"):
            raise ValueError(f"mode must be 'teacher' or 'student', got {self.mode!r}")

    def loss(self, model, batch, rng):
        expr_entries, va_entries, parts = [], [], {}
        k_flip, k_drop = jax.random.split(rng)
        x = jnp.stack([_images01(batch[f"{s}.images"]) for s in self.streams])  # (S, B, H, W, 3)
        if self.hflip:
            flip = jax.random.bernoulli(k_flip, 0.5, x.shape[:2])
            x = jnp.where(flip[:, :, None, None, None], x[:, :, :, ::-1], x)
        out = distill_model.scan_streams(model, x, jax.random.split(k_drop, len(self.streams)), self.compute_dtype)
        teacher = distill_model.teacher_logits(model, x, self.compute_dtype) if self.mode == "student" else None
        for i, s in enumerate(self.streams):
            e, v = out["expr"][i].astype(jnp.float32), out["va"][i].astype(jnp.float32)
            y_e, m_e = batch[f"{s}.expr"], batch[f"{s}.expr_mask"]
            y_v, m_v = batch[f"{s}.va"], batch[f"{s}.va_mask"]
            if self.mode == "teacher":
                if s in ("expr", "expr_va"):
                    expr_entries.append(expr_sup_loss(e, y_e, m_e))
                    parts[f"entry_expr_{s}"] = expr_entries[-1]
                if s in ("va", "expr_va"):
                    va_entries.append(teacher_va_entry(v, y_v, m_v, self.lambda_ccc))
                    parts[f"entry_va_{s}"] = va_entries[-1]
            else:
                t_e, t_v = teacher["expr"][i], teacher["va"][i]
                expr_entries.append(student_expr_entry(e, t_e, y_e, m_e, temperature=self.temperature,
                                                       lambda_teacher=self.lambda_teacher))
                va_entries.append(student_va_entry(v, t_v, y_v, m_v, temperature=self.temperature,
                                                   lambda_teacher=self.lambda_teacher, lambda_ccc=self.lambda_ccc))
                parts[f"entry_expr_{s}"], parts[f"entry_va_{s}"] = expr_entries[-1], va_entries[-1]
        total = 0.0
        if expr_entries:
            parts["loss_expr"] = sum(expr_entries) / len(expr_entries)
            total = total + parts["loss_expr"]
        if va_entries:
            parts["loss_va"] = sum(va_entries) / len(va_entries)
            total = total + parts["loss_va"]
        return total, parts

    def predict(self, model, batch):
        out = model(model.prepare(_images01(batch["images"])).astype(self.compute_dtype))
        return {"expr": jax.nn.softmax(out["expr"].astype(jnp.float32), -1),
                "va": decode_va(out["va"], model.va_bins)}

    def evaluate(self, preds: dict, data: dict) -> dict:
        """Spec §2.5 model selection: score = (0.67 F1 + 0.33 Acc on EXPR) + CCC_V + CCC_A over the
        labelled validation rows (population CCC, as the original's `CCC_score`)."""
        res = {}
        score = 0.0
        num_expr = preds["expr"].shape[1]
        m = np.asarray(data["expr_mask"], bool)
        if m.any():
            res["accuracy"] = M.accuracy(data["expr"], preds["expr"], num_expr, mask=m)
            res["macro_f1"] = M.macro_f1(data["expr"], preds["expr"], num_expr, mask=m)
            res["EXPR_score"] = 0.67 * res["macro_f1"] + 0.33 * res["accuracy"]
            score += res["EXPR_score"]
        mv = np.asarray(data["va_mask"], bool)
        if mv.any():
            c = np.nan_to_num(M.ccc(data["va"], preds["va"], mask=mv))
            res.update(CCC_V=float(c[0]), CCC_A=float(c[1]))
            score += float(c.sum())
        res["score"] = float(score)
        return {k: float(v) for k, v in res.items()}
