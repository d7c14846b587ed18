"""What is optimized: losses on a model's outputs for a batch, plus prediction and validation metrics.

An objective has
  loss(model, batch, rng) -> (scalar loss, {name: scalar})   model in train mode, inside jit
  predict(model, batch) -> {name: (B, ...)}                   model in eval mode, inside jit
  evaluate(preds, data) -> {name: float}                      host, over a whole validation set

`HeadObjective` trains the ABAW-7 head (spec §3.4) jointly (MTLHead, masked sum of the task
losses) or one sub-head at a time (ExprHead / VAHead / AUHead on its own rows).
`BackboneObjective` is multi-task pretraining of a 10-output backbone on AffectNet-format images:
class-weighted CE on the 8 logits + CCC loss on (V, A) + 0.1 · DDAMFN's attention loss (spec §1a, §1c).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hsemo_jax import metrics as M
from hsemo_jax.labels import HSE_CLASSES_8, MISSING_AU, MISSING_EXPR, MISSING_VA
from hsemo_jax.models.heads import AUHead, ExprHead, MTLHead, VAHead
from hsemo_jax.train import losses

SUBHEADS = {"expr": ExprHead, "va": VAHead, "au": AUHead}
CONTEMPT = HSE_CLASSES_8.index("Contempt")  # dropped for 7-class evaluation (spec §7)


def _outputs(model, x) -> dict:
    if isinstance(model, MTLHead):
        return model(x)
    for task, cls in SUBHEADS.items():
        if isinstance(model, cls):
            return {task: model(x)}
    raise TypeError(f"not an MTL head or sub-head: {type(model).__name__}")


def _regularized(model) -> list:
    if isinstance(model, MTLHead):
        return model.regularized_kernels()
    if isinstance(model, (ExprHead, VAHead)):
        return [model.dense.kernel[...]]
    return []


@dataclass
class HeadObjective:
    """tasks: the trained subset of ("expr", "va", "au"); weights from the training rows:
    class_weight (8,) for EXPR, au_w0/au_w1 (12,) for AU; task_weights scale each task's loss."""

    tasks: tuple[str, ...]
    class_weight: np.ndarray | None = None
    au_w0: np.ndarray | None = None
    au_w1: np.ndarray | None = None
    l2: float = losses.L2_LAMBDA
    label_smoothing: float = 0.0
    task_weights: dict = field(default_factory=dict)
    compute_dtype: str = "float32"

    def loss(self, model, batch, rng):
        del rng
        out = _outputs(model, batch["x"].astype(self.compute_dtype))
        parts = {}
        if "expr" in self.tasks:
            parts["loss_expr"] = losses.weighted_cross_entropy(
                out["expr"], batch["expr"], batch["expr_mask"], self.class_weight,
                label_smoothing=self.label_smoothing, normalize="batch")
        if "va" in self.tasks:
            parts["loss_va"] = losses.ccc_loss(out["va"].astype(jnp.float32), batch["va"], batch["va_mask"])
        if "au" in self.tasks:
            parts["loss_au"] = losses.weighted_bce(out["au"], batch["au"], batch["au_mask"], self.au_w0, self.au_w1)
        total = sum(self.task_weights.get(k[5:], 1.0) * v for k, v in parts.items())
        if self.l2:
            parts["l2"] = losses.l2_penalty(_regularized(model), self.l2)
            total = total + parts["l2"]
        return total, parts

    def predict(self, model, batch):
        out = _outputs(model, batch["x"].astype(self.compute_dtype))
        res = {}
        if "expr" in out:
            res["expr"] = jax.nn.softmax(out["expr"].astype(jnp.float32), -1)
        if "va" in out:
            res["va"] = out["va"].astype(jnp.float32)
        if "au" in out:
            res["au"] = jax.nn.sigmoid(out["au"].astype(jnp.float32))
        return res

    def evaluate(self, preds: dict, data: dict) -> dict:
        """ABAW metrics (spec §3.5) plus the validation losses, over the labelled validation rows."""
        kw = {}
        if "expr" in preds and data["expr_mask"].any():
            kw.update(expr_true=np.where(data["expr_mask"], data["expr"], MISSING_EXPR), expr_pred=preds["expr"])
        if "va" in preds and data["va_mask"].any():
            kw.update(va_true=np.where(data["va_mask"][:, None], data["va"], MISSING_VA), va_pred=preds["va"])
        if "au" in preds and data["au_mask"].any():
            kw.update(au_true=np.where(data["au_mask"][:, None], data["au"], MISSING_AU).astype(np.int32),
                      au_probs=preds["au"])
        labels = {k: data[k] for k in ("expr", "expr_mask", "va", "va_mask", "au", "au_mask")}
        val_losses = _head_val_losses(preds, labels, self.class_weight, self.au_w0, self.au_w1)
        res = {k: float(v) for k, v in val_losses.items() if data[f"{k[5:]}_mask"].any()}
        scores = M.abaw_mtl(**kw)
        res.update({k: float(v) for k, v in scores.items() if np.ndim(v) == 0 and not k.startswith("n_")})
        res["loss"] = sum(v for k, v in res.items() if k.startswith("loss_"))
        return res


@jax.jit
def _head_val_losses(preds, labels, class_weight, au_w0, au_w1):
    """Each task's loss over the whole validation set, from the activated predictions."""
    out = {}
    if "expr" in preds:
        out["loss_expr"] = losses.weighted_cross_entropy(jnp.log(jnp.maximum(preds["expr"], 1e-30)), labels["expr"],
                                                         labels["expr_mask"], class_weight)
    if "va" in preds:
        out["loss_va"] = losses.ccc_loss(preds["va"], labels["va"], labels["va_mask"])
    if "au" in preds:
        p = jnp.clip(preds["au"], 1e-7, 1 - 1e-7)
        out["loss_au"] = losses.weighted_bce(jnp.log(p) - jnp.log1p(-p), labels["au"], labels["au_mask"], au_w0, au_w1)
    return out


def _preprocess(images_nhwc, mean, std, erase=None):
    """uint8 RGB (N, S, S, 3) -> (x/255 - mean)/std float32 (the models' normalization); `erase`
    (N, 4) int32 boxes (top, left, height, width) from the loader's random erasing are set to 0
    after normalization, as torchvision's RandomErasing does (height 0 = none)."""
    x = images_nhwc.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    if erase is not None:
        rows = jnp.arange(x.shape[1])[None, :, None]
        cols = jnp.arange(x.shape[2])[None, None, :]
        top, left, h, w = (erase[:, i, None, None] for i in range(4))
        inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        x = jnp.where(inside[..., None], 0.0, x)
    return x


@dataclass
class BackboneObjective:
    """Multi-task backbone pretraining. Scores layout: [num_expr logits, V, A] (spec §9.8).

    loss = CE_w(scores[:, :8]) + va_weight · (1 - mean CCC(scores[:, 8:10]))
           + attention_weight · AttentionLoss(heads)   (DDAMFN only)
    A batch: images uint8 (B, S, S, 3) as augmented by the loader, optional erase (B, 4) boxes,
    expr, expr_mask, va, va_mask. Validation metrics: `evaluate`."""

    mean: tuple
    std: tuple
    num_expr: int = 8
    use_va: bool = True
    class_weight: np.ndarray | None = None
    ce_normalize: str = "weight"
    label_smoothing: float = 0.0
    va_weight: float = 1.0
    attention_weight: float = 0.0
    compute_dtype: str = "float32"

    def _scores(self, model, x, with_heads: bool):
        if not with_heads:
            return model(x), None
        fmap = model.trunk_features(x)  # DDAMFN: (N, 7, 7, 512)
        heads = model.attention(fmap)
        att = heads[0]
        for a in heads[1:]:
            att = jnp.maximum(att, a)
        feats = model.Linear(fmap * att).reshape(fmap.shape[0], -1)
        return model.head(feats), heads

    def loss(self, model, batch, rng):
        del rng  # augmentation is the loader's (data_pipelines.loaders), seeded per example
        x = _preprocess(batch["images"], self.mean, self.std, batch.get("erase"))
        with_heads = self.attention_weight > 0 and hasattr(model, "attention")
        scores, heads = self._scores(model, x.astype(self.compute_dtype), with_heads)
        scores = scores.astype(jnp.float32)
        parts = {"loss_expr": losses.weighted_cross_entropy(
            scores[:, :self.num_expr], batch["expr"], batch["expr_mask"], self.class_weight,
            label_smoothing=self.label_smoothing, normalize=self.ce_normalize)}
        parts["accuracy"] = jnp.sum((jnp.argmax(scores[:, :self.num_expr], -1) == batch["expr"]) * batch["expr_mask"]
                                    ) / jnp.maximum(jnp.sum(batch["expr_mask"]), 1)
        total = parts["loss_expr"]
        if self.use_va:
            parts["loss_va"] = losses.ccc_loss(scores[:, self.num_expr:self.num_expr + 2], batch["va"],
                                               batch["va_mask"])
            total = total + self.va_weight * parts["loss_va"]
        if with_heads:
            parts["loss_attention"] = losses.attention_loss(heads)
            total = total + self.attention_weight * parts["loss_attention"]
        return total, parts

    def predict(self, model, batch):
        x = _preprocess(batch["images"], self.mean, self.std).astype(self.compute_dtype)
        return {"scores": model(x).astype(jnp.float32)}

    def evaluate(self, preds: dict, data: dict) -> dict:
        """accuracy (8 classes: AffectNet-8 on its balanced validation split, as the papers report
        it), accuracy_7 (Contempt's rows and score dropped, spec §7), macro_f1, CCC_V, CCC_A and
        the validation losses, over the labelled rows."""
        s = preds["scores"]
        res = {}
        m = data["expr_mask"]
        if m.any():
            res["accuracy"] = M.accuracy(data["expr"], s[:, :self.num_expr], self.num_expr, mask=m)
            if self.num_expr == 8:
                seven = m & (data["expr"] != CONTEMPT)
                if seven.any():
                    logits7 = np.delete(s[:, :8], CONTEMPT, axis=1)
                    y7 = np.where(data["expr"] > CONTEMPT, data["expr"] - 1, data["expr"])
                    res["accuracy_7"] = M.accuracy(y7, logits7, 7, mask=seven)
            res["macro_f1"] = M.macro_f1(data["expr"], s[:, :self.num_expr], self.num_expr, mask=m)
            res["loss_expr"] = float(_backbone_val_ce(s[:, :self.num_expr], data["expr"], m, self.class_weight,
                                                      self.ce_normalize))
        if self.use_va and data["va_mask"].any():
            c = M.ccc(data["va"], s[:, self.num_expr:self.num_expr + 2], mask=data["va_mask"])
            res.update(CCC_V=float(c[0]), CCC_A=float(c[1]), loss_va=float(1 - c.mean()))
        res["loss"] = sum(v for k, v in res.items() if k.startswith("loss_"))
        return res


@partial(jax.jit, static_argnames="normalize")
def _backbone_val_ce(logits, labels, mask, class_weight, normalize):
    return losses.weighted_cross_entropy(logits, labels, mask, class_weight, normalize=normalize)
