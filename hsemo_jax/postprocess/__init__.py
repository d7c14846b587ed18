"""Post-processing of per-frame predictions: packing, smoothing, blending, AU thresholds,
compound expressions, grid sweeps and ABAW file formats (spec §3-§6).

Stable API:
    smooth(scores, video_ids, frames, *, method="gaussian"|"box", sigma, k, compat=None|"hsemotion")
        flat (N, C) scores sorted by (video, frame) -> smoothed (N, C)          [smoothing.py]
    search_au_thresholds(probs, labels, grid=None) -> (thresholds (A,), f1 (A,))  [thresholds.py]
    sweep(truth, pred_a, video_ids, frames, *, pred_b, grid=SweepGrid(...)) -> SweepTable  [sweeping.py]
    blend / blend_tasks                                                         [blending.py]
    compound_scores / aggregate_faces / video_tracks / kl_to_prior               [compound.py]
    pack / pack_dense -> Packed (lanes x T layout of ragged videos)              [packing.py]
    read_* / write_* / align (ABAW files)                                        [abaw_io.py]
Metrics (CCC, F1s, P_MTL, KL, kappa) live in `hsemo_jax.metrics`; class and AU names, the C-EXPR
classes and missing-label codes in `hsemo_jax.labels`.

Names are imported lazily, so importing a submodule (e.g. the CLI glue) does not import JAX.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # packing.py: ragged flat rows <-> (lanes x T) padded layout
    "Packed": "packing", "pack": "packing", "pack_dense": "packing",
    # smoothing.py: eq. 4/5 and the notebooks' filters
    "smooth": "smoothing", "interpolate_gaps": "smoothing",
    # blending.py
    "blend": "blending", "blend_tasks": "blending", "NOTEBOOK_WEIGHTS": "blending",
    # thresholds.py
    "search_au_thresholds": "thresholds", "DEFAULT_GRID": "thresholds",
    # compound.py
    "compound_scores": "compound", "aggregate_faces": "compound", "video_tracks": "compound",
    "logits_to_probs": "compound", "kl_to_prior": "compound", "CEXPR_PRIOR": "compound",
    # sweeping.py
    "sweep": "sweeping", "SweepGrid": "sweeping", "SweepTable": "sweeping", "FILTERS": "sweeping",
    # abaw_io.py
    "read_mtl_labels": "abaw_io", "read_mtl_predictions": "abaw_io", "read_image_list": "abaw_io",
    "read_ce_submission": "abaw_io", "read_task_file": "abaw_io", "write_mtl_submission": "abaw_io",
    "write_mtl_scores": "abaw_io", "write_ce_submission": "abaw_io", "align": "abaw_io",
}


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'hsemo_jax.postprocess' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hsemo_jax.postprocess.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
