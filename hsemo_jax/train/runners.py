"""Config -> data, model, objective, optimizer, trainer -> `fit`: the two training jobs.

    run_pretrain(cfg)  backbone multi-task pretraining on a TFDS build (grain) -> RUN/model/
    run_head(cfg)      ABAW-7 MTL head on a feature dataset                   -> RUN/head.npz

A run directory holds `config.json` (the config it was started with; a different config on the
same directory is refused), `checkpoints/`, `metrics.csv` and `tensorboard/`. Running the same
command again resumes from the newest checkpoint; a finished run is not retrained.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from hsemo_jax.errors import InputError
from hsemo_jax.fileio import atomic_write
from hsemo_jax.train.config import Config

# Fields that may change between the start of a run and its resumption.
RESUMABLE_CHANGES = {"run_dir", "train.progress", "train.log_every", "train.tensorboard", "distributed",
                     "checkpoint.async_save", "data.read_threads", "data.prefetch"}
CLASSIFIER = {"efficientnet": "classifier", "mobilefacenet": "fc", "ddamfn": "fc", "mobilevit": "fc", "tiny": "fc"}
# separate-mode model selection per task (spec §3.4): EXPR best val accuracy, VA / AU best val loss
HEAD_SELECTION = {"expr": ("EXPR_accuracy", "max"), "va": ("loss", "min"), "au": ("loss", "min")}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "task_weights":
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def prepare_run_dir(cfg: Config, kind: str) -> Path:
    """Create RUN/ and its config.json, or check that an existing run has the same config."""
    if not cfg.run_dir:
        raise InputError("run_dir: no output directory (pass --out DIR)")
    run = Path(cfg.run_dir)
    if run.exists() and not run.is_dir():
        raise InputError(f"{run}: a file, not a run directory; give another --out")
    meta = run / "config.json"
    current = {"kind": kind, **cfg.to_dict()}
    if meta.exists():
        try:
            started = json.loads(meta.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{meta}: not a run's config ({e}); choose another --out") from None
        if not isinstance(started, dict):
            raise InputError(f"{meta}: not a run's config (expected a JSON object); choose another --out")
        # a field added to Config after the run started counts as its default there
        old = {**_flat(Config().to_dict()), **_flat(started)}
        new = _flat(current)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)
                         and not any(k == r or k.startswith(r + ".") for r in RESUMABLE_CHANGES))
        if changed:
            raise InputError(f"{run} holds a run started with a different config ({', '.join(changed)}); "
                             "resume it with its config or choose another --out")
    else:
        import jax

        if jax.process_index() == 0:
            atomic_write(meta, json.dumps(current, indent=2) + "\n")
    return run


def init_distributed(cfg: Config) -> None:
    d = cfg.distributed
    if d.initialize:
        from hsemo_jax.train import distributed

        distributed.initialize(d.coordinator_address or None, d.num_processes or None,
                               None if d.process_id < 0 else d.process_id)


def _steps(cfg: Config, rows: int, batch: int, epochs: float) -> tuple[int, int]:
    per_epoch = rows // batch
    if per_epoch == 0:
        raise InputError(f"train.batch_size: {batch} is larger than the {rows} training rows")
    total = cfg.train.steps or max(1, math.ceil(epochs * per_epoch))
    return total, per_epoch


def _optimizer(cfg: Config, total_steps: int, steps_per_epoch: int, trainable=None):
    from hsemo_jax import optim

    o = cfg.optim
    updates = max(1, total_steps // o.grad_accum)
    lr = optim.scaled_lr(o.lr, o.lr_scaling, cfg.train.batch_size * o.grad_accum, o.lr_reference_batch)
    schedule = optim.make_schedule(o.schedule, lr, total_updates=updates,
                                   updates_per_epoch=max(1, steps_per_epoch // o.grad_accum), gamma=o.gamma,
                                   warmup_updates=o.warmup_steps, final_fraction=o.final_fraction)
    tx = optim.make_optimizer(o.name, schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                              clip_norm=o.clip_norm, accum_steps=o.grad_accum, trainable=trainable)
    return tx, schedule


def _fit(cfg: Config, model, objective, data: dict, val: dict | None, run: Path, *, total: int,
         per_epoch: int, trainable=None, best: tuple[str, str] | None = None, loader=None):
    """Train `model` on `data` (or on the batches of `loader`, e.g. distill's multi-stream
    iterator); returns (trainer, checkpoints, last validation metrics)."""
    import jax

    from hsemo_jax.train.checkpoints import RunCheckpoints
    from hsemo_jax.train.data import BatchIterator
    from hsemo_jax.train.loop import Trainer, fit

    tx, schedule = _optimizer(cfg, total, per_epoch, trainable)
    trainer = Trainer(model, objective, tx, compute_dtype=cfg.train.compute_dtype, seed=cfg.train.seed,
                      schedule=schedule, accum_steps=cfg.optim.grad_accum)
    if loader is None:
        loader = BatchIterator(data, cfg.train.batch_size, seed=cfg.train.seed,
                               process_index=jax.process_index(), process_count=jax.process_count())
    metric, mode = best or (cfg.checkpoint.best_metric, cfg.checkpoint.best_mode)
    ckpt = RunCheckpoints(run / "checkpoints", keep=cfg.checkpoint.keep, keep_best=cfg.checkpoint.keep_best,
                          best_metric=metric if val is not None else None, best_mode=mode,
                          async_save=cfg.checkpoint.async_save)
    try:
        last = fit(trainer, loader, total_steps=total, run_dir=run, checkpoints=ckpt,
                   save_every=cfg.checkpoint.save_every, eval_data=val,
                   eval_every=cfg.train.eval_every or per_epoch, eval_batch=cfg.train.eval_batch or None,
                   log_every=cfg.train.log_every, progress=cfg.train.progress, tensorboard=cfg.train.tensorboard)
    except BaseException:
        ckpt.close()
        raise
    return trainer, ckpt, last


def _best_params(trainer, ckpt):
    """The train state of the best checkpoint if there is one, else the current one."""
    if ckpt.best_step() is not None:
        state, _ = ckpt.restore(trainer.state, ckpt.best_step(), which="best")
        return state, ckpt.best_step()
    return trainer.host_state(), None


# ----------------------------------------------------------------------------------------------
# MTL head
# ----------------------------------------------------------------------------------------------
def run_head(cfg: Config) -> dict:
    """Train the MTL head; returns the assembled head's validation metrics (or {})."""
    init_distributed(cfg)
    import jax
    from flax import nnx

    from hsemo_jax.models.heads import MTLHead, save_head
    from hsemo_jax.train import losses
    from hsemo_jax.train.data import load_features, select_rows
    from hsemo_jax.train.objectives import HeadObjective

    # every input is checked before RUN/ is written: a failed start leaves no config behind
    if not cfg.data.train:
        raise InputError("data.train: no feature dataset given")
    data = load_features(cfg.data.train)
    val = load_features(cfg.data.val) if cfg.data.val else None
    if val is not None and val["x"].shape[1] != data["x"].shape[1]:
        raise InputError(f"data.val: {val['x'].shape[1]} feature columns, the training set has {data['x'].shape[1]}")
    tasks = tuple(t for t in ("expr", "va", "au") if t in cfg.head.tasks)
    for t in tasks:
        if not data[f"{t}_mask"].any():
            raise InputError(f"head.tasks: {t!r} has no labelled row in {cfg.data.train}")
    # each training set must hold a batch: joint mode trains on the rows with any task's label,
    # separate mode each head on its own task's rows
    sizes = ({"+".join(tasks): int(np.any([data[f"{t}_mask"] for t in tasks], axis=0).sum())}
             if cfg.head.mode == "joint" else {t: int(data[f"{t}_mask"].sum()) for t in tasks})
    for name, rows in sizes.items():
        if rows < cfg.train.batch_size:
            raise InputError(f"train.batch_size: {cfg.train.batch_size} is larger than the {rows} training rows "
                             f"labelled for {name} in {cfg.data.train}")
    run = prepare_run_dir(cfg, "train-head")
    head = MTLHead(data["x"].shape[1], seed=cfg.head.seed)
    cw = (losses.class_weights(data["expr"], 8, data["expr_mask"])
          if cfg.loss.class_weights == "inverse_frequency" else None)
    w0, w1 = (losses.au_weights(data["au"], data["au_mask"]) if cfg.loss.au_weights == "balanced" and
              data["au_mask"].any() else (None, None))

    def objective(ts):
        return HeadObjective(ts, class_weight=cw, au_w0=w0, au_w1=w1, l2=cfg.loss.l2,
                             label_smoothing=cfg.loss.label_smoothing, task_weights=dict(cfg.head.task_weights),
                             compute_dtype=cfg.train.compute_dtype)

    if cfg.head.mode == "joint":
        rows = np.zeros(len(data["x"]), bool)
        for t in tasks:
            rows |= data[f"{t}_mask"]
        sub = select_rows(data, rows)
        total, per_epoch = _steps(cfg, len(sub["x"]), cfg.train.batch_size, cfg.train.epochs)
        trainer, ckpt, _ = _fit(cfg, head, objective(tasks), sub, val, run, total=total, per_epoch=per_epoch)
        state, _ = _best_params(trainer, ckpt)
        ckpt.close()
        nnx.update(head, jax.tree.map(np.asarray, _host(state["params"])))
    else:
        for t in tasks:
            sub = select_rows(data, data[f"{t}_mask"])
            sub_val = select_rows(val, val[f"{t}_mask"]) if val is not None and val[f"{t}_mask"].any() else None
            epochs = getattr(cfg.head, f"epochs_{t}")
            total, per_epoch = _steps(cfg, len(sub["x"]), cfg.train.batch_size, epochs)
            module = getattr(head, t)
            trainer, ckpt, _ = _fit(cfg, module, objective((t,)), sub, sub_val, run / t, total=total,
                                    per_epoch=per_epoch, best=HEAD_SELECTION[t])
            state, _ = _best_params(trainer, ckpt)
            ckpt.close()
            nnx.update(module, jax.tree.map(np.asarray, _host(state["params"])))
    result = {}
    if val is not None:
        from hsemo_jax.train.loop import Trainer
        from hsemo_jax import optim

        # the untrained sub-heads are left out of the metrics: their labels are masked out
        untrained = {f"{t}_mask": np.zeros_like(val[f"{t}_mask"]) for t in ("expr", "va", "au") if t not in tasks}
        evaluator = Trainer(head, objective(tasks), optim.make_optimizer("adam", 0.0))
        result = evaluator.evaluate({**val, **untrained}, cfg.train.eval_batch or cfg.train.batch_size)
    if jax.process_index() == 0:
        save_head(head, run, tasks)
        # the final validation metrics of the trained tasks (null without validation data)
        atomic_write(run / "metrics_final.json", json.dumps(
            {"tasks": list(tasks), "validation": result if val is not None else None}, indent=2) + "\n")
    return result


def _host(tree):
    from hsemo_jax.train.distributed import to_host

    return to_host(tree)


# ----------------------------------------------------------------------------------------------
# backbone pretraining
# ----------------------------------------------------------------------------------------------
def check_init(path: str, arch: str, field: str) -> None:
    """Before RUN/ is written: the model directory of config field `field` exists and holds a model
    of `arch`'s family (`init_from` copies the tensors whose names and shapes match: from another
    family next to none, e.g. 1 of 12, silently)."""
    from hsemo_jax.checkpoint import read_info
    from hsemo_jax.models import registry

    try:
        info = read_info(path)
    except InputError as e:
        raise InputError(f"{field}: {e}") from None
    if registry.get_arch(info.arch).family != registry.get_arch(arch).family:
        raise InputError(f"{field}: {path} holds a {info.arch} model, which cannot initialize a {arch}")


def init_from(model, path: str) -> tuple[int, int]:
    """Copy every parameter/statistic of the model directory `path` whose name and shape match;
    returns (copied, total) leaf counts."""
    import jax
    from flax import nnx

    from hsemo_jax.checkpoint import load_model
    from hsemo_jax.models.heads import flat_state, path_str

    src = flat_state(load_model(path))
    state = nnx.state(model)
    pure = nnx.to_pure_dict(state)
    copied = 0

    def pick(p, v):
        nonlocal copied
        s = src.get(path_str(p))
        if s is not None and s.shape == v.shape:
            copied += 1
            return s.astype(v.dtype)
        return v

    pure = jax.tree_util.tree_map_with_path(pick, pure)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return copied, len(jax.tree.leaves(pure))


def _pretrain_data(cfg: Config, scan: bool = True):
    """(train Split, validation Split or None, training labels or None): the datasets opened and
    checked against the model and the batch, before anything is built, compiled or written; the
    labels are read (`scan`) when the class weights or class-balanced sampling need them."""
    import time

    from hsemo_jax.models import registry
    from hsemo_jax.train.pretrain_data import open_split

    import jax

    arch = registry.get_arch(cfg.model.arch)
    devices = jax.device_count()  # a multiple of the process count
    for name, batch in (("train.batch_size", cfg.train.batch_size), ("train.eval_batch", cfg.train.eval_batch)):
        if batch % devices:
            raise InputError(f"{name}: {batch} is not a multiple of the {devices} devices")
    kw = dict(num_outputs=cfg.model.num_outputs, image_size=arch.input_size)
    train = open_split(cfg.data.train, cfg.data.train_split, "data.train", **kw)
    val = open_split(cfg.data.val, cfg.data.val_split, "data.val", **kw) if cfg.data.val else None
    if len(train) < cfg.train.batch_size:
        raise InputError(f"{train.where}: {len(train)} examples, fewer than one global batch "
                         f"(train.batch_size = {cfg.train.batch_size})")
    labels = None
    if scan and (cfg.loss.class_weights == "inverse_frequency" or cfg.data.sampling == "class_balanced"):
        t0 = time.perf_counter()
        labels = train.scan_labels()
        print(f"read the labels of {len(train)} training examples ({time.perf_counter() - t0:.1f} s): "
              f"{int(labels['expr_mask'].sum())} with an expression, {int(labels['va_mask'].sum())} with VA",
              flush=True)
        if not labels["expr_mask"].any():
            raise InputError(f"{train.where}: no example has an expression label, which "
                             f"loss.class_weights = inverse_frequency / data.sampling = class_balanced need")
    return train, val, labels


def _pretrain_setup(cfg: Config, labels):
    """(model, objective, trainable) of a pretraining run (`labels`: the training labels, for the
    class weights; None = no class weights, e.g. to export a checkpoint)."""
    from hsemo_jax.models import registry
    from hsemo_jax.train import losses
    from hsemo_jax.train.objectives import BackboneObjective

    arch = registry.get_arch(cfg.model.arch)
    num_expr = 8
    model = registry.build(cfg.model.arch, cfg.model.num_outputs, num_heads=cfg.model.num_heads, seed=cfg.model.seed)
    if cfg.model.init:
        copied, total = init_from(model, cfg.model.init)
        print(f"initialized {copied}/{total} tensors from {cfg.model.init}", flush=True)
    cw = (losses.class_weights(labels["expr"], num_expr, labels["expr_mask"])
          if cfg.loss.class_weights == "inverse_frequency" and labels is not None else None)
    objective = BackboneObjective(
        arch.mean, arch.std, num_expr=num_expr, use_va=cfg.model.num_outputs == 10, class_weight=cw,
        ce_normalize=cfg.loss.ce_normalize, label_smoothing=cfg.loss.label_smoothing, va_weight=cfg.loss.va_weight,
        attention_weight=cfg.loss.attention_weight if arch.family == "ddamfn" else 0.0,
        compute_dtype=cfg.train.compute_dtype)
    trainable = None
    if cfg.optim.trainable == "classifier":
        head = CLASSIFIER[arch.family]
        trainable = lambda path: path.split("/")[0] == head  # noqa: E731
    return model, objective, trainable


def _pretrain_loaders(cfg: Config, train, val, labels):
    """(training batches, validation batches or None) through grain (see pretrain_data)."""
    from data_pipelines.augment import PRESETS
    from data_pipelines.loaders import Preprocessing
    from hsemo_jax.train.pretrain_data import EvalBatches, TrainBatches, balanced_weights

    prep = Preprocessing.for_arch(cfg.model.arch)
    d = cfg.data
    io = dict(workers=d.workers, read_threads=d.read_threads, prefetch=d.prefetch)
    weights = balanced_weights(labels["expr"], labels["expr_mask"]) if d.sampling == "class_balanced" else None
    loader = TrainBatches(train, prep, global_batch=cfg.train.batch_size, seed=cfg.train.seed,
                          augment=PRESETS[d.augment], weights=weights, **io)
    # validation decodes in this process (threads): no worker processes to start per evaluation
    evaluation = (EvalBatches(val, prep, global_batch=cfg.train.eval_batch or cfg.train.batch_size,
                              read_threads=d.read_threads, prefetch=d.prefetch) if val is not None else None)
    return loader, evaluation


def export_model(cfg: Config, state, out: Path) -> Path:
    """Write the train state's model as an hsemo-jax model directory (`hsemo-jax convert` format)."""
    import jax
    from flax import nnx

    from hsemo_jax.checkpoint import ModelInfo, save_model
    from hsemo_jax.models import registry

    model = registry.build(cfg.model.arch, cfg.model.num_outputs, num_heads=cfg.model.num_heads)
    host = _host(state)
    nnx.update(model, jax.tree.map(np.asarray, host["params"]), jax.tree.map(np.asarray, host["stats"]))
    info = ModelInfo.for_arch(cfg.model.arch, cfg.model.num_outputs, num_heads=cfg.model.num_heads,
                              source={"trained_by": "hsemo-jax pretrain", "run_dir": str(cfg.run_dir),
                                      "step": int(np.asarray(host["step"]))})
    return save_model(model, info, out, overwrite=True)


def run_pretrain(cfg: Config, export_only: bool = False) -> dict:
    """Pretrain a backbone on a TFDS build read through grain; writes RUN/model (the best
    checkpoint by checkpoint.best_metric if validated, else the last) when single-process."""
    init_distributed(cfg)
    import jax

    train, val, labels = _pretrain_data(cfg, scan=not export_only)
    if cfg.model.init:
        check_init(cfg.model.init, cfg.model.arch, "model.init")
    if export_only and cfg.run_dir and not (Path(cfg.run_dir) / "config.json").is_file():
        # checked before prepare_run_dir, which would start a run there
        raise InputError(f"{cfg.run_dir}: not a pretrain run (no config.json), nothing to export")
    run = prepare_run_dir(cfg, "pretrain")
    model, objective, trainable = _pretrain_setup(cfg, labels)
    total, per_epoch = _steps(cfg, len(train), cfg.train.batch_size, cfg.train.epochs)
    if export_only:
        from hsemo_jax.train.checkpoints import RunCheckpoints
        from hsemo_jax.train.loop import Trainer

        ckpt = RunCheckpoints(run / "checkpoints", best_metric=cfg.checkpoint.best_metric if val else None,
                              best_mode=cfg.checkpoint.best_mode)
        if ckpt.latest_step() is None:
            raise InputError(f"{run}: no checkpoint to export")
        tx, _ = _optimizer(cfg, total, per_epoch, trainable)
        trainer = Trainer(model, objective, tx, compute_dtype=cfg.train.compute_dtype)
        from hsemo_jax.train import distributed

        state, _ = ckpt.restore(trainer.state)
        trainer.state = distributed.put_replicated(state, trainer.mesh)
        last = {}
    else:
        loader, evaluation = _pretrain_loaders(cfg, train, val, labels)
        try:
            trainer, ckpt, last = _fit(cfg, model, objective, None, evaluation, run, total=total,
                                       per_epoch=per_epoch, trainable=trainable, loader=loader)
        finally:
            loader.close()
    state, best_step = _best_params(trainer, ckpt)
    ckpt.close()
    if jax.process_count() == 1:
        out = export_model(cfg, state, run / "model")
        print(f"wrote {out} ({'best step ' + str(best_step) if best_step is not None else 'last step'})", flush=True)
    else:
        print(f"multi-process run: export the model with `hsemo-jax pretrain CONFIG --out {run} --export` "
              "from one process", flush=True)
    return last
