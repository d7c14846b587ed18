"""Video-level intensity regressor, Pearson losses and metric (spec seed_extras §1.3 step 3, §1.4).

Two variants on the per-video statistics vector x (4·D):

* `linear`: Dense(K, sigmoid), Keras L2(1/512) penalty on the kernel, 100 epochs, unweighted
  Pearson loss (the notebook's `Pearson_ERI_loss`);
* `mlp`:    Dense(64, ReLU) -> Dense(K, sigmoid), 20 epochs, weighted Pearson loss.

The modules are `hsemo_jax.models.heads.LinearSigmoid` / `MLPSigmoid` (`build_regressor`): kernels
glorot-uniform, biases zero (Keras defaults). Training: Keras Adam (lr 1e-3, eps 1e-7;
`hsemo_jax.optim`), mini-batches in a fresh seeded order every epoch (the last batch is the
remainder, masked, as Keras' smaller last batch), one jitted `lax.scan` per epoch. The batch
follows the data size (`default_batch_size`): the notebook's 512 on its ~15k-video sets, 32 on a
few hundred videos, where 512 makes an epoch a single step. After every epoch the validation mean
Pearson is computed and the best epoch's weights are kept (Keras ModelCheckpoint on val
mean-Pearson). Without validation data the last epoch is kept.

Loss, per mini-batch, population statistics over its rows:
    r_k = mean((y - ȳ)(p - p̄)) / (σ_y σ_p + ε),  ε = 1e-7 (Keras epsilon)
    unweighted: 1 - (1/K) Σ_k r_k;   weighted: 1 - Σ_k w_k r_k with w normalised to sum 1.
The notebook's weights (K = 6, Hume-Vidmimic2 order) are w ∝ 1/[1, 8, 4, 2, 8, 8]; no weights
were published for other target sets, so there the default is uniform (= the unweighted loss).

Metric: P = (1/K) Σ_k pearson(ŷ[:, k], y[:, k]) over all videos (scipy's `pearsonr`, float64);
a constant column has no correlation and gives NaN, as in scipy.

Saved as DIR/regressor.npz (parameters, '/'-joined paths) + DIR/regressor.json (architecture,
targets, feature description, training summary): the `intensity_regressor` kind of
`models.heads.save_small`, written atomically.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hsemo_jax.errors import InputError
from hsemo_jax.models.heads import HIDDEN, VARIANTS, build_regressor, load_small, save_small
from hsemo_jax.optim import make_optimizer

KERAS_EPSILON = 1e-7
L2_LAMBDA = 1.0 / 512
DEFAULT_EPOCHS = {"linear": 100, "mlp": 20}
DEFAULT_LOSS = {"linear": "pearson", "mlp": "weighted"}
BATCH_RANGE = (32, 512)  # default batch: rows / STEPS_PER_EPOCH, within these bounds
STEPS_PER_EPOCH = 16
VIDMIMIC_INVERSE_WEIGHTS = (1.0, 8.0, 4.0, 2.0, 8.0, 8.0)


def vidmimic_weights() -> np.ndarray:
    """The notebook's weighted-loss weights for the 6 Hume-Vidmimic2 targets: 1/[1,8,4,2,8,8] / sum."""
    w = 1.0 / np.asarray(VIDMIMIC_INVERSE_WEIGHTS)
    return (w / w.sum()).astype(np.float32)


def default_weights(target_names: Sequence[str]) -> np.ndarray:
    """Spec weights for the Hume-Vidmimic2 set, uniform otherwise (normalised to sum 1)."""
    from hsemo_jax.intensity.labels import known_set

    if known_set(target_names) == "vidmimic6":
        return vidmimic_weights()
    k = len(target_names)
    return np.full(k, 1.0 / k, np.float32)


# ----------------------------------------------------------------------------------------------
# losses (jnp) and metric (numpy)
# ----------------------------------------------------------------------------------------------
def pearson_r(pred_nk, true_nk, mask_n=None, eps: float = KERAS_EPSILON):
    """(K,) r_k = mean((y-ȳ)(p-p̄)) / (σ_y σ_p + eps), population statistics over the rows where
    mask_n (N,) is true (all rows when None)."""
    p = jnp.asarray(pred_nk, jnp.float32)
    y = jnp.asarray(true_nk, jnp.float32)
    m = jnp.ones(p.shape[:1], jnp.float32) if mask_n is None else jnp.asarray(mask_n).astype(jnp.float32)
    m = m[:, None]
    n = jnp.maximum(jnp.sum(m), 1.0)
    dp = (p - jnp.sum(m * p, 0) / n) * m
    dy = (y - jnp.sum(m * y, 0) / n) * m
    cov = jnp.sum(dp * dy, 0) / n
    sp = jnp.sqrt(jnp.sum(dp * dp, 0) / n)
    sy = jnp.sqrt(jnp.sum(dy * dy, 0) / n)
    return cov / (sy * sp + eps)


def pearson_loss(pred_nk, true_nk, mask_n=None, eps: float = KERAS_EPSILON):
    """1 - (1/K) Σ_k r_k (the notebook's Pearson_ERI_loss)."""
    return 1.0 - jnp.mean(pearson_r(pred_nk, true_nk, mask_n, eps))


def weighted_pearson_loss(pred_nk, true_nk, weights_k, mask_n=None, eps: float = KERAS_EPSILON):
    """1 - Σ_k w_k r_k with w = weights_k / Σ weights_k."""
    w = jnp.asarray(weights_k, jnp.float32)
    return 1.0 - jnp.sum(w / jnp.sum(w) * pearson_r(pred_nk, true_nk, mask_n, eps))


def pearson_per_target(pred_nk, true_nk) -> np.ndarray:
    """(K,) float64 Pearson correlation of each column (scipy pearsonr; NaN for a constant column)."""
    p = np.asarray(pred_nk, np.float64)
    y = np.asarray(true_nk, np.float64)
    if p.shape != y.shape or p.ndim != 2:
        raise InputError(f"predictions {p.shape} and labels {y.shape} must both be (videos, targets)")
    if p.shape[0] < 2:
        raise InputError(f"Pearson correlation needs at least 2 videos, got {p.shape[0]}")
    dp, dy = p - p.mean(0), y - y.mean(0)
    num = (dp * dy).sum(0)
    den = np.sqrt((dp * dp).sum(0) * (dy * dy).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


def mean_pearson(pred_nk, true_nk) -> float:
    """P = (1/K) Σ_k pearson(ŷ[:, k], y[:, k]) (the challenge metric)."""
    return float(np.mean(pearson_per_target(pred_nk, true_nk)))


# ----------------------------------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------------------------------
def predict(model, x_nd, batch: int = 4096) -> np.ndarray:
    """(N, K) float32 intensities of the regressor on x_nd (N, in_dim)."""
    x = np.asarray(x_nd, np.float32)
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, xb: nnx.merge(graphdef, s)(xb))
    return np.concatenate([np.asarray(fn(state, x[i: i + batch])) for i in range(0, max(len(x), 1), batch)])


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
def default_batch_size(rows: int) -> int:
    """The batch for `rows` training videos: about STEPS_PER_EPOCH steps an epoch, within
    BATCH_RANGE (280 videos: 32, not the notebook's 512, which made an epoch one step and left the
    regressor far from trained after 100 epochs; ~15k videos: 512, the notebook's)."""
    low, high = BATCH_RANGE
    return int(min(high, max(low, rows // STEPS_PER_EPOCH)))


@dataclass
class TrainConfig:
    variant: str = "linear"
    epochs: int | None = None          # None: 100 (linear) / 20 (mlp)
    batch_size: int | None = None      # None: default_batch_size(training rows)
    lr: float = 1e-3
    loss: str | None = None            # "pearson" | "weighted"; None: per variant
    weights: Sequence[float] | None = None  # weighted loss; None: default_weights(targets)
    l2: float | None = None            # None: 1/512 (linear) / 0 (mlp)
    hidden: int = HIDDEN
    seed: int = 0

    def resolved(self, target_names: Sequence[str], rows: int) -> "TrainConfig":
        if self.variant not in VARIANTS:
            raise InputError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        loss = self.loss or DEFAULT_LOSS[self.variant]
        if loss not in ("pearson", "weighted"):
            raise InputError(f"loss must be 'pearson' or 'weighted', got {loss!r}")
        k = len(target_names)
        w = default_weights(target_names) if self.weights is None else np.asarray(self.weights, np.float32)
        if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise InputError(f"target weights must be {k} non-negative numbers with a positive sum, "
                             f"got {list(np.asarray(self.weights).tolist())}")
        epochs = DEFAULT_EPOCHS[self.variant] if self.epochs is None else int(self.epochs)
        batch = default_batch_size(rows) if self.batch_size is None else int(self.batch_size)
        if epochs < 1 or batch < 1 or not self.lr > 0 or self.hidden < 1:
            raise InputError("epochs, batch size, hidden units must be >= 1 and the learning rate > 0")
        l2 = (L2_LAMBDA if self.variant == "linear" else 0.0) if self.l2 is None else float(self.l2)
        return TrainConfig(variant=self.variant, epochs=epochs, batch_size=batch, lr=float(self.lr),
                           loss=loss, weights=[float(x) for x in w / w.sum()], l2=l2, hidden=int(self.hidden),
                           seed=int(self.seed))


@dataclass
class FitResult:
    model: object
    config: TrainConfig
    best_epoch: int                  # 1-based epoch whose weights were kept
    best_val: float | None           # its validation mean Pearson (None without validation)
    best_val_per_target: list | None
    history: list = field(default_factory=list)  # per epoch: {"epoch", "loss", "val_pearson"?}


def _epoch_index(n: int, batch: int, rng: np.random.Generator) -> np.ndarray:
    """(steps, batch) row indices of one shuffled epoch, -1 = padding of the last batch."""
    steps = -(-n // batch)
    idx = np.full(steps * batch, -1, np.int32)
    idx[:n] = rng.permutation(n)
    return idx.reshape(steps, batch)


def fit(x_train, y_train, target_names: Sequence[str], config: TrainConfig, *, x_val=None, y_val=None,
        log=None) -> FitResult:
    """Train a regressor on (x_train (N, F), y_train (N, K)); keep the best epoch by the validation
    mean Pearson when (x_val, y_val) are given, else the last epoch. `log(str)` gets one line per epoch."""
    x = np.asarray(x_train, np.float32)
    y = np.asarray(y_train, np.float32)
    k = len(target_names)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or y.shape[1] != k:
        raise InputError(f"training data: x {x.shape} and y {y.shape} must be (N, F) and (N, {k})")
    if x.shape[0] < 2:
        raise InputError(f"training data: need at least 2 videos, got {x.shape[0]}")
    has_val = x_val is not None
    if has_val:
        xv = np.asarray(x_val, np.float32)
        yv = np.asarray(y_val, np.float32)
        if xv.ndim != 2 or xv.shape[1] != x.shape[1] or yv.shape != (xv.shape[0], k):
            raise InputError(f"validation data: x {xv.shape} and y {yv.shape} do not match the training "
                             f"data ({x.shape[1]} features, {k} targets)")
    cfg = config.resolved(target_names, len(x))
    model = build_regressor(cfg.variant, x.shape[1], k, hidden=cfg.hidden, seed=cfg.seed)
    graphdef, params = nnx.split(model)
    tx = make_optimizer("keras_adam", optax.constant_schedule(cfg.lr), eps=KERAS_EPSILON)
    opt_state = tx.init(params)
    weights = jnp.asarray(cfg.weights, jnp.float32)
    use_weighted = cfg.loss == "weighted"
    l2 = float(cfg.l2)

    def loss_fn(p, xb, yb, mb):
        m = nnx.merge(graphdef, p)
        pred = m(xb)
        loss = weighted_pearson_loss(pred, yb, weights, mb) if use_weighted else pearson_loss(pred, yb, mb)
        if l2:
            loss = loss + l2 * sum(jnp.sum(jnp.square(w)) for w in m.regularized_kernels())
        return loss

    @jax.jit
    def run_epoch(p, s, x_dev, y_dev, idx_sb):
        def step(carry, idx_b):
            p, s = carry
            mb = idx_b >= 0
            safe = jnp.where(mb, idx_b, 0)
            loss, g = jax.value_and_grad(loss_fn)(p, x_dev[safe], y_dev[safe], mb)
            updates, s = tx.update(g, s, p)
            return (optax.apply_updates(p, updates), s), loss

        (p, s), losses = jax.lax.scan(step, (p, s), idx_sb)
        return p, s, jnp.mean(losses)

    apply = jax.jit(lambda p, xb: nnx.merge(graphdef, p)(xb))
    x_dev, y_dev = jnp.asarray(x), jnp.asarray(y)
    xv_dev = jnp.asarray(xv) if has_val else None
    rng = np.random.default_rng(cfg.seed)
    history, best = [], None  # best = (val, epoch, params, per_target)
    for epoch in range(1, cfg.epochs + 1):
        params, opt_state, loss = run_epoch(params, opt_state, x_dev, y_dev,
                                            jnp.asarray(_epoch_index(len(x), cfg.batch_size, rng)))
        row = {"epoch": epoch, "loss": float(loss)}
        if not np.isfinite(row["loss"]):
            raise InputError(f"training diverged at epoch {epoch} (loss {row['loss']}); check the features "
                             "for constant columns or huge values")
        if has_val:
            per = pearson_per_target(np.asarray(apply(params, xv_dev)), yv)
            val = float(np.mean(per))
            row["val_pearson"] = val
            if np.isfinite(val) and (best is None or val > best[0]):
                best = (val, epoch, jax.tree.map(np.asarray, params), per)
        history.append(row)
        if log:
            log(f"epoch {epoch:3d}/{cfg.epochs}  loss {row['loss']:.4f}"
                + (f"  val mean Pearson {row['val_pearson']:.4f}" if has_val else ""))
    if best is not None:
        nnx.update(model, jax.tree.map(jnp.asarray, best[2]))
        return FitResult(model, cfg, best[1], best[0], [float(v) for v in best[3]], history)
    nnx.update(model, params)
    return FitResult(model, cfg, cfg.epochs, None, None, history)


# ----------------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------------
def save_regressor(model, out_dir: str | os.PathLike, meta: dict) -> Path:
    """Write OUT/regressor.npz + OUT/regressor.json. meta must hold variant, in_dim, targets
    (names), hidden; anything else (features, training summary) is stored as is."""
    return save_small(model, out_dir, {"kind": "intensity_regressor", **meta})


def load_regressor(run_dir: str | os.PathLike):
    """(model, meta) saved by `save_regressor` in `run_dir`."""
    return load_small(run_dir, "intensity_regressor")
