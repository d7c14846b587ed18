"""`hsemo-jax train-head FEATURES [--val VAL] [--config C] --out RUN`: train the ABAW-7 MTL head.

FEATURES / VAL: feature datasets (.npz or a directory of .npy): x (N, D+10) = embedding ++ the
backbone's 10 scores, and any of expr (N,), va (N, 2), au (N, 12) with the ABAW missing codes
(-1, -5, -1) or explicit *_mask arrays (see hsemo_jax/train/data.py). Defaults follow the paper
(hsemo_jax/train/configs/head_abaw7.toml): each head alone on its own rows, Keras Adam 1e-3, batch 512.
Writes RUN/head.npz + RUN/head.json; rerunning the same command resumes an interrupted run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hsemo_jax import train

DEFAULT_CONFIG = Path(train.__file__).parent / "configs" / "head_abaw7.toml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", nargs="?", help="training feature dataset (.npz or directory of .npy)")
    p.add_argument("--val", help="validation feature dataset (model selection and final metrics)")
    p.add_argument("--config", help=f"TOML/JSON config (default: {DEFAULT_CONFIG.name})")
    p.add_argument("--out", help="run directory (checkpoints, metrics.csv, head.npz)")
    p.add_argument("--tasks", nargs="+", choices=("expr", "va", "au"), help="tasks to train (default: all)")
    p.add_argument("--mode", choices=("separate", "joint"), help="one head at a time or all jointly")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set train.batch_size=256")
    p.add_argument("--describe-config", action="store_true", help="print every config field and exit")


def run(args: argparse.Namespace) -> int:
    from hsemo_jax.errors import InputError
    from hsemo_jax.train.config import describe, load_config

    if args.describe_config:
        print(describe())
        return 0
    overrides = list(args.overrides)
    if args.features:
        overrides.append(f"data.train={args.features}")
    if args.val:
        overrides.append(f"data.val={args.val}")
    if args.out:
        overrides.append(f"run_dir={args.out}")
    if args.tasks:
        overrides.append("head.tasks=[" + ",".join(f'"{t}"' for t in args.tasks) + "]")
    if args.mode:
        overrides.append(f"head.mode={args.mode}")
    cfg = load_config(args.config or DEFAULT_CONFIG, _quote_paths(overrides))
    if not cfg.data.train:
        raise InputError("no training features: pass FEATURES (or data.train in the config)")
    from hsemo_jax.train.runners import run_head

    result = run_head(cfg)
    if result:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k.startswith(("P_", "CCC", "EXPR")))
        print(f"validation: {shown}")
    print(f"wrote {cfg.run_dir}/head.npz", file=sys.stderr)
    return 0


def _quote_paths(overrides: list[str], keys=("data.train", "data.val", "run_dir", "model.init")) -> list[str]:
    """Paths on the command line are strings, never TOML values ('1e-3' stays a number elsewhere)."""
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.strip() in keys and not value.startswith('"'):
            value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out.append(f"{key}={value}")
    return out
