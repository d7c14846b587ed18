"""The project's small Flax modules (heads, regressors, the distillation network) and their files.

ABAW-7 multi-task head (spec §3.3): three independent sub-heads on X = concat(f, scores).

    X (N, D + 10)  ──> expr: Dense(8)              logits (N, 8)   (softmax = class probabilities)
                   ──> va:   Dense(2) on X[:, -10:] tanh (N, 2)    (valence, arousal)
                   ──> au:   Dense(128, relu) -> Dense(12) logits (N, 12) (sigmoid = AU probabilities)

No shared layer and no dropout; the sub-heads share only their input, so training them jointly on
a masked loss or one at a time on their own rows (the paper's way) optimizes the same functions.
Kernels are glorot-uniform, biases zero (Keras defaults). Kernels have layout (in, out).
The heads return pre-activation logits for EXPR and AU (the losses use them in the numerically
safe form, as Keras does for a softmax/sigmoid output layer); `predict` applies the activations.

Emotion-intensity regressors (seed extras §1.3) on a per-video statistics vector, the same `Dense`:
`linear` = Dense(K, sigmoid), `mlp` = Dense(64, ReLU) -> Dense(K, sigmoid) (`build_regressor`).

ABAW-2 multitask network (seed extras §2.1), any backbone's embedding + an EXPR head and a VA head:

    DistillModel(arch) : images (N, S, S, 3) normalized -> {"expr": (N, num_expr), "va": (N, 2 K)}
    head               : BN1d(D) -> Linear(D, 128) -> ReLU -> BN1d(128) -> Dropout(0.5) -> Linear(128, n)
    VA logits          : K valence bins followed by K arousal bins (K = 20), decoded by expectation

Its backbone is any `hsemo_jax.models.registry` architecture (its `features(x)`) or `tiny_cnn`, a
two-conv network for smoke tests that runs at any input size (the registry's MobileFaceNet and
DDAMFN need exactly 112 px). Each model knows its own input size and normalization (`prepare`), so
a teacher and a student of different architectures read the same uint8 batch. For the student,
the frozen teacher is an attribute (`attach_teacher`): its parameters are turned into `Frozen`
variables and its batch-norm statistics into `FrozenStat`, so the trainer's split (`nnx.Param` vs
the rest) puts them with the batch statistics -- carried and checkpointed in the train state,
never differentiated nor updated.

Files, one format for all three (`save_small` / `load_small`): DIR/<stem>.npz holds the module's
Params and BatchStats by '/'-joined path (`flat_state`; a student's `Frozen` teacher is not saved)
and DIR/<stem>.json its metadata: `kind` (a key of `SMALL_MODELS`), what builds the module, and
anything the caller adds; both are written atomically (`fileio.write_arrays_with_meta`).

    kind                 stem        builds from
    mtl_head             head        in_dim
    distill_model        model       arch, num_expr, va_bins, hidden, dropout, num_heads
    intensity_regressor  regressor   variant, in_dim, targets (names; K = their number), hidden

Files written before `kind` existed load too (their `kind` is the one asked for).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hsemo_jax.errors import InputError
from hsemo_jax.fileio import read_npz, write_arrays_with_meta
from hsemo_jax.models.layers import BatchNorm, Conv2d, Linear

NUM_EXPR = 8
NUM_AU = 12
SCORES_LEN = 10  # backbone scores: 8 expression logits, valence, arousal
AU_HIDDEN = 128
TASKS = ("expr", "va", "au")
HIDDEN = 64  # the intensity MLP's hidden units
VARIANTS = ("linear", "mlp")  # intensity regressors
TINY = "tiny_cnn"
HALF = (0.5, 0.5, 0.5)


# ----------------------------------------------------------------------------------------------
# ABAW-7 multi-task head
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# emotion-intensity regressors
# ----------------------------------------------------------------------------------------------
class LinearSigmoid(nnx.Module):
    """x (N, in_dim) -> sigmoid(x W + b) (N, K)."""

    def __init__(self, in_dim: int, k: int, *, rng: np.random.Generator):
        self.out = Dense(in_dim, k, rng=rng)

    def __call__(self, x):
        return jax.nn.sigmoid(self.out(x))

    def regularized_kernels(self):
        return [self.out.kernel[...]]


class MLPSigmoid(nnx.Module):
    """x (N, in_dim) -> sigmoid(relu(x W1 + b1) W2 + b2) (N, K)."""

    def __init__(self, in_dim: int, k: int, hidden: int = HIDDEN, *, rng: np.random.Generator):
        self.hidden = Dense(in_dim, hidden, rng=rng)
        self.out = Dense(hidden, k, rng=rng)

    def __call__(self, x):
        return jax.nn.sigmoid(self.out(jax.nn.relu(self.hidden(x))))

    def regularized_kernels(self):
        return []


def build_regressor(variant: str, in_dim: int, k: int, *, hidden: int = HIDDEN, seed: int = 0):
    """A fresh `linear` or `mlp` regressor (Keras-default initialisation from `seed`)."""
    if variant not in VARIANTS:
        raise InputError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if in_dim < 1 or k < 1:
        raise InputError(f"regressor needs in_dim >= 1 and K >= 1, got {in_dim}, {k}")
    rng = np.random.default_rng(seed)
    return LinearSigmoid(in_dim, k, rng=rng) if variant == "linear" else MLPSigmoid(in_dim, k, hidden, rng=rng)


# ----------------------------------------------------------------------------------------------
# ABAW-2 distillation network
# ----------------------------------------------------------------------------------------------
class Frozen(nnx.Variable):
    """A teacher weight: part of the train state, not a trainable parameter."""


class FrozenStat(nnx.Variable):
    """A teacher's batch-norm running statistic: like `Frozen`, but kept float32 when the teacher
    computes in bfloat16 (as a model's own `BatchStat`s under the trainer's `compute_dtype`)."""


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
        from hsemo_jax.models.tiny_cnn import WIDTH, TinyCNN

        return TinyCNN(None, seed=seed), {"input_size": None, "mean": HALF, "std": HALF, "embedding_dim": WIDTH}
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
        """What builds this model (its `distill_model` file metadata)."""
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
        """Make `teacher` this model's frozen teacher (in place: its Params become `Frozen`, its
        BatchStats `FrozenStat`)."""
        if teacher.teacher is not None:
            raise InputError("a teacher cannot itself carry a teacher")
        if (teacher.num_expr, teacher.va_bins) != (self.num_expr, self.va_bins):
            raise InputError(f"the teacher has {teacher.num_expr} EXPR classes / {teacher.va_bins} VA bins, the "
                             f"student {self.num_expr} / {self.va_bins}")
        for _, node in list(nnx.iter_graph(teacher)):
            if isinstance(node, nnx.Module):
                for name, value in list(vars(node).items()):
                    if isinstance(value, (nnx.Param, nnx.BatchStat)):
                        frozen = Frozen if isinstance(value, nnx.Param) else FrozenStat
                        setattr(node, name, frozen(value[...]))
        assert not jax.tree.leaves(nnx.state(teacher, nnx.Param))
        teacher.eval()
        self.teacher = nnx.data(teacher)


# ----------------------------------------------------------------------------------------------
# files: one format for every small model
# ----------------------------------------------------------------------------------------------
SAVED = nnx.Any(nnx.Param, nnx.BatchStat)  # what a small-model file holds (not a teacher's Frozen weights)


def path_str(path) -> str:
    """A jax key path as 'a/b/0/kernel'."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return "/".join(parts)


def flat_state(module: nnx.Module) -> dict[str, np.ndarray]:
    """The module's Params and BatchStats as {'a/b/kernel': array} (host numpy)."""
    pure = nnx.to_pure_dict(nnx.state(module, SAVED))
    return {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(pure)[0]}


def load_flat_state(module: nnx.Module, arrays: dict, source: str) -> None:
    """Set the module's Params and BatchStats from `flat_state`-style arrays, in place; every one
    must be there with its shape (extra arrays are ignored). `source` names the file in errors."""
    state = nnx.state(module, SAVED)

    def take(path, v):
        key = path_str(path)
        a = arrays.get(key)
        if a is None or a.shape != np.shape(v):
            raise InputError(f"{source}: {key}: missing or not of shape {tuple(np.shape(v))}")
        return a.astype(v.dtype)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(take, nnx.to_pure_dict(state)))
    nnx.update(module, state)


@dataclass(frozen=True)
class SmallKind:
    stem: str                              # DIR/<stem>.npz + DIR/<stem>.json
    types: tuple[type, ...]                # the modules saved under this kind
    reads: tuple[str, ...]                 # the metadata `build` reads
    build: Callable[[dict], nnx.Module]    # metadata -> a fresh module of the saved shapes
    missing: str                           # said when DIR lacks the files


SMALL_MODELS = {
    "mtl_head": SmallKind(
        "head", (MTLHead,), ("in_dim",), lambda m: MTLHead(int(m["in_dim"])),
        "not a multi-task head directory; train one with `hsemo-jax train-head`"),
    "distill_model": SmallKind(
        "model", (DistillModel,), ("arch", "num_expr", "va_bins", "hidden", "dropout", "num_heads"),
        lambda m: DistillModel(m["arch"], m["num_expr"], m["va_bins"], hidden=m["hidden"], dropout=m["dropout"],
                               num_heads=m["num_heads"]),
        "expected a finished distill stage directory, e.g. RUN/teacher"),
    "intensity_regressor": SmallKind(
        "regressor", (LinearSigmoid, MLPSigmoid), ("variant", "in_dim", "targets", "hidden"),
        lambda m: build_regressor(m["variant"], int(m["in_dim"]), len(m["targets"]), hidden=int(m["hidden"])),
        "not a trained intensity regressor; create one with `hsemo-jax intensity train`"),
}


def save_small(module: nnx.Module, directory: str | os.PathLike, meta: dict) -> Path:
    """DIR/<stem>.npz (`flat_state(module)`) + DIR/<stem>.json (`meta`), written atomically.

    meta["kind"] picks the format (`SMALL_MODELS`) and must match the module; meta must hold what
    that kind's builder reads, and may hold anything else JSON can (it comes back from `load_small`)."""
    kind = SMALL_MODELS.get(meta.get("kind"))
    if kind is None:
        raise ValueError(f"save_small: meta['kind'] must be one of {', '.join(SMALL_MODELS)}, got {meta.get('kind')!r}")
    if not isinstance(module, kind.types):
        raise ValueError(f"save_small: a {meta['kind']} is a {' or '.join(t.__name__ for t in kind.types)}, "
                         f"got {type(module).__name__}")
    missing = [k for k in kind.reads if k not in meta]
    if missing:
        raise ValueError(f"save_small: a {meta['kind']}'s metadata lacks {', '.join(map(repr, missing))}")
    return write_arrays_with_meta(directory, kind.stem, flat_state(module), meta)


def load_small(directory: str | os.PathLike, kind: str) -> tuple[nnx.Module, dict]:
    """(module, metadata) of the `kind` saved by `save_small` in `directory` (module in eval mode
    where it has one). Bad or missing files raise InputError naming the file."""
    spec = SMALL_MODELS[kind]
    d = Path(directory)
    meta_path, npz_path = d / f"{spec.stem}.json", d / f"{spec.stem}.npz"
    for path in (meta_path, npz_path):
        if not path.is_file():
            raise InputError(f"{d}: no {path.name} ({spec.missing})")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("kind", kind) != kind:
        found = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
        raise InputError(f"{meta_path}: holds kind {found!r}, expected {kind!r}")
    try:
        module = spec.build(meta)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{meta_path}: not a {kind!r} description ({type(e).__name__}: {e})") from None
    arrays = read_npz(npz_path)
    load_flat_state(module, arrays, str(npz_path))
    return module, meta


def save_head(head: MTLHead, directory: str | os.PathLike, tasks=TASKS) -> Path:
    """DIR/head.npz ('expr/dense/kernel', ...) + DIR/head.json (in_dim, the trained `tasks`:
    `predict --head` refuses a head whose AU sub-head was not trained)."""
    return save_small(head, directory, {"kind": "mtl_head", "in_dim": head.in_dim, "tasks": list(tasks)})


def load_head(directory: str | os.PathLike) -> MTLHead:
    """The MTLHead saved by `save_head` in `directory`."""
    return load_small(directory, "mtl_head")[0]
