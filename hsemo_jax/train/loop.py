"""The trainer: one jitted data-parallel train step and the resumable loop around it.

Used by both `hsemo-jax train-head` (MTL head on a feature dataset) and `hsemo-jax pretrain`
(backbones on images); what differs is the model and the objective (`objectives.py`).

Train state (one pytree, replicated over the mesh, checkpointed whole):
    {"step": int32 (), "params": nnx.State of nnx.Param (float32 master weights),
     "stats": nnx.State of the other variables (BatchNorm running statistics),
     "opt_state": optax state, "rng": uint32 (2,) threefry key data; step key = fold_in(key, step)}

The step merges the model in train mode (BatchNorm uses batch statistics -- global over the
sharded batch, see `distributed.py` -- and updates its running ones), computes the objective,
differentiates w.r.t. the params and applies the optax update. With compute_dtype "bfloat16"
the params are cast to bf16 for the forward/backward pass while the optimizer updates the fp32
master copy (gradients arrive in fp32 through the cast); running statistics stay fp32.
"""
from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hsemo_jax import runtime
from hsemo_jax.errors import InputError
from hsemo_jax.train import distributed as dist
from hsemo_jax.train.data import eval_batches
from hsemo_jax.train.metrics_log import MetricsLog, Progress


def cast_floats(tree, dtype):
    """`tree` with its floating arrays in `dtype` (a compute dtype; None or float32: unchanged)."""
    if dtype is None or jnp.dtype(dtype) == jnp.float32:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


class Trainer:
    """Jitted train/predict steps for `model` under `objective` with optax `tx`.

    model: an nnx.Module (its current values are the initial params); objective: see
    `objectives.py`; mesh: default all devices on "data"; schedule: lr(update count), logged only;
    accum_steps: micro-steps per optimizer update when `tx` is an `optax.MultiSteps`.
    """

    def __init__(self, model: nnx.Module, objective, tx: optax.GradientTransformation, *, mesh=None,
                 compute_dtype: str = "float32", seed: int = 0, schedule: Callable | None = None,
                 accum_steps: int = 1):
        self.mesh = mesh if mesh is not None else dist.make_mesh()
        self.objective = objective
        self.tx = tx
        self.compute_dtype = None if compute_dtype == "float32" else jnp.dtype(compute_dtype)
        self.schedule = schedule
        self.accum_steps = accum_steps
        model.eval()
        self.eval_graph = nnx.split(model, nnx.Param, ...)[0]
        model.train()
        self.graph, params, stats = nnx.split(model, nnx.Param, ...)
        model.eval()  # the caller's module is left as built; the train graph keeps train mode
        # key data of jax.random.key(seed, impl="threefry2x32"), built without compiling the seeding
        rng = np.array([0, seed & 0xFFFFFFFF], np.uint32)
        host_state = {"step": np.zeros((), np.int32), "params": params, "stats": stats,
                      "opt_state": jax.jit(tx.init)(params), "rng": rng}
        self.state = dist.put_replicated(host_state, self.mesh)
        rep, bsh = dist.replicated(self.mesh), dist.batch_sharded(self.mesh)
        options = runtime.compiler_options()
        self._train = jax.jit(self._train_step, in_shardings=(rep, bsh), out_shardings=(rep, rep),
                              donate_argnums=(0,), compiler_options=options)
        self._predict = jax.jit(self._predict_step, in_shardings=(rep, bsh), out_shardings=rep,
                                compiler_options=options)
        self._predict_gather = jax.jit(self._predict_gather_step, in_shardings=(rep, bsh), out_shardings=rep,
                                       compiler_options=options)

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    # -- jitted bodies ------------------------------------------------------------------------
    def _train_step(self, state, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"], impl="threefry2x32"), state["step"])

        def loss_fn(params, stats):
            stats = jax.tree.map(lambda v: v, stats)  # fresh Variables at this trace level (BN mutates them)
            model = nnx.merge(self.graph, cast_floats(params, self.compute_dtype), stats)
            loss, parts = self.objective.loss(model, batch, key)
            new_stats = nnx.split(model, nnx.Param, ...)[2]
            return loss, (parts, new_stats)

        (loss, (parts, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], state["stats"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        stats = jax.tree.map(lambda new, old: new.astype(old.dtype), stats, state["stats"])
        new_state = {"step": state["step"] + 1, "params": params, "stats": stats, "opt_state": opt_state,
                     "rng": state["rng"]}
        return new_state, {"loss": loss, **parts, "grad_norm": optax.tree.norm(grads)}

    def _predict_step(self, state, batch):
        model = nnx.merge(self.eval_graph, cast_floats(state["params"], self.compute_dtype), state["stats"])
        return self.objective.predict(model, batch)

    def _predict_gather_step(self, state, batch):
        """Predictions and the batch's labels and mask, all replicated (gathered from every process)."""
        return self._predict_step(state, batch), {k: v for k, v in batch.items() if k not in ("images", "erase")}

    # -- host API -----------------------------------------------------------------------------
    def check_batch(self, global_batch: int) -> None:
        if global_batch % self.num_devices:
            raise InputError(f"batch size {global_batch} is not a multiple of the {self.num_devices} devices")

    def step(self, local_batch: dict) -> dict:
        """One step on this process's rows of a global batch; returns device scalars (async)."""
        self.state, metrics = self._train(self.state, dist.put_batch(local_batch, self.mesh))
        return metrics

    def predict(self, data: dict, global_batch: int) -> dict[str, np.ndarray]:
        """Predictions over every row of `data` (all processes hold all rows) -> numpy (N, ...)."""
        self.check_batch(global_batch)
        outs = []
        for b in eval_batches(data, global_batch, process_index=jax.process_index(),
                              process_count=jax.process_count()):
            b.pop("valid")  # padding rows are the trailing ones; cut below
            outs.append(dist.to_host(self._predict(self.state, dist.put_batch(b, self.mesh))))
        n = len(next(iter(data.values())))
        return {k: np.concatenate([o[k] for o in outs])[:n] for k in outs[0]}

    def predict_batches(self, batches) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(predictions, labels) over the real rows of `batches`: an iterable of this process's
        fixed-shape batches whose "mask" flags real rows (every process yields as many), e.g.
        `pretrain_data.EvalBatches`; rows of all processes, identical on each."""
        preds, labels = [], []
        for b in batches:
            p, f = dist.to_host(self._predict_gather(self.state, dist.put_batch(b, self.mesh)))
            keep = f.pop("mask")
            preds.append({k: v[keep] for k, v in p.items()})
            labels.append({k: v[keep] for k, v in f.items()})
        if not preds:
            raise InputError("the validation data has no batch")
        return tuple({k: np.concatenate([d[k] for d in parts]) for k in parts[0]} for parts in (preds, labels))

    def evaluate(self, data, global_batch: int) -> dict[str, float]:
        """Validation metrics over `data`: a dict of row arrays (every process holds all rows), or
        batches for `predict_batches` (their batch size is theirs; `global_batch` is unused)."""
        if isinstance(data, dict):
            return self.objective.evaluate(self.predict(data, global_batch), data)
        return self.objective.evaluate(*self.predict_batches(data))

    def lr(self, step: int) -> float:
        return float(self.schedule(step // self.accum_steps)) if self.schedule is not None else float("nan")

    def host_state(self):
        """The train state as numpy (identical on every process)."""
        return dist.to_host(self.state)


def fit(trainer: Trainer, loader, *, total_steps: int, run_dir=None, checkpoints=None,
        save_every: int = 0, eval_data: dict | None = None, eval_every: int = 0, eval_batch: int | None = None,
        log_every: int = 10, progress: bool = True, tensorboard: bool = True) -> dict:
    """Train until `total_steps` (resuming from `checkpoints` if it holds a step), logging every
    step to RUN/metrics.csv, evaluating every `eval_every` steps (and at the end) on `eval_data`,
    saving every `save_every` steps (and at the end). A loader with a `grain_iterator`
    (`pretrain_data.TrainBatches`) has that iterator's state saved and restored in the same
    checkpoint step as the train state. Returns the last validation metrics (or {})."""
    trainer.check_batch(loader.global_batch)
    grain_iterator = getattr(loader, "grain_iterator", None)
    start = 0
    if checkpoints is not None and checkpoints.latest_step() is not None:
        state, data_state = checkpoints.restore(trainer.state, iterator=grain_iterator)
        trainer.state = dist.put_replicated(state, trainer.mesh)
        loader.restore(data_state)
        start = int(state["step"])
    main = jax.process_index() == 0
    log = MetricsLog(run_dir, resume_step=start, tensorboard=tensorboard, enabled=main and run_dir is not None)
    bar = Progress(total_steps, enabled=main and progress)
    eval_batch = eval_batch or loader.global_batch
    pending: list = []
    last_val: dict = {}
    t_window = time.perf_counter()

    def flush(force_progress=False):
        nonlocal pending, t_window
        if not pending:
            return
        host = dist.to_host([m for _, _, m in pending])
        now = time.perf_counter()
        rate = len(pending) * loader.global_batch / max(now - t_window, 1e-9)
        rows = []
        for (step, epoch, _), m in zip(pending, host):
            rows.append({"step": step, "epoch": epoch, "wall_time": time.time(), "lr": trainer.lr(step - 1),
                         "images_per_s": rate, **{k: float(v) for k, v in m.items()}})
        log.write(rows)
        last = dict(rows[-1])
        last["_step_s"] = (now - t_window) / len(pending)
        bar.update(rows[-1]["step"], rows[-1]["epoch"], {k: v for k, v in last.items() if k.startswith(("loss", "_"))},
                   rate, force=force_progress)
        pending, t_window = [], now

    try:
        for step in range(start + 1, total_steps + 1):
            epoch = loader.epoch
            pending.append((step, epoch, trainer.step(next(loader))))
            last_step = step == total_steps
            do_eval = eval_data is not None and (last_step or (eval_every and step % eval_every == 0))
            do_save = checkpoints is not None and (last_step or (save_every and step % save_every == 0))
            if last_step or do_eval or do_save or len(pending) >= log_every:
                flush(force_progress=last_step)
            if do_eval:
                last_val = trainer.evaluate(eval_data, eval_batch)
                log.write([{"step": step, "epoch": epoch, "wall_time": time.time(),
                            **{f"val_{k}": v for k, v in last_val.items()}}])
                if checkpoints is not None:
                    checkpoints.save_best(step, trainer.state, loader.state(), last_val)
                t_window = time.perf_counter()
            if do_save:
                checkpoints.save(step, trainer.state, loader.state(), iterator=grain_iterator)
                t_window = time.perf_counter()
        flush()
    finally:
        if checkpoints is not None:
            checkpoints.wait()
        log.close()
        bar.close()
    return last_val
