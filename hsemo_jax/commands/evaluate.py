"""`hsemo-jax evaluate PRED [GT]`: every ABAW metric for a prediction file.

MTL predictions (scores or submission layout) against MTL ground truth: P_VA (CCC_V, CCC_A),
P_EXPR (macro-F1, accuracy, per-class F1), P_AU (per-AU F1) at the given thresholds, the per-AU
best-F1 thresholds on this set, and P_MTL; optionally after blending with a second model and
smoothing each task. `--compare` gives Cohen's kappa between two runs' EXPR labels.
A C-EXPR submission (no labels exist): class histogram, KL(prior || histogram), and with
`--compare` a second submission, Cohen's kappa and raw agreement.
"""
from __future__ import annotations

import sys

from hsemo_jax.commands import arguments as cc


DEFAULT_BLEND_WEIGHTS = (0.8, 0.5, 0.5)  # the notebook's, for VA, EXPR, AU


def add_arguments(parser) -> None:
    parser.add_argument("pred", help="predictions: MTL scores/submission file, or a C-EXPR submission")
    parser.add_argument("gt", nargs="?", help="MTL ground truth (e.g. validation_set_annotations.txt)")
    cc.add_scoring_arguments(parser)
    parser.add_argument("--blend-weights", type=cc.blend_weights, default=None, metavar="W_VA,W_EXPR,W_AU",
                        help="weight of PRED in the blend, per task (default: the notebook's 0.8,0.5,0.5)")
    for task in ("va", "expr", "au"):
        parser.add_argument(f"--smooth-{task}", type=cc.smooth_spec, metavar="FILTER:SIGMA:K",
                            help=f"smooth {task.upper()} first; FILTER in {', '.join(cc.FILTER_NAMES)} "
                                 "(e.g. hsemotion:1e5:10, box::50)")
    parser.add_argument("--threshold-grid", type=cc.threshold_grid, default=None, metavar="START:STOP:STEP",
                        help="grid for the per-AU threshold search (default 0.1:1:0.1, the notebook's)")
    parser.add_argument("--compare", metavar="OTHER", help="another prediction file of the same images: Cohen's kappa")


def _fmt_row(names, values) -> str:
    return "  ".join(f"{n} {v:.4f}" for n, v in zip(names, values))


def _run_ce(args) -> int:
    import numpy as np

    from hsemo_jax import metrics
    from hsemo_jax.errors import InputError
    from hsemo_jax.labels import CEXPR_SUBMISSION_NAMES
    from hsemo_jax.postprocess import abaw_io, compound

    if args.gt:
        raise InputError(f"{args.pred} is a C-EXPR submission; there is no ground truth to compare with ({args.gt})")
    sub = abaw_io.read_ce_submission(args.pred)
    hist = np.bincount(sub.labels, minlength=7) / len(sub.labels)
    print(f"C-EXPR submission {args.pred}: {len(sub.labels)} frames, {len(set(sub.videos.tolist()))} videos")
    print("class histogram: " + _fmt_row(CEXPR_SUBMISSION_NAMES, hist))
    print("prior:           " + _fmt_row(CEXPR_SUBMISSION_NAMES, compound.CEXPR_PRIOR))
    print(f"KL(prior || histogram) {compound.kl_to_prior(sub.labels):.4f}")
    if args.compare:
        other = abaw_io.read_ce_submission(args.compare)
        if other.images != sub.images:
            raise InputError(f"{args.compare}: lists other images than {args.pred} (or in another order)")
        print(f"vs {args.compare}: Cohen's kappa {metrics.cohen_kappa(sub.labels, other.labels, 7):.4f}, "
              f"raw agreement {(sub.labels == other.labels).mean():.4f}")
    return 0


def _smooth(values, al, spec):
    from hsemo_jax.postprocess.smoothing import smooth
    from hsemo_jax.postprocess.sweeping import FILTERS

    name, sigma, k = spec
    method, compat = FILTERS[name]
    return smooth(values, al.videos, al.frames, method=method, compat=compat,
                  sigma=(sigma if method == "gaussian" else None), k=k)


def run(args) -> int:
    from hsemo_jax.postprocess import abaw_io

    cc.check_prediction_files(args.pred, args.gt, args.blend_weights, args.blend_with)
    if abaw_io.is_ce_submission(args.pred):
        return _run_ce(args)
    import numpy as np

    from hsemo_jax import metrics
    from hsemo_jax.errors import InputError
    from hsemo_jax.labels import AFFWILD_EXPR_8, AU_NAMES
    from hsemo_jax.postprocess import blending
    from hsemo_jax.postprocess.thresholds import DEFAULT_GRID, search_au_thresholds

    pred = abaw_io.read_mtl_predictions(args.pred)
    print(f"predictions {args.pred}: {len(pred.images)} rows ({pred.kind} layout)")
    if warning := pred.va_warning():
        print(f"warning: {warning}", file=sys.stderr)
    if args.compare:
        other = abaw_io.read_mtl_predictions(args.compare)
        if other.images != pred.images:
            raise InputError(f"{args.compare}: lists other images than {args.pred} (or in another order)")
        print(f"EXPR labels vs {args.compare}: Cohen's kappa "
              f"{metrics.cohen_kappa(pred.expr_labels, other.expr_labels, 8):.4f}, raw agreement "
              f"{(pred.expr_labels == other.expr_labels).mean():.4f}")
    if not args.gt:
        if not args.compare:
            raise InputError("give the ground truth GT (or --compare OTHER) to evaluate MTL predictions")
        return 0
    gt = abaw_io.read_mtl_labels(args.gt)
    al = abaw_io.align(pred, gt, allow_missing=args.allow_missing)
    va, expr, aus = pred.va, pred.expr, pred.aus
    if args.blend_with:
        b = abaw_io.read_mtl_predictions_for(args.blend_with, pred.images, args.pred)
        w_va, w_expr, w_au = args.blend_weights or DEFAULT_BLEND_WEIGHTS
        va = blending.blend(va, b["VA"], w_va)
        expr = blending.blend(expr, b["EXPR"], w_expr)
        aus = blending.blend(aus, b["AU"], w_au)
        print(f"blended with {args.blend_with}: weights VA {w_va}, EXPR {w_expr}, AU {w_au}")
    for task, spec in (("VA", args.smooth_va), ("EXPR", args.smooth_expr), ("AU", args.smooth_au)):
        if spec:
            if task == "VA":
                va = _smooth(va, al, spec)
            elif task == "EXPR":
                expr = _smooth(expr, al, spec)
            else:
                aus = _smooth(aus, al, spec)
            print(f"smoothed {task}: filter {spec[0]}, sigma {spec[1]}, k {spec[2]}")
    print(f"ground truth {args.gt}: {int(gt.any_valid.sum())} labelled rows"
          + (f", {al.n_missing} without prediction skipped" if al.n_missing else ""))
    # a task without any labelled row that has a prediction (an EXPR-only set, say) is left out,
    # not an error that hides the others; P_MTL needs all three
    has = {"VA": bool(metrics.va_mask(al.va_true).any()), "EXPR": bool((al.expr_true > -1).any()),
           "AU": bool((al.au_true.min(axis=1) >= 0).any())}
    if not any(has.values()):
        raise InputError(f"{args.gt}: none of its labelled rows has a prediction in {args.pred}")
    res = metrics.abaw_mtl(**({"va_true": al.va_true, "va_pred": va} if has["VA"] else {}),
                           **({"expr_true": al.expr_true, "expr_pred": expr} if has["EXPR"] else {}),
                           **({"au_true": al.au_true, "au_probs": aus, "au_thresholds": args.au_thresholds}
                              if has["AU"] else {}))
    if has["VA"]:
        print(f"VA    P_VA {res['P_VA']:.4f}  (CCC_V {res['CCC_V']:.4f}, CCC_A {res['CCC_A']:.4f}; {res['n_VA']} frames)")
    else:
        print("VA    no labelled frame: not evaluated")
    if has["EXPR"]:
        m = al.expr_true > -1
        tp, npred, ntrue = metrics.class_counts(np.where(m, al.expr_true, 0), np.argmax(expr, 1), m, num_classes=8)
        per_class = metrics.f1_from_counts(tp, npred, ntrue)
        print(f"EXPR  P_EXPR {res['P_EXPR']:.4f}  (macro-F1 over the classes present; accuracy "
              f"{res['EXPR_accuracy']:.4f}; {res['n_EXPR']} frames)")
        print("      F1 per class: " + _fmt_row(AFFWILD_EXPR_8, per_class))
    else:
        print("EXPR  no labelled frame: not evaluated")
    if has["AU"]:
        thr = args.au_thresholds
        thr_txt = f"{thr}" if np.isscalar(thr) else ",".join(f"{t:g}" for t in thr)
        print(f"AU    P_AU {res['P_AU']:.4f}  at thresholds {thr_txt} ({res['n_AU']} frames)")
        print("      F1 per AU: " + _fmt_row(AU_NAMES, res["AU_F1"]))
        if pred.kind == "scores" or args.blend_with:
            grid = DEFAULT_GRID if args.threshold_grid is None else args.threshold_grid
            t_best, f_best = search_au_thresholds(aus, al.au_true, grid)
            print(f"      best thresholds on this set ({len(grid)}-value grid {grid[0]:g}..{grid[-1]:g}): "
                  f"P_AU {f_best.mean():.4f}")
            print("      thresholds: " + "  ".join(f"{n} {t:g}" for n, t in zip(AU_NAMES, t_best)))
    else:
        print("AU    no labelled frame: not evaluated")
    if "P_MTL" in res:
        print(f"P_MTL {res['P_MTL']:.4f}  (= P_VA + P_EXPR + P_AU)")
    else:
        print("P_MTL not given: it needs labelled frames of all three tasks")
    return 0
