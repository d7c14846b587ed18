"""Per-step metrics to `metrics.csv` (+ a TensorBoard event file) and a progress line with images/s.

The event file (RUN/tensorboard/events.out.tfevents.*) is written by tensorboardX's `SummaryWriter`:
one scalar per metric and step, no TensorFlow needed.

`metrics.csv`: one row per training step (columns: step, epoch (0-based), wall_time, lr, images_per_s,
then the objective's metrics) and one row per evaluation (columns prefixed "val_"). On resume
the rows after the restored step are dropped first, so a killed-and-resumed run's CSV reads as
one uninterrupted run. Only the main process (process 0) writes.
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
from pathlib import Path

from hsemo_jax.fileio import atomic_path

BASE_COLUMNS = ("step", "epoch", "wall_time", "lr", "images_per_s")


def _fmt(v) -> str:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return str(v)


class MetricsLog:
    def __init__(self, run_dir: str | os.PathLike, *, resume_step: int = 0, tensorboard: bool = True,
                 enabled: bool = True):
        self.enabled = enabled and run_dir is not None
        self.path = Path(run_dir or ".") / "metrics.csv"
        self.columns: list[str] | None = None
        self.events = None
        if not self.enabled:
            return
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._truncate_after(resume_step)
        if tensorboard:
            from tensorboardX import SummaryWriter  # here: it imports PyTorch too when that is installed

            self.events = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        self.columns = rows[0]
        keep = [r for r in rows[1:] if r and int(r[0]) <= step]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            w.writerows(keep)

    def write(self, rows: list[dict]) -> None:
        """rows: dicts with at least "step"; new keys after the first write are dropped from the CSV."""
        if not self.enabled or not rows:
            return
        if self.columns is None:
            extra = sorted({k for r in rows for k in r} - set(BASE_COLUMNS))
            self.columns = list(BASE_COLUMNS) + extra
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        missing = sorted({k for r in rows for k in r} - set(self.columns))
        if missing:  # e.g. validation metrics first seen after the header was written
            self._add_columns(missing)
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            for r in rows:
                w.writerow([_fmt(r[c]) if c in r else "" for c in self.columns])
        if self.events is not None:
            for r in rows:
                for k, v in r.items():
                    if k not in ("step", "wall_time") and isinstance(v, (int, float)) and math.isfinite(v):
                        self.events.add_scalar(k, float(v), int(r["step"]), walltime=r.get("wall_time"))
            self.events.flush()

    def _add_columns(self, names: list[str]) -> None:
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        self.columns = self.columns + names
        rows[0] = self.columns
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(r + [""] * (len(self.columns) - len(r)) for r in rows)

    def close(self) -> None:
        if self.events is not None:
            self.events.close()


class Progress:
    """`step 120/1000 (12%) epoch 1 | loss 0.532 | 1234 img/s | eta 3m05s` on stderr, at most every
    `interval` seconds (carriage-return updates on a terminal, one line each otherwise)."""

    def __init__(self, total_steps: int, *, interval: float = 2.0, enabled: bool = True, stream=None):
        self.total = total_steps
        self.interval = interval
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self._last = 0.0

    def update(self, step: int, epoch: int, metrics: dict, images_per_s: float, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.interval):
            return
        self._last = now
        remaining = (self.total - step) * (metrics.get("_step_s") or 0.0)
        shown = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                           if not k.startswith("_") and isinstance(v, float))
        line = (f"step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%) epoch {epoch} | {shown} | "
                f"{images_per_s:.1f} img/s | eta {int(remaining // 60)}m{int(remaining % 60):02d}s")
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
