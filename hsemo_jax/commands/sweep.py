"""`hsemo-jax sweep PRED GT`: grid search over smoothing filters, sigmas, window sizes and blend
weights for EXPR, VA and AU in one compiled call; prints the best settings per task and writes the
whole table as CSV."""
from __future__ import annotations

from hsemo_jax.commands import arguments as cc


def add_arguments(parser) -> None:
    parser.add_argument("pred", help="MTL predictions in the scores layout (see hsemo_jax.postprocess.abaw_io)")
    parser.add_argument("gt", help="MTL ground truth (e.g. validation_set_annotations.txt)")
    cc.add_scoring_arguments(parser)
    parser.add_argument("--blend-weights", type=cc.float_list, default=None, metavar="W1,W2,...|START:STOP:COUNT",
                        help="weights of PRED to try (default with --blend-with: 0:1:11, the notebook's)")
    parser.add_argument("--filters", default="hsemotion",
                        help=f"comma-separated filters from {', '.join(cc.FILTER_NAMES)} (default hsemotion)")
    parser.add_argument("--sigmas", type=cc.float_list, default=None,
                        help="sigmas (default: the notebook's 0.1,1,10,50,100,500,1000,1e4,1e5)")
    parser.add_argument("--ks", type=cc.int_list, default=None,
                        help="window half-widths k / delta (default: 0,1,5,10,50,100; 0 = no smoothing)")
    parser.add_argument("--tasks", default="EXPR,VA,AU", help="tasks to sweep (default EXPR,VA,AU)")
    parser.add_argument("--top", type=int, default=5, help="rows per task to print (default 5)")
    parser.add_argument("--csv", metavar="PATH", help="where to write the table (default: PRED with _sweep.csv)")


def _markdown(rows) -> str:
    out = ["| task | filter | w | sigma | k | score |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['task']} | {r['filter']} | {r['blend_weight']:g} | {r['sigma']:g} | {r['k']} | {r['score']:.4f} |")
    return "\n".join(out)


def run(args) -> int:
    import os
    import sys
    import time

    import numpy as np

    from hsemo_jax.errors import InputError
    from hsemo_jax.fileio import check_writable
    from hsemo_jax.postprocess import abaw_io, sweeping

    # every setting before a file is read: the grid (filters, sigmas, ks, weights), tasks, --top
    if args.top < 1:
        raise InputError(f"--top must be at least 1, got {args.top}")
    tasks = tuple(t.strip().upper() for t in args.tasks.split(",") if t.strip())
    if not tasks or set(tasks) - set(sweeping.TASKS):
        raise InputError(f"--tasks: expected a comma-separated subset of {','.join(sweeping.TASKS)}, got {args.tasks!r}")
    weights = (args.blend_weights or tuple(float(w) for w in np.linspace(0, 1, 11))) if args.blend_with else (1.0,)
    grid = sweeping.SweepGrid(filters=tuple(f.strip() for f in args.filters.split(",") if f.strip()),
                              sigmas=args.sigmas or sweeping.NOTEBOOK_SIGMAS, ks=args.ks or (0, 1, 5, 10, 50, 100),
                              blend_weights=tuple(weights))
    grid.validate()
    cc.check_prediction_files(args.pred, args.gt, args.blend_weights, args.blend_with)
    out = check_writable(args.csv or os.path.splitext(args.pred)[0] + "_sweep.csv", "sweep table",
                         inputs=(args.pred, args.gt, args.blend_with))
    pred = abaw_io.read_mtl_predictions(args.pred)
    if pred.kind != "scores":
        print(f"warning: {args.pred} holds labels, not scores; smoothing one-hot labels is rarely what you want",
              file=sys.stderr)
    if warning := pred.va_warning():
        print(f"warning: {warning}", file=sys.stderr)
    gt = abaw_io.read_mtl_labels(args.gt)
    al = abaw_io.align(pred, gt, allow_missing=args.allow_missing)
    pred_a = {"VA": pred.va, "EXPR": pred.expr, "AU": pred.aus}
    pred_b = None
    if args.blend_with:
        pred_b = abaw_io.read_mtl_predictions_for(args.blend_with, pred.images, args.pred)
    t0 = time.perf_counter()
    table = sweeping.sweep(al.truth(), pred_a, al.videos, al.frames, pred_b=pred_b, grid=grid, tasks=tasks,
                  au_thresholds=args.au_thresholds)
    dt = time.perf_counter() - t0
    n_settings = len(table.rows)
    print(f"{n_settings} (task, setting) results over {len(al.frames)} frames in {dt:.2f} s")
    for task in tasks:
        rows = sorted(table.for_task(task), key=lambda r: -r["score"])
        best = table.best(task)
        weight = f", w {best['blend_weight']:g}" if args.blend_with else ""
        if best["k"] == 0:
            print(f"\nbest {task}: {best['score']:.4f} unsmoothed{weight} (no smoothing setting does better by more "
                  f"than {sweeping.TIE:g})")
        else:
            base = [r["score"] for r in table.for_task(task) if r["k"] == 0]
            extra = f" (unsmoothed: {max(base):.4f})" if base else ""
            print(f"\nbest {task}: {best['score']:.4f} with filter {best['filter']}{weight}, sigma {best['sigma']:g}, "
                  f"k {best['k']}{extra}")
        print(_markdown(rows[: args.top]))
    table.write_csv(out)
    print(f"\nwrote {out}")
    return 0
