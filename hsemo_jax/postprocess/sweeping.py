"""Grid search over post-processing settings in one compiled call (spec §4.2-§4.4).

For a grid of filters x blend weights x sigmas x window sizes k, `sweep` smooths every task's
scores and evaluates EXPR macro-F1, VA CCC and AU mean F1 against the ground truth, returning a
table. Everything for the whole grid runs inside a single `jax.jit`:

* one banded pass per (filter, sigma) yields the results for *all* k at once (windows are
  nested, so the partial sums are read off as the window grows);
* smoothing is linear, so models A and B are smoothed once (as extra channels) and every blend
  weight w is evaluated as w * smooth(A) + (1 - w) * smooth(B) (`lax.map` over w). This equals
  the notebook's smooth(w * A + (1 - w) * B) up to float32 rounding;
* metrics reduce to exact integer counts / float32 moments on the device and are finished in
  float64 on the host (`hsemo_jax.metrics`).

The videos are bin-packed into one lane per device and the lanes sharded over a 1-D device mesh,
so the same call runs on one CPU or on several accelerators.

Filters: "gaussian" (eq. 5, sigma = std in frames), "box" (eq. 4), "hsemotion" (the MTL
notebook's Gaussian loop, sigma = the notebook's sigma), "hsemotion_box" (ABAW-6 gap
interpolation + centred box). Box filters ignore sigma (one row per k, sigma = NaN).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hsemo_jax import checks, metrics
from hsemo_jax.errors import InputError
from hsemo_jax.labels import AU_NAMES, MISSING_AU, MISSING_EXPR
from hsemo_jax.postprocess.smoothing import apply_filter, filter_kind, inv_widths, layout, layout_arrays

FILTERS = {
    "gaussian": ("gaussian", None),
    "box": ("box", None),
    "hsemotion": ("gaussian", "hsemotion"),
    "hsemotion_box": ("box", "hsemotion"),
}
NOTEBOOK_SIGMAS = (0.1, 1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 1e4, 1e5)
NOTEBOOK_DELTAS = (1, 5, 10, 50, 100)
TASKS = ("EXPR", "VA", "AU")
TASK_WIDTH = {"EXPR": 8, "VA": 2, "AU": 12}
# Smoothing that raises a score by no more than this (below the 4 printed digits, e.g. a notebook
# sigma of 0.1: neighbour weights e^-10) only ties the unsmoothed score, and the tie goes to it.
TIE = 1e-4


@dataclass(frozen=True)
class SweepGrid:
    """The settings to try. Defaults: the MTL notebook's grid (mtl7#c64), filter "hsemotion", no blend."""

    filters: tuple = ("hsemotion",)
    sigmas: tuple = NOTEBOOK_SIGMAS
    ks: tuple = NOTEBOOK_DELTAS
    blend_weights: tuple = (1.0,)

    def validate(self):
        bad = [f for f in self.filters if f not in FILTERS]
        if bad or not self.filters:
            raise InputError(f"unknown filter {bad[0] if bad else None!r}; choose from {sorted(FILTERS)}")
        if not self.sigmas or any(not (s > 0 and math.isfinite(s)) for s in self.sigmas):
            raise InputError(f"sigmas must be finite and > 0, got {self.sigmas}")
        if not self.ks or any(int(k) != k or k < 0 for k in self.ks):
            raise InputError(f"ks must be ints >= 0, got {self.ks}")
        if not self.blend_weights or any(not 0.0 <= w <= 1.0 for w in self.blend_weights):
            raise InputError(f"blend weights must lie in [0, 1], got {self.blend_weights}")


@dataclass
class SweepTable:
    """Rows: dicts with task, filter, blend_weight, sigma, k, score (+ ccc_v, ccc_a for VA; au_f1 for AU)."""

    rows: list = field(default_factory=list)

    def for_task(self, task: str) -> list:
        return [r for r in self.rows if r["task"] == task]

    def best(self, task: str) -> dict:
        """Row with the highest score for `task`, ties to the first in grid order; but the best
        unsmoothed row (k = 0) when no smoothed one beats it by more than `TIE`."""
        rows = self.for_task(task)
        if not rows:
            raise KeyError(task)

        def first_max(rs):
            return max(enumerate(rs), key=lambda ir: (ir[1]["score"], -ir[0]))[1]

        best = first_max(rows)
        unsmoothed = [r for r in rows if r["k"] == 0]
        if unsmoothed and first_max(unsmoothed)["score"] >= best["score"] - TIE:
            return first_max(unsmoothed)
        return best

    def to_csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["task", "filter", "blend_weight", "sigma", "k", "score", "ccc_v", "ccc_a"]
                   + [f"f1_{a}" for a in AU_NAMES])
        for r in self.rows:
            au = list(r.get("au_f1", [""] * len(AU_NAMES)))
            w.writerow([r["task"], r["filter"], r["blend_weight"], r["sigma"], r["k"], repr(r["score"]),
                        r.get("ccc_v", ""), r.get("ccc_a", "")] + au)
        return buf.getvalue()

    def write_csv(self, path: str) -> None:
        """Write atomically (temp file in the same directory, then os.replace)."""
        from hsemo_jax.fileio import atomic_write

        atomic_write(path, self.to_csv_text())


# ----------------------------------------------------------------------------------------------
def _task_stats(task, x, truth, mask, au_thr):
    """Device statistics of one task for smoothed scores x (nk, S, N, width)."""
    if task == "EXPR":
        return metrics.class_counts(truth, jnp.argmax(x, -1), mask, num_classes=TASK_WIDTH["EXPR"])
    if task == "VA":
        return metrics.ccc_stats(truth.T, jnp.swapaxes(x, -1, -2), mask)  # (nk, S, 2, 5)
    return metrics.binary_counts(truth, x >= au_thr, mask)


@partial(jax.jit, static_argnames=("spec",))
def _sweep_core(values_nc, layouts, invs, truths, masks, weights_w, au_thr, *, spec):
    """spec = (filters: ((kind, interpolate, ks), ...), tasks: ((task, a_start, b_start or -1), ...))."""
    filt_specs, task_specs = spec
    results = []
    for arrs, inv, (kind, interp, ks) in zip(layouts, invs, filt_specs):
        sm = apply_filter(values_nc, arrs, inv, kind=kind, interpolate=interp, ks=ks)  # (nk, S, N, C)
        res = {}
        for task, a0, b0 in task_specs:
            width = TASK_WIDTH[task]
            a = sm[..., a0:a0 + width]
            if b0 < 0:
                res[task] = jax.tree.map(lambda t: t[None], _task_stats(task, a, truths[task], masks[task], au_thr))
            else:
                b = sm[..., b0:b0 + width]
                res[task] = jax.lax.map(
                    lambda w: _task_stats(task, w * a + (1.0 - w) * b, truths[task], masks[task], au_thr), weights_w)
        results.append(res)
    return results


def _truth_and_mask(task, truth, n):
    if task == "EXPR":
        t = checks.as_labels(truth, "EXPR truth", low=MISSING_EXPR, high=7)
        m = t > MISSING_EXPR
    elif task == "VA":
        t = checks.as_float(truth, "VA truth", ndim=2)
        m = metrics.va_mask(t)
    else:
        t = checks.as_labels(truth, "AU truth", low=MISSING_AU, high=1, ndim=2)
        m = t.min(axis=1) >= 0
    if len(t) != n:
        raise InputError(f"length mismatch: {task} truth has {len(t)} rows, predictions {n}")
    if not m.any():
        raise InputError(f"{task}: no valid ground-truth frame (sweep the other tasks with --tasks)")
    t = np.where(m.reshape((-1,) + (1,) * (t.ndim - 1)), t, 0)
    return t.astype(np.float32 if task == "VA" else np.int32), m


def sweep(truth: Mapping[str, np.ndarray], pred_a: Mapping[str, np.ndarray], video_ids, frames, *,
          pred_b: Mapping[str, np.ndarray] | None = None, grid: SweepGrid = SweepGrid(),
          tasks: Sequence[str] | None = None, au_thresholds=0.5, devices: Sequence | None = None) -> SweepTable:
    """Evaluate every grid setting for every task; returns a `SweepTable`.

    truth: {"EXPR": (N,) int, -1 missing; "VA": (N, 2), -5 missing; "AU": (N, 12), -1 missing};
    pred_a / pred_b: {"EXPR": (N, 8) probabilities, "VA": (N, 2), "AU": (N, 12) probabilities},
    row-aligned with truth; video_ids, frames: (N,) (rows sorted by video, frame). Rows whose truth
    is missing still take part in smoothing, as neighbours. tasks: default all present in truth.
    au_thresholds: scalar or (12,). devices: where to run (default: all of `jax.devices()`); the videos
    are bin-packed into one lane per device and the lanes sharded over a 1-D mesh ("lanes"), so
    each device smooths its share; the metric reductions then combine across devices.
    """
    grid.validate()
    tasks = tuple(t for t in TASKS if t in truth) if tasks is None else tuple(tasks)
    if not tasks or any(t not in TASKS for t in tasks):
        raise InputError(f"tasks must be a non-empty subset of {TASKS}, got {tasks}")
    if pred_b is None and tuple(grid.blend_weights) != (1.0,):
        raise InputError("blend weights other than 1.0 need a second model's predictions (pred_b)")
    n = checks.same_length(video_ids=video_ids, frames=frames)
    cols, task_specs, truths, masks = [], [], {}, {}
    width = 0
    models = (pred_a,) if pred_b is None else (pred_a, pred_b)
    starts = {}
    for mi, pred in enumerate(models):
        for task in tasks:
            if task not in pred:
                raise InputError(f"model {'AB'[mi]} has no {task} predictions")
            x = checks.as_float(pred[task], f"model {'AB'[mi]} {task}", ndim=2)
            if x.shape != (n, TASK_WIDTH[task]):
                raise InputError(f"model {'AB'[mi]} {task}: expected shape ({n}, {TASK_WIDTH[task]}), got {x.shape}")
            starts[(mi, task)] = width
            cols.append(x)
            width += x.shape[1]
    for task in tasks:
        truths[task], masks[task] = _truth_and_mask(task, truth[task], n)
        task_specs.append((task, starts[(0, task)], starts.get((1, task), -1)))
    values = np.concatenate(cols, axis=1)
    ks = tuple(sorted(set(int(k) for k in grid.ks)))
    devs = tuple(jax.devices() if devices is None else devices)
    mesh = Mesh(np.array(devs), ("lanes",))
    by_lane, replicated = NamedSharding(mesh, P("lanes")), NamedSharding(mesh, P())
    layouts, invs, filt_specs, sigmas_per = [], [], [], []
    for name in grid.filters:
        method, compat = FILTERS[name]
        kind, interp = filter_kind(method, compat)
        arrs = layout_arrays(layout(video_ids, frames, method=method, compat=compat, lanes=len(devs)))
        layouts.append({k: jax.device_put(v, by_lane if k.endswith("_bt") else replicated) for k, v in arrs.items()})
        invs.append(inv_widths(method, compat, grid.sigmas))
        filt_specs.append((kind, interp, ks))
        sigmas_per.append((math.nan,) if method == "box" else tuple(float(s) for s in grid.sigmas))
    weights = np.asarray(grid.blend_weights if pred_b is not None else (1.0,), np.float32)
    thr = np.asarray(au_thresholds, np.float32).reshape(-1)
    if thr.size not in (1, TASK_WIDTH["AU"]) or not np.isfinite(thr).all():
        raise InputError(f"au_thresholds: expected a number or 12 numbers, got {thr.tolist()}")
    thr = np.broadcast_to(thr, (TASK_WIDTH["AU"],)).copy()
    spec = (tuple(filt_specs), tuple(task_specs))
    put = lambda tree: jax.device_put(tree, replicated)
    raw = _sweep_core(put(values), tuple(layouts), put(tuple(invs)), put(truths), put(masks), put(weights), put(thr),
                      spec=spec)
    raw = jax.device_get(raw)
    return _table(raw, grid, weights, ks, sigmas_per, tasks)


def _table(raw, grid, weights, ks, sigmas_per, tasks) -> SweepTable:
    table = SweepTable()
    for fi, name in enumerate(grid.filters):
        for task in tasks:
            stats = raw[fi][task]
            if task == "EXPR":
                tp, npred, ntrue = stats
                score = metrics.macro_from_counts(tp, npred, ntrue)
            elif task == "VA":
                c = metrics.ccc_from_stats(stats)  # (W, nk, S, 2)
                score = c.mean(-1)
            else:
                tp, npred, ntrue = stats
                f1 = metrics.f1_from_counts(tp, npred, ntrue[:, None, None])
                score = f1.mean(-1)
            for wi, w in enumerate(weights):
                for si, sg in enumerate(sigmas_per[fi]):
                    for ki, k in enumerate(ks):
                        row = dict(task=task, filter=name, blend_weight=float(w), sigma=sg, k=k,
                                   score=float(score[wi, ki, si]))
                        if task == "VA":
                            row.update(ccc_v=float(c[wi, ki, si, 0]), ccc_a=float(c[wi, ki, si, 1]))
                        if task == "AU":
                            row["au_f1"] = [float(v) for v in f1[wi, ki, si]]
                        table.rows.append(row)
    return table
