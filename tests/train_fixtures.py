"""Tiny models and datasets shared by the tests/test_train_*.py files (fast to compile on CPU)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.extend import core as jcore

from hsemo_jax.models.layers import BatchNorm, Conv2d, Linear


class TinyNet(nnx.Module):
    """A 10-output "backbone" with BatchNorm: 8x8 RGB -> conv 3x3/2 -> BN -> ReLU -> mean -> Linear."""

    def __init__(self, seed: int = 0, width: int = 8):
        rng = np.random.default_rng(seed)
        self.conv = Conv2d(3, width, 3, stride=2, padding=1, rng=rng)
        self.bn = BatchNorm(width)
        self.fc = Linear(width, 10, rng=rng)

    def features(self, x_nhwc):
        return jnp.mean(jax.nn.relu(self.bn(self.conv(x_nhwc))), axis=(1, 2))

    def head(self, f):
        return self.fc(f)

    def __call__(self, x_nhwc):
        return self.head(self.features(x_nhwc))


def image_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """uint8 8x8 images whose mean colour determines the class and VA (learnable, tiny)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    col = images.reshape(n, -1, 3).mean(1) / 255.0
    expr = (np.argmax(col, 1) + 3 * (col.mean(1) > 0.5)).astype(np.int32) % 8
    va = np.tanh(4 * (col[:, :2] - 0.5)).astype(np.float32)
    return {"images": images, "expr": expr, "expr_mask": rng.random(n) < 0.9, "va": va,
            "va_mask": rng.random(n) < 0.8}


def feature_data(n: int, d: int = 20, seed: int = 0, missing: float = 0.0) -> dict[str, np.ndarray]:
    """Head features x (n, d + 10): a Gaussian cluster per EXPR class; VA and AU from fixed linear
    teachers (all learnable by the head).

    With `missing` > 0 that fraction of each task's labels is replaced by the ABAW missing code."""
    rng = np.random.default_rng(seed)
    teacher = np.random.default_rng(1234)
    centroids = teacher.standard_normal((8, d + 10))
    w_au = teacher.standard_normal((d + 10, 12))
    w_va = teacher.standard_normal((10, 2)) * 0.2
    expr = rng.integers(0, 8, n).astype(np.int32)
    x = (rng.standard_normal((n, d + 10)) + 1.5 * centroids[expr]).astype(np.float32)
    va = np.tanh(x[:, -10:] @ w_va).astype(np.float32)
    au = (x @ w_au > 0).astype(np.int32)
    if missing:
        expr[rng.random(n) < missing] = -1
        va[rng.random(n) < missing] = -5
        au[rng.random(n) < missing] = -1
    return {"x": x, "expr": expr, "va": va, "au": au}


def jaxpr_equations(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside it (jit, custom VJPs, cond branches)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jcore.ClosedJaxpr):
                    yield from jaxpr_equations(sub.jaxpr)
                elif isinstance(sub, jcore.Jaxpr):
                    yield from jaxpr_equations(sub)


def conv_dtypes(trainer, batch) -> set[tuple[str, ...]]:
    """The (input, kernel) dtypes of every convolution in `trainer`'s train step on `batch`.

    Traced through the trainer's own jitted step (`trainer._train.trace`), with the batch placed as
    `trainer.step` places it: a later `trainer.step` on batches of this shape reuses this trace
    instead of tracing the step again (seconds for a backbone)."""
    jaxpr = trainer._train.trace(trainer.state, dist.put_batch(batch, trainer.mesh)).jaxpr
    return {tuple(str(v.aval.dtype) for v in eqn.invars) for eqn in jaxpr_equations(jaxpr.jaxpr)
            if eqn.primitive.name == "conv_general_dilated"}


def float_dtypes(tree) -> set[str]:
    return {str(a.dtype) for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)}


# ----------------------------------------------------------------------------------------------
# shared trainers: every Trainer compiles its own step (seconds on CPU), so tests reuse these and
# put back the initial state with `reset(trainer)` when they need a fresh run.
# ----------------------------------------------------------------------------------------------
import pytest  # noqa: E402

from hsemo_jax.models.heads import MTLHead  # noqa: E402
from hsemo_jax.train import distributed as dist  # noqa: E402
from hsemo_jax import optim  # noqa: E402
from hsemo_jax.train.loop import Trainer  # noqa: E402
from hsemo_jax.train.objectives import BackboneObjective, HeadObjective  # noqa: E402

HEAD_D = 10  # feature_data(d=10): x has 20 columns
HEAD_LR = 1e-2
CLASS_W = np.linspace(1, 2, 8).astype(np.float32)


def one_device_mesh():
    return dist.make_mesh(jax.devices()[:1])


def _remember(trainer):
    trainer.initial = trainer.host_state()
    return trainer


def reset(trainer):
    """Put the trainer back to its initial state."""
    trainer.state = dist.put_replicated(trainer.initial, trainer.mesh)
    return trainer


def head_trainer(compute_dtype="float32", accum_steps=1):
    obj = HeadObjective(("expr", "va", "au"), class_weight=CLASS_W, compute_dtype=compute_dtype)
    tx = optim.make_optimizer("adam", HEAD_LR, accum_steps=accum_steps)
    return _remember(Trainer(MTLHead(HEAD_D + 10), obj, tx, mesh=one_device_mesh(), compute_dtype=compute_dtype,
                             accum_steps=accum_steps))


def tiny_trainer(mesh):
    obj = BackboneObjective((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), class_weight=CLASS_W)
    return _remember(Trainer(TinyNet(seed=3), obj, optim.make_optimizer("adam", 1e-2), mesh=mesh, seed=7))


@pytest.fixture(scope="session")
def head32():
    return head_trainer()


@pytest.fixture(scope="session")
def tiny1():
    return tiny_trainer(one_device_mesh())


@pytest.fixture(scope="session")
def tiny8():
    return tiny_trainer(dist.make_mesh())
