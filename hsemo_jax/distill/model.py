"""Running and storing the ABAW-2 network (`hsemo_jax.models.heads.DistillModel`) for distillation.

`scan_streams` runs a model once per data stream (own BN batch statistics) inside one `lax.scan`;
`teacher_logits` runs a student's frozen teacher that way, always in eval mode (running BN
statistics, no dropout) and without gradient. Both take the trainer's compute dtype
(`train.compute_dtype`): the model's input is cast to it after `prepare`, and the teacher's
weights (`Frozen`) are cast to it as the trainer casts the student's Params (`loop.cast_floats`);
the teacher's running statistics (`FrozenStat`) stay float32 as the student's.

`save_distill_model` / `load_distill_model`: RUN/<stage>/model.npz (Params and BatchStats, by
path) + model.json (`DistillModel.spec()` and the stage's summary), the `distill_model` kind of
`models.heads.save_small`; the teacher is not saved with the student.
"""
from __future__ import annotations

import os
from pathlib import Path

import jax
from flax import nnx

from hsemo_jax.models.heads import DistillModel, Frozen, load_small, save_small
from hsemo_jax.train.loop import cast_floats


def scan_streams(model: DistillModel, x_snhwc01, keys=None, compute_dtype=None) -> dict:
    """`model` on each stream's images (S, B, H, W, 3) in [0, 1] in turn -> {"expr": (S, B, n), "va": (S, B, 2K)}.

    One forward pass per stream, as the original (train-mode BatchNorm normalizes with each
    stream's own batch statistics and updates its running ones once per stream, in stream order),
    written as a `lax.scan` over the stream axis so that a step compiles one forward/backward
    instead of one per stream. keys: (S,) dropout keys, or None (no dropout); compute_dtype: the
    dtype of the model's input (None = as prepared, float32)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def body(rest, inp):
        xi, ki = inp if keys is not None else (inp, None)
        m = nnx.merge(graphdef, params, rest)
        xi = m.prepare(xi)
        out = m(xi if compute_dtype is None else xi.astype(compute_dtype), ki)
        return nnx.split(m, nnx.Param, ...)[2], out

    rest, out = jax.lax.scan(body, rest, x_snhwc01 if keys is None else (x_snhwc01, keys))
    nnx.update(model, rest)
    return out


def teacher_logits(student: DistillModel, x_snhwc01, compute_dtype=None) -> dict:
    """The student's frozen teacher's logits on the same images, (S, B, ...) per stream (eval mode,
    no gradient), computed in `compute_dtype` (None = float32)."""
    if student.teacher is None:
        raise ValueError("student mode needs a teacher (DistillModel.attach_teacher)")
    t = student.teacher
    t.eval()  # the trainer switches the whole model to train mode; the teacher stays in eval
    graphdef, weights, rest = nnx.split(t, Frozen, ...)
    t = nnx.merge(graphdef, cast_floats(weights, compute_dtype), rest)
    return jax.tree.map(jax.lax.stop_gradient, scan_streams(t, x_snhwc01, compute_dtype=compute_dtype))


def save_distill_model(model: DistillModel, directory: str | os.PathLike, **extra) -> Path:
    """DIR/model.npz (all variables but the teacher's) + DIR/model.json (`spec()` + extra), atomically."""
    return save_small(model, directory, {"kind": "distill_model", **model.spec(), **extra})


def load_distill_model(directory: str | os.PathLike) -> DistillModel:
    """The model written by `save_distill_model` (eval mode)."""
    return load_small(directory, "distill_model")[0]
