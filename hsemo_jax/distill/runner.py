"""ABAW-2 multi-database teacher-student training (spec §2) from a `Config`: the runner behind
`hsemo-jax distill` (`hsemo_jax/commands/distill.py`), callable without the command line.

`run_distill(cfg)` trains the teacher and/or the student on the shared trainer (`runners._fit`:
data-parallel jitted step, orbax checkpoints) into `cfg.run_dir`/teacher and /student; rerunning
resumes an interrupted stage and does not retrain a finished one.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from hsemo_jax.errors import InputError


def _check_unused(cfg) -> None:
    from hsemo_jax.train.config import Config

    default = Config()
    for section in ("model", "head", "loss"):
        for f in dataclasses.fields(getattr(cfg, section)):
            if getattr(getattr(cfg, section), f.name) != getattr(getattr(default, section), f.name):
                raise InputError(f"{section}.{f.name}: not used by distill (set the [distill] section: "
                                 "teacher_arch, student_arch, num_expr, lambda_teacher, ...)")
    if cfg.data.train:
        raise InputError("data.train: not used by distill; give the streams as distill.expr, distill.va, "
                         "distill.expr_va")


def _image_size(cfg) -> int:
    from hsemo_jax.models import registry

    d = cfg.distill
    if d.image_size:
        return d.image_size
    if d.student_arch != "tiny_cnn":
        return registry.get_arch(d.student_arch).input_size
    if d.teacher_arch != "tiny_cnn":
        return registry.get_arch(d.teacher_arch).input_size
    return 32


def load_distill_data(cfg):
    """(streams {"expr", "va"[, "expr_va"]}, validation dataset or None) from the config."""
    from hsemo_jax.distill import data as DD

    d = cfg.distill
    size = _image_size(cfg)
    rows = cfg.data.synthetic_rows

    def stream(kind, path, require):
        if not path:
            raise InputError(f"distill.{kind}: no {kind.upper()} stream given (a dataset path or 'synthetic')")
        if path == "synthetic":
            return DD.synthetic_stream(kind, rows, size, d.num_expr, seed=cfg.train.seed)
        return DD.load_stream(path, d.num_expr, require=require)

    expr = stream("expr", d.expr, ("expr",))
    va = stream("va", d.va, ("va",))
    if d.expr_va in ("", "shared"):
        expr_va = d.expr_va or None
    else:
        expr_va = stream("expr_va", d.expr_va, ("expr", "va"))
    streams = DD.assemble_streams(expr, va, expr_va, disable_shared=d.disable_shared_annotations,
                                  shared_every=d.shared_every)
    sizes = {s: v["images"].shape[1:3] for s, v in streams.items()}
    if len(set(sizes.values())) > 1:
        raise InputError(f"distill: the streams have different image sizes {sizes}")
    val = None
    if cfg.data.val:
        v = (DD.synthetic_stream("val", rows, size, d.num_expr, seed=cfg.train.seed + 1)
             if cfg.data.val == "synthetic" else DD.load_stream(cfg.data.val, d.num_expr))
        val = {k: v[k] for k in ("images", "expr", "expr_mask", "va", "va_mask")}
        if not (val["expr_mask"].any() or val["va_mask"].any()):
            raise InputError(f"data.val: {cfg.data.val} has no EXPR or VA label")
    return streams, val


def _model(cfg, role: str):
    from hsemo_jax.models.heads import DistillModel
    from hsemo_jax.train.runners import init_from

    d = cfg.distill
    model = DistillModel(getattr(d, f"{role}_arch"), d.num_expr, d.va_bins, hidden=d.hidden, dropout=d.dropout,
                         num_heads=d.num_heads, seed=getattr(d, f"{role}_seed"))
    init = getattr(d, f"{role}_init")
    if init:
        copied, total = init_from(model.backbone, init)
        print(f"{role}: initialized {copied}/{total} backbone tensors from {init}", flush=True)
    return model


def _train_stage(cfg, role: str, model, streams, val, run: Path) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from hsemo_jax.distill.data import StreamIterator
    from hsemo_jax.distill.model import save_distill_model
    from hsemo_jax.distill.objective import DistillObjective
    from hsemo_jax.train.runners import _best_params, _fit, _host, _steps

    d = cfg.distill
    objective = DistillObjective(role, tuple(streams), temperature=d.temperature, lambda_teacher=d.lambda_teacher,
                                 lambda_ccc=d.lambda_ccc, hflip=cfg.data.hflip, compute_dtype=cfg.train.compute_dtype)
    loader = StreamIterator(streams, cfg.train.batch_size, seed=cfg.train.seed, process_index=jax.process_index(),
                            process_count=jax.process_count())
    shortest = min(len(s["expr"]) for s in streams.values())
    total, per_epoch = _steps(cfg, shortest, cfg.train.batch_size, cfg.train.epochs)
    trainer, ckpt, last = _fit(cfg, model, objective, None, val, run / role, total=total, per_epoch=per_epoch,
                               loader=loader)
    state, best_step = _best_params(trainer, ckpt)
    ckpt.close()
    host = _host(state)
    nnx.update(model, jax.tree.map(np.asarray, host["params"]), jax.tree.map(np.asarray, host["stats"]))
    if jax.process_index() == 0:
        save_distill_model(model, run / role, stage=role, step=int(np.asarray(host["step"])),
                           selected="best" if best_step is not None else "last")
        print(f"wrote {run / role}/model.npz ({'best step ' + str(best_step) if best_step is not None else 'last step'})",
              flush=True)
    return last


def _load_teacher(cfg):
    """The finished teacher of distill.teacher_dir, else of RUN/teacher."""
    from hsemo_jax.distill.model import load_distill_model

    d = cfg.distill
    teacher_dir = Path(d.teacher_dir) if d.teacher_dir else Path(cfg.run_dir or ".") / "teacher"
    try:
        return load_distill_model(teacher_dir)
    except InputError as e:
        raise InputError(f"distill.teacher_dir: {e}") from None


def run_distill(cfg) -> dict:
    """Train the teacher and/or the student; returns {stage: last validation metrics}."""
    from hsemo_jax.train.runners import init_distributed, prepare_run_dir

    init_distributed(cfg)
    import jax

    _check_unused(cfg)
    if cfg.train.batch_size % jax.device_count():
        raise InputError(f"train.batch_size: {cfg.train.batch_size} rows per stream is not a multiple of the "
                         f"{jax.device_count()} devices")
    if cfg.optim.trainable != "all":
        raise InputError("optim.trainable: distill trains the whole network (use 'all')")
    streams, val = load_distill_data(cfg)  # inputs checked before RUN/ is written
    from hsemo_jax.distill.data import StreamIterator

    # every stream must hold a batch (the stages build their own iterators; this one only checks)
    StreamIterator(streams, cfg.train.batch_size, seed=cfg.train.seed, process_index=jax.process_index(),
                   process_count=jax.process_count())
    d = cfg.distill
    from hsemo_jax.train.runners import check_init

    for role in ("teacher", "student"):
        if d.stage in ("both", role) and getattr(d, f"{role}_init"):
            check_init(getattr(d, f"{role}_init"), getattr(d, f"{role}_arch"), f"distill.{role}_init")
    # the student stage alone needs a finished teacher: checked before RUN/ is written too, or the
    # corrected command (--teacher DIR) would be refused as a run with a different config
    teacher = _load_teacher(cfg) if d.stage == "student" else None
    run = prepare_run_dir(cfg, "distill")
    results = {}
    if d.stage in ("both", "teacher"):
        results["teacher"] = _train_stage(cfg, "teacher", _model(cfg, "teacher"), streams, val, run)
    if d.stage in ("both", "student"):
        teacher = teacher or _load_teacher(cfg)
        student = _model(cfg, "student")
        student.attach_teacher(teacher)
        results["student"] = _train_stage(cfg, "student", student, streams, val, run)
    return results
