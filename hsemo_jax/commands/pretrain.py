"""`hsemo-jax pretrain CONFIG --out RUN`: multi-task backbone pretraining from a config file.

CONFIG: a TOML/JSON file such as hsemo_jax/train/configs/pretrain_*.toml (every field is
documented by `hsemo-jax pretrain --describe-config`). Writes RUN/checkpoints, RUN/metrics.csv,
RUN/tensorboard and, at the end, RUN/model (an hsemo-jax model directory, usable wherever a
converted model is). Rerunning the same command resumes an interrupted run.
"""
from __future__ import annotations

import argparse

from hsemo_jax.commands.train_head import _quote_paths


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="TOML/JSON config file")
    p.add_argument("--out", help="run directory (overrides run_dir)")
    p.add_argument("--train", help="training image dataset (overrides data.train)")
    p.add_argument("--val", help="validation image dataset (overrides data.val)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set train.steps=100")
    p.add_argument("--export", action="store_true",
                   help="write RUN/model from the run's checkpoints without training (after a multi-process run)")
    p.add_argument("--describe-config", action="store_true", help="print every config field and exit")


def run(args: argparse.Namespace) -> int:
    from hsemo_jax.errors import InputError
    from hsemo_jax.train.config import describe, load_config

    if args.describe_config:
        print(describe())
        return 0
    if not args.config:
        raise InputError("pretrain: give a CONFIG file (see hsemo_jax/train/configs/)")
    overrides = list(args.overrides)
    for key, value in (("run_dir", args.out), ("data.train", args.train), ("data.val", args.val)):
        if value:
            overrides.append(f"{key}={value}")
    cfg = load_config(args.config, _quote_paths(overrides))
    from hsemo_jax.train.runners import run_pretrain

    result = run_pretrain(cfg, export_only=args.export)
    if result:
        print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return 0
