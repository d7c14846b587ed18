"""Dataset builders (TFDS, ArrayRecord, no TensorFlow), grain loaders and feature datasets.

Builders, one module per dataset; each reads a user's own copy of a licensed dataset
(``manual_dir``) and writes a TFDS ArrayRecord dataset:

    affectnet     AffectNet: official CSV layout (face crops, expression, VA) or folder-per-class
    s_aff_wild2   ABAW-7 multi-task (s-Aff-Wild2) annotation files over ``cropped_aligned`` frames
    aff_wild2     ABAW-6 per-video EXPR / VA / AU annotation files (configs expr, va, au)
    c_expr        C-EXPR-DB videos decoded with OpenCV into frames for inference

This module stays import-light (no tfds / grain / jax): the CLI lists it at start-up.
Heavy modules: ``build`` (build_dataset, open_dataset), ``loaders`` (grain pipelines),
``augment``, ``features`` (per-frame embedding + score datasets), ``sequences``;
``make_synthetic_affectnet`` writes a synthetic AffectNet copy (drawn faces, real JPEGs).
"""
from __future__ import annotations

import importlib

# CLI name -> (module, builder class name)
BUILDERS: dict[str, tuple[str, str]] = {
    "affectnet": ("data_pipelines.affectnet", "Affectnet"),
    "s_aff_wild2": ("data_pipelines.s_aff_wild2", "SAffWild2"),
    "aff_wild2": ("data_pipelines.aff_wild2", "AffWild2"),
    "c_expr": ("data_pipelines.c_expr", "CExpr"),
}


def builder_class(name: str):
    """The tfds builder class for a dataset NAME (``affectnet``, ``aff_wild2``, ...)."""
    from hsemo_jax.errors import InputError

    if name not in BUILDERS:
        raise InputError(f"unknown dataset {name!r}; expected one of {', '.join(BUILDERS)}")
    module, cls = BUILDERS[name]
    return getattr(importlib.import_module(module), cls)
