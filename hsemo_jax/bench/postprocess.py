"""`hsemo-jax bench postprocess`: the JAX post-processing engine against the notebook's loops.

Synthetic data shaped like the s-Aff-Wild2 validation set (26,876 frames in 70 videos of uneven
length, a few frame gaps; 8 EXPR probabilities, 2 VA values, 12 AU probabilities; EXPR labels on
15,440 frames as in spec §3.2). Two workloads, each timed in the same run for both sides, warm-up
(JIT compilation) excluded, median of several repeats:

(a) the original smoothing sweep (mtl7#c64): 9 sigmas x 5 deltas of the notebook's "Gaussian" row
    loop, for EXPR (then argmax, sklearn macro-F1) and VA (then CCC), i.e. 90 smoothings + metrics;
(b) the AU threshold search (mtl7#c30 `f1_score_max`): 12 AUs x 99 thresholds, best F1 per AU.

Baselines are written here, not taken from the package:
* (a) "numpy": the notebook loop with its two inner `for j` loops replaced by numpy slices over
  the same rows (the outer loop over frames stays in Python); "literal" (`--baseline literal`):
  the notebook's pure-Python double loop, verbatim in structure (slow: about 20 minutes here).
* (b) sklearn `f1_score` per (AU, threshold), as in `f1_score_max_for_AU_one_class` (the
  notebook also computes precision, recall and accuracy there; they do not affect the choice and
  are left out, which makes the baseline faster, i.e. the reported speedup conservative).
Both sides' answers are compared and the largest difference printed.
"""
from __future__ import annotations

import math
import os
import statistics
import time

N_FRAMES, N_VIDEOS, N_EXPR_LABELLED = 26876, 70, 15440
SIGMAS = (0.1, 1, 10, 50, 100, 500, 1000, 10000, 100000)
DELTAS = (1, 5, 10, 50, 100)


def add_arguments(parser) -> None:
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the JAX side (default 5)")
    parser.add_argument("--baseline-repeats", type=int, default=3, help="timed repeats of the baselines (default 3)")
    parser.add_argument("--baseline", choices=("numpy", "literal"), default="numpy",
                        help="baseline for (a): numpy-vectorised inner loops (default) or the literal Python loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("a", "b"), help="run one workload only")
    parser.add_argument("--cpu-devices", type=int, default=os.cpu_count() or 1,
                        help="CPU devices for JAX to shard over (default: one per core; only takes effect if JAX "
                             "has not started yet in this process)")


# ----------------------------------------------------------------------------------------------
def synthetic(seed: int = 0):
    """s-Aff-Wild2-validation-shaped data with temporally correlated scores and labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w = rng.lognormal(0.0, 0.9, N_VIDEOS)
    lengths = np.maximum(20, np.round(w / w.sum() * N_FRAMES)).astype(int)
    lengths[np.argmax(lengths)] += N_FRAMES - lengths.sum()
    videos, frames = [], []
    for v, n in enumerate(lengths):
        step = 1 + (rng.random(n) < 0.03) * rng.integers(1, 30, n)  # ~3% gaps of 1..29 frames
        videos += [f"video{v}"] * n
        frames.append(np.cumsum(step))
    frames = np.concatenate(frames)

    def walk(c, scale):  # per-video random walk
        x = np.empty((N_FRAMES, c))
        start = 0
        for n in lengths:
            x[start:start + n] = np.cumsum(rng.normal(size=(n, c)), axis=0) * scale
            start += n
        return x

    latent = walk(8, 0.15)
    logits = latent + rng.normal(size=latent.shape) * 1.5
    expr_p = np.exp(logits - logits.max(1, keepdims=True))
    expr_p /= expr_p.sum(1, keepdims=True)
    expr_t = np.argmax(latent + rng.normal(size=latent.shape), 1)
    expr_t[rng.permutation(N_FRAMES)[N_EXPR_LABELLED:]] = -1
    va_t = np.tanh(walk(2, 0.08))
    va_p = va_t * 0.7 + rng.normal(size=va_t.shape) * 0.35
    au_lat = walk(12, 0.1) - 1.0
    au_t = (au_lat + rng.normal(size=au_lat.shape) * 0.5 > 0).astype(np.int64)
    au_p = 1.0 / (1.0 + np.exp(-(au_lat + rng.normal(size=au_lat.shape))))
    f32 = np.float32
    return dict(videos=np.array(videos), frames=frames, expr_p=expr_p.astype(f32), expr_t=expr_t,
                va_p=va_p.astype(f32), va_t=va_t.astype(f32), au_p=au_p.astype(f32), au_t=au_t)


# ----------------------------------------------------------------------------------------------
# baselines: transcriptions of the notebook (mtl7#c3, c30, c64)
def ccc_score(x, y):
    """mtl7#c3 CCC_score."""
    import numpy as np

    vx = x - np.mean(x)
    vy = y - np.mean(y)
    rho = np.sum(vx * vy) / (np.sqrt(np.sum(vx ** 2)) * np.sqrt(np.sum(vy ** 2)))
    x_m, y_m, x_s, y_s = np.mean(x), np.mean(y), np.std(x), np.std(y)
    return 2 * rho * x_s * y_s / (x_s ** 2 + y_s ** 2 + (x_m - y_m) ** 2)


def smooth_literal(y_pred, videoname_frames, sigma, delta):
    """The notebook's loop, as written (mtl7#c64)."""
    import numpy as np

    y_smooth = np.zeros_like(y_pred)
    num_y = len(y_pred)
    for i in range(num_y):
        start, end = max(0, i - delta), min(num_y, i + delta + 1)
        k_sum = 0
        for j in range(i - 1, start, -1):
            if videoname_frames[j][0] == videoname_frames[i][0]:
                k = math.exp(-(videoname_frames[j][1] - videoname_frames[i][1]) ** 2 / sigma)
                y_smooth[i] += k * y_pred[j]
                k_sum += k
            else:
                break
        for j in range(i, end):
            if videoname_frames[j][0] == videoname_frames[i][0]:
                k = math.exp(-(videoname_frames[j][1] - videoname_frames[i][1]) ** 2 / sigma)
                y_smooth[i] += k * y_pred[j]
                k_sum += k
            else:
                break
        y_smooth[i] /= k_sum
    return y_smooth


def smooth_numpy(y_pred, run_lo, run_hi, frames, sigma, delta):
    """The same loop with the two inner loops as numpy slices: rows max(i-delta+1, 1, run start)
    .. min(i+delta, run end - 1), where `run` is row i's run of equal video names (the `break`)."""
    import numpy as np

    y_smooth = np.zeros_like(y_pred)
    num_y = len(y_pred)
    for i in range(num_y):
        lo = max(max(0, i - delta) + 1, run_lo[i]) if i > 0 else 0
        lo = min(lo, i)
        hi = min(num_y, i + delta + 1, run_hi[i])
        k = np.exp(-(frames[lo:hi] - frames[i]) ** 2 / sigma)
        y_smooth[i] = (k[:, None] * y_pred[lo:hi]).sum(0) / k.sum()
    return y_smooth


def baseline_sweep(d, literal: bool):
    """(a) baseline: {(task, sigma, delta): metric} like the notebook's printout."""
    import numpy as np
    from sklearn.metrics import f1_score

    vids = d["videos"]
    vf = list(zip(vids.tolist(), d["frames"].tolist()))
    starts = np.r_[True, vids[1:] != vids[:-1]]
    run_id = np.cumsum(starts) - 1
    run_start = np.nonzero(starts)[0]
    run_end = np.r_[run_start[1:], len(vids)]
    run_lo, run_hi = run_start[run_id], run_end[run_id]
    frames = d["frames"].astype(np.float64)
    m_expr = d["expr_t"] > -1
    gt_v, gt_a = d["va_t"][:, 0], d["va_t"][:, 1]
    out = {}
    for task, y in (("EXPR", d["expr_p"]), ("VA", d["va_p"])):
        for sigma in SIGMAS:
            for delta in DELTAS:
                if literal:
                    ys = smooth_literal(y, vf, sigma, delta)
                else:
                    ys = smooth_numpy(y, run_lo, run_hi, frames, sigma, delta)
                if task == "EXPR":
                    pred = np.argmax(ys, axis=1)
                    out[(task, sigma, delta)] = f1_score(d["expr_t"][m_expr], pred[m_expr], average="macro")
                else:
                    out[(task, sigma, delta)] = 0.5 * (ccc_score(gt_v, ys[:, 0]) + ccc_score(gt_a, ys[:, 1]))
    return out


def baseline_thresholds(d, grid):
    """(b) baseline: per AU, sklearn F1 at every threshold; first argmax (mtl7#c30)."""
    import numpy as np
    from sklearn.metrics import f1_score

    gt, pred = d["au_t"], d["au_p"]
    thr, best = [], []
    for a in range(gt.shape[1]):
        f1 = [f1_score(gt[:, a], (pred[:, a] >= t) * 1) for t in grid]
        f1_max = max(f1)
        if f1_max < 0 or math.isnan(f1_max):
            thr.append(0.0), best.append(0.0)
        else:
            thr.append(grid[int(np.argmax(f1))]), best.append(f1_max)
    return np.array(thr), np.array(best)


# ----------------------------------------------------------------------------------------------
def _time(fn, repeats: int, warmup: bool):
    if warmup:
        fn()
    times, result = [], None
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _request_cpu_devices(n: int) -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if n > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def run(args) -> int:
    _request_cpu_devices(args.cpu_devices)
    import numpy as np

    import jax

    from hsemo_jax.postprocess.sweeping import SweepGrid, sweep
    from hsemo_jax.postprocess.thresholds import search_au_thresholds

    d = synthetic(args.seed)
    lengths = np.unique(d["videos"], return_counts=True)[1]
    print(f"synthetic s-Aff-Wild2-val-shaped data: {len(d['frames'])} frames, {len(lengths)} videos "
          f"(length {lengths.min()}..{lengths.max()}), {int((d['expr_t'] > -1).sum())} EXPR labels; "
          f"JAX {jax.__version__} on {len(jax.devices())} x {jax.devices()[0].platform}")
    rows = []
    if args.only in (None, "a"):
        truth = {"EXPR": d["expr_t"], "VA": d["va_t"]}
        pred = {"EXPR": d["expr_p"], "VA": d["va_p"]}
        grid = SweepGrid(filters=("hsemotion",), sigmas=SIGMAS, ks=DELTAS)
        t_jax, table = _time(lambda: sweep(truth, pred, d["videos"], d["frames"], grid=grid), args.repeats, True)
        t_base, ref = _time(lambda: baseline_sweep(d, args.baseline == "literal"), args.baseline_repeats, False)
        got = {(r["task"], r["sigma"], r["k"]): r["score"] for r in table.rows}
        diff = max(abs(got[(t, float(s), k)] - v) for (t, s, k), v in ref.items())
        best = {t: max((v, key) for key, v in ref.items() if key[0] == t) for t in ("EXPR", "VA")}
        best_j = {t: table.best(t) for t in ("EXPR", "VA")}
        same_best = all((best[t][1][1], best[t][1][2]) == (best_j[t]["sigma"], best_j[t]["k"]) for t in best)
        rows.append(("(a) sweep 9 sigma x 5 delta, EXPR F1 + VA CCC", f"notebook loop ({args.baseline})", t_base, t_jax,
                     f"max abs metric diff {diff:.1e}; same best settings: {same_best}"))
    if args.only in (None, "b"):
        grid = np.linspace(0.01, 0.99, 99)
        labels = d["au_t"]
        t_jax, (thr, f1) = _time(lambda: search_au_thresholds(d["au_p"], labels, grid), args.repeats, True)
        # the notebook compares float32 scores with float64 thresholds; compare in float32 on both sides
        t_base, (thr_ref, f1_ref) = _time(lambda: baseline_thresholds(d, grid.astype(np.float32)),
                                          args.baseline_repeats, False)
        same = bool(np.all(np.float32(thr) == thr_ref))
        rows.append(("(b) AU thresholds 12 AU x 99 t", "sklearn f1_score loop", t_base, t_jax,
                     f"same thresholds: {same}; max abs F1 diff {np.abs(f1 - f1_ref).max():.1e}"))
    print()
    print("| workload | baseline | baseline s | JAX s | speedup | check |")
    print("|---|---|---|---|---|---|")
    for name, base, tb, tj, check in rows:
        print(f"| {name} | {base} | {tb:.3f} | {tj:.4f} | {tb / tj:.0f}x | {check} |")
    print(f"\nmedians of {args.repeats} (JAX, after one warm-up call) and {args.baseline_repeats} (baseline) runs")
    return 0
