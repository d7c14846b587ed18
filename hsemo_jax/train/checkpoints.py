"""Training-run checkpoints with orbax `CheckpointManager`.

    RUN/checkpoints/latest/<step>/{state,data[,iterator]}   periodic async saves, the newest `keep` kept
    RUN/checkpoints/best/<step>/{state,data}                evaluation-time saves, the `keep_best`
                                                            best by `best_metric` (max or min) kept

`state` is the whole train state (step, params, batch statistics, optimizer state, RNG key) as
one pytree of host (numpy) arrays (orbax StandardSave; the state is replicated, so one copy is
the whole state and process 0 writes it); `data` is the batch iterator's position (JSON);
`iterator`, for grain loaders, is each process's grain iterator state
(`grain.checkpoint.CheckpointHandler`: `process_<i>-of-<n>.json`, written when `save` is
called, so it is the state after the saved step's batch). Orbax writes
each step to a temporary directory and renames it when complete, so a process killed while
saving leaves the previous checkpoints intact and the partial one is ignored on restore.
Resume always reads `latest` (the newest complete step).
"""
from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from hsemo_jax.errors import InputError


def _abstract(tree):
    return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree)


def _host(tree):
    from hsemo_jax.train.distributed import to_host

    return to_host(tree)


def _barriers(prefix: str):
    """Each manager's own names for its multi-process barriers: orbax names them by step, so the
    latest and best managers saving the same step at once (an evaluation step that is also a
    save step) would otherwise both wait at `_async_write_complete.<step>` and fail."""
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix)


class RunCheckpoints:
    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, keep_best: int = 1,
                 best_metric: str | None = None, best_mode: str = "max", async_save: bool = True):
        directory = Path(directory).absolute()
        self.best_metric = best_metric
        self.latest = ocp.CheckpointManager(
            directory / "latest", item_names=("state", "data", "iterator"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                                 cleanup_tmp_directories=True,
                                                 multiprocessing_options=_barriers("latest")))
        self.best = None
        if best_metric:
            self.best = ocp.CheckpointManager(
                directory / "best", item_names=("state", "data"),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=keep_best, best_fn=lambda m: float(m[best_metric]), best_mode=best_mode,
                    keep_checkpoints_without_metrics=False, enable_async_checkpointing=async_save,
                    cleanup_tmp_directories=True, multiprocessing_options=_barriers("best")))

    @staticmethod
    def _args(state, data: dict, iterator=None):
        items = {"state": ocp.args.StandardSave(_host(state)), "data": ocp.args.JsonSave(data)}
        if iterator is not None:
            import grain

            items["iterator"] = grain.checkpoint.CheckpointSave(iterator)
        return ocp.args.Composite(**items)

    def save(self, step: int, state, data: dict, iterator=None) -> None:
        """Start an async save of `state` + the data position at `step` (+ a grain `iterator`'s
        state, captured before this returns)."""
        if step in self.latest.all_steps():
            return
        self.latest.save(step, args=self._args(state, data, iterator), force=True)

    def save_best(self, step: int, state, data: dict, metrics: dict) -> None:
        """Offer `state` to the best-by-metric set (kept only if among the `keep_best` best)."""
        if self.best is None or step in self.best.all_steps():
            return
        if self.best_metric not in metrics:
            raise InputError(f"checkpoint.best_metric: {self.best_metric!r} is not a validation metric here "
                             f"(have {', '.join(sorted(metrics))})")
        self.best.save(step, args=self._args(state, data), metrics={k: float(v) for k, v in metrics.items()},
                       force=True)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def best_step(self) -> int | None:
        return None if self.best is None else self.best.best_step()

    def restore(self, like_state, step: int | None = None, which: str = "latest", iterator=None):
        """(state, data position) of `step` (default: newest) in `which` ("latest" or "best");
        the state comes back as numpy arrays with the structure, shapes and dtypes of `like_state`.
        A grain `iterator` is set to its saved state in place."""
        mngr = self.latest if which == "latest" else self.best
        if step is None:
            step = mngr.latest_step() if which == "latest" else mngr.best_step()
        items = {"state": ocp.args.StandardRestore(_abstract(like_state)), "data": ocp.args.JsonRestore()}
        if iterator is not None:
            import grain

            items["iterator"] = grain.checkpoint.CheckpointRestore(iterator)
        restored = mngr.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], dict(restored["data"])

    def wait(self) -> None:
        self.latest.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        if self.best is not None:
            self.best.close()
