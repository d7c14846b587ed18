"""The ABAW-2 multitask network (spec §2.1): any backbone's embedding + an EXPR head and a VA head.

    DistillModel(arch) : images (N, S, S, 3) normalized -> {"expr": (N, num_expr), "va": (N, 2 K)}
    head               : BN1d(D) -> Linear(D, 128) -> ReLU -> BN1d(128) -> Dropout(0.5) -> Linear(128, n)
    VA logits          : K valence bins followed by K arousal bins (K = 20), decoded by expectation

The backbone is any `hsemo_jax.models.registry` architecture (its `features(x)`) or `tiny_cnn`,
a two-conv network for smoke tests that runs at any input size (the registry's MobileFaceNet and
DDAMFN need exactly 112 px). Each model knows its own input size and normalization (`prepare`), so
a teacher and a student of different architectures read the same uint8 batch.

For the student, the frozen teacher is an attribute (`attach_teacher`): its parameters are turned
into `Frozen` variables, so the trainer's split (`nnx.Param` vs the rest) puts them with the batch
statistics -- carried and checkpointed in the train state, never differentiated nor updated --
and `teacher_logits` always runs it in eval mode (running BN statistics, no dropout).
`scan_streams` runs a model once per data stream (own BN batch statistics) inside one `lax.scan`.

`save_distill_model` / `load_distill_model`: RUN/<stage>/model.npz (every variable, by path) +
model.json (architecture and head sizes), written atomically; the teacher is not saved with the student.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hsemo_jax.errors import InputError
from hsemo_jax.models.layers import BatchNorm, Conv2d, Linear

TINY = "tiny_cnn"
TINY_WIDTH = 32
HALF = (0.5, 0.5, 0.5)


class Frozen(nnx.Variable):
    """A teacher weight: part of the train state, not a trainable parameter."""


class TinyCNN(nnx.Module):
    """Smoke-test backbone: conv3x3/2 (3->16) BN ReLU -> conv3x3/2 (16->32) BN ReLU -> global mean."""

    def __init__(self, width: int = TINY_WIDTH, *, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.conv1 = Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False, rng=rng)
        self.bn1 = BatchNorm(width // 2)
        self.conv2 = Conv2d(width // 2, width, 3, stride=2, padding=1, bias=False, rng=rng)
        self.bn2 = BatchNorm(width)
        self.num_features = width

    def features(self, x_nhwc):
        x = jax.nn.relu(self.bn1(self.conv1(x_nhwc)))
        x = jax.nn.relu(self.bn2(self.conv2(x)))
        return jnp.mean(x, axis=(1, 2))


class Dropout(nnx.Module):
    """Inverted dropout with an explicit key (the trainer hands the objective one key per step);
    `deterministic` is switched by `model.train()` / `model.eval()` like nnx.Dropout."""

    def __init__(self, rate: float):
        self.rate = rate
        self.deterministic = True

    def __call__(self, x, key=None):
        if self.deterministic or key is None or self.rate <= 0:
            return x
        keep = jax.random.bernoulli(key, 1.0 - self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


class DistillHead(nnx.Module):
    """BN1d(D) -> Linear(D, hidden) -> ReLU -> BN1d(hidden) -> Dropout -> Linear(hidden, n) (spec §2.1)."""

    def __init__(self, in_dim: int, num_out: int, hidden: int = 128, dropout: float = 0.5, *,
                 rng: np.random.Generator):
        self.bn0 = BatchNorm(in_dim)
        self.fc0 = Linear(in_dim, hidden, rng=rng)
        self.bn1 = BatchNorm(hidden)
        self.dropout = Dropout(dropout)
        self.fc1 = Linear(hidden, num_out, rng=rng)

    def __call__(self, f, key=None):
        h = self.bn1(jax.nn.relu(self.fc0(self.bn0(f))))
        return self.fc1(self.dropout(h, key))


def build_backbone(arch: str, *, num_heads: int = 2, seed: int = 0) -> tuple[nnx.Module, dict]:
    """(backbone with `features`, info {input_size (None = any), mean, std, embedding_dim})."""
    if arch == TINY:
        return TinyCNN(seed=seed), {"input_size": None, "mean": HALF, "std": HALF, "embedding_dim": TINY_WIDTH}
    from hsemo_jax.models import registry

    a = registry.get_arch(arch)
    model = registry.build(arch, None if a.family != "ddamfn" else 8, num_heads=num_heads, seed=seed)
    return model, {"input_size": a.input_size, "mean": tuple(a.mean), "std": tuple(a.std),
                   "embedding_dim": a.embedding_dim}


class DistillModel(nnx.Module):
    """Backbone + EXPR head (num_expr logits) + VA head (2 x va_bins logits); eval mode when built."""

    def __init__(self, arch: str, num_expr: int = 7, va_bins: int = 20, *, hidden: int = 128,
                 dropout: float = 0.5, num_heads: int = 2, seed: int = 0):
        self.backbone, info = build_backbone(arch, num_heads=num_heads, seed=seed)
        self.arch, self.num_expr, self.va_bins = arch, num_expr, va_bins
        self.hidden, self.dropout_rate, self.num_heads = hidden, dropout, num_heads
        self.input_size, self.mean, self.std = info["input_size"], info["mean"], info["std"]
        rng = np.random.default_rng([seed, 1])
        self.expr = DistillHead(info["embedding_dim"], num_expr, hidden, dropout, rng=rng)
        self.va = DistillHead(info["embedding_dim"], 2 * va_bins, hidden, dropout, rng=rng)
        self.teacher = None
        self.eval()

    def spec(self) -> dict:
        return {"arch": self.arch, "num_expr": self.num_expr, "va_bins": self.va_bins, "hidden": self.hidden,
                "dropout": self.dropout_rate, "num_heads": self.num_heads}

    def prepare(self, images01):
        """Images in [0, 1] (N, S, S, 3) float -> this model's input (resized if its size differs, normalized)."""
        if self.input_size is not None and images01.shape[1:3] != (self.input_size, self.input_size):
            n, _, _, c = images01.shape
            images01 = jax.image.resize(images01, (n, self.input_size, self.input_size, c), "linear")
        return (images01 - jnp.asarray(self.mean, images01.dtype)) / jnp.asarray(self.std, images01.dtype)

    def __call__(self, x, key=None):
        f = self.backbone.features(x)
        k_expr, k_va = (None, None) if key is None else tuple(jax.random.split(key))
        return {"expr": self.expr(f, k_expr), "va": self.va(f, k_va)}

    def attach_teacher(self, teacher: "DistillModel") -> None:
        """Make `teacher` this model's frozen teacher (its Params become `Frozen`, in place)."""
        if teacher.teacher is not None:
            raise InputError("a teacher cannot itself carry a teacher")
        if (teacher.num_expr, teacher.va_bins) != (self.num_expr, self.va_bins):
            raise InputError(f"the teacher has {teacher.num_expr} EXPR classes / {teacher.va_bins} VA bins, the "
                             f"student {self.num_expr} / {self.va_bins}")
        for _, node in list(nnx.iter_graph(teacher)):
            if isinstance(node, nnx.Module):
                for name, value in list(vars(node).items()):
                    if isinstance(value, (nnx.Param, nnx.BatchStat)):
                        setattr(node, name, Frozen(value[...]))
        assert not jax.tree.leaves(nnx.state(teacher, nnx.Param))
        teacher.eval()
        self.teacher = nnx.data(teacher)

    def teacher_logits(self, x_snhwc01):
        """The frozen teacher's logits on the same images, (S, B, ...) per stream (eval mode, no gradient)."""
        if self.teacher is None:
            raise ValueError("student mode needs a teacher (DistillModel.attach_teacher)")
        t = self.teacher
        t.eval()  # the trainer switches the whole model to train mode; the teacher stays in eval
        return jax.tree.map(jax.lax.stop_gradient, scan_streams(t, x_snhwc01))


def scan_streams(model: DistillModel, x_snhwc01, keys=None) -> dict:
    """`model` on each stream's images (S, B, H, W, 3) in [0, 1] in turn -> {"expr": (S, B, n), "va": (S, B, 2K)}.

    One forward pass per stream, as the original (train-mode BatchNorm normalizes with each
    stream's own batch statistics and updates its running ones once per stream, in stream order),
    written as a `lax.scan` over the stream axis so that a step compiles one forward/backward
    instead of one per stream. keys: (S,) dropout keys, or None (no dropout)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def body(rest, inp):
        xi, ki = inp if keys is not None else (inp, None)
        m = nnx.merge(graphdef, params, rest)
        out = m(m.prepare(xi), ki)
        return nnx.split(m, nnx.Param, ...)[2], out

    rest, out = jax.lax.scan(body, rest, x_snhwc01 if keys is None else (x_snhwc01, keys))
    nnx.update(model, rest)
    return out


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------
def _flat_state(model: DistillModel) -> dict[str, np.ndarray]:
    from hsemo_jax.train.optim import path_str

    pure = nnx.to_pure_dict(nnx.state(model))
    pure.pop("teacher", None)
    return {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(pure)[0]}


def save_distill_model(model: DistillModel, directory: str | os.PathLike, **extra) -> Path:
    """DIR/model.npz (all variables but the teacher's) + DIR/model.json (`spec()` + extra), atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "model.tmp.npz"
    np.savez(tmp, **_flat_state(model))
    os.replace(tmp, d / "model.npz")
    tmp_json = d / "model.json.tmp"
    tmp_json.write_text(json.dumps({**model.spec(), **extra}, indent=2) + "\n")
    os.replace(tmp_json, d / "model.json")
    return d


def load_distill_model(directory: str | os.PathLike) -> DistillModel:
    """The model written by `save_distill_model` (eval mode)."""
    from hsemo_jax.train.optim import path_str

    d = Path(directory)
    for name in ("model.json", "model.npz"):
        if not (d / name).is_file():
            raise InputError(f"{d}: no {name} (expected a finished distill stage directory, e.g. RUN/teacher)")
    try:
        info = json.loads((d / "model.json").read_text())
        model = DistillModel(info["arch"], info["num_expr"], info["va_bins"], hidden=info["hidden"],
                             dropout=info["dropout"], num_heads=info["num_heads"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{d / 'model.json'}: not a distill model description ({e})") from None
    state = nnx.state(model)
    pure = nnx.to_pure_dict(state)
    pure.pop("teacher", None)
    with np.load(d / "model.npz") as z:
        def pick(p, v):
            key = path_str(p)
            if key not in z.files or z[key].shape != v.shape:
                raise InputError(f"{d / 'model.npz'}: {key}: missing or not of shape {tuple(v.shape)}")
            return z[key].astype(v.dtype)

        pure = jax.tree_util.tree_map_with_path(pick, pure)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return model
