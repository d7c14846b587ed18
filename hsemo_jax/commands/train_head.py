"""`hsemo-jax train-head FEATURES [--val VAL] [--config C] --out RUN`: train the ABAW-7 MTL head.

FEATURES / VAL: feature datasets (.npz or a directory of .npy): x (N, D+10) = embedding ++ the
backbone's 10 scores, and any of expr (N,), va (N, 2), au (N, 12) with the ABAW missing codes
(-1, -5, -1) or explicit *_mask arrays (see hsemo_jax/train/data.py). Defaults follow the paper
(hsemo_jax/train/configs/head_abaw7.toml): each head alone on its own rows, Keras Adam 1e-3, batch 512.
Writes RUN/head.npz + RUN/head.json (the trained tasks) and RUN/metrics_final.json (the final
validation metrics of the trained tasks); nothing is written before the inputs pass their checks.
Rerunning the same command resumes an interrupted run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hsemo_jax import train
from hsemo_jax.commands.arguments import add_config_arguments, load_run_config

DEFAULT_CONFIG = Path(train.__file__).parent / "configs" / "head_abaw7.toml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", nargs="?", help="training feature dataset (.npz or directory of .npy)")
    p.add_argument("--val", help="validation feature dataset (model selection and final metrics)")
    p.add_argument("--config", help=f"TOML/JSON config (default: {DEFAULT_CONFIG.name})")
    p.add_argument("--tasks", nargs="+", choices=("expr", "va", "au"), help="tasks to train (default: all)")
    p.add_argument("--mode", choices=("separate", "joint"), help="one head at a time or all jointly")
    add_config_arguments(p, set_example="train.batch_size=256")


def run(args: argparse.Namespace) -> int:
    from hsemo_jax.errors import InputError
    from hsemo_jax.train.config import describe, load_config

    if args.describe_config:
        print(describe("train-head", load_config(args.config or DEFAULT_CONFIG)))
        return 0
    tasks = "[" + ",".join(f'"{t}"' for t in args.tasks) + "]" if args.tasks else None
    cfg = load_run_config(args.config or DEFAULT_CONFIG, args,
                          [("data.train", args.features), ("data.val", args.val), ("run_dir", args.out),
                           ("head.tasks", tasks), ("head.mode", args.mode)])
    if not cfg.data.train:
        raise InputError("no training features: pass FEATURES (or data.train in the config)")
    from hsemo_jax.train.runners import run_head

    result = run_head(cfg)
    if result:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k.startswith(("P_", "CCC", "EXPR")))
        print(f"validation: {shown}")
    print(f"wrote {cfg.run_dir}/head.npz, head.json, metrics_final.json", file=sys.stderr)
    return 0
