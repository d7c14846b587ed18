"""`hsemo-jax pretrain CONFIG --out RUN`: multi-task backbone pretraining from a config file.

CONFIG: a TOML/JSON file such as hsemo_jax/train/configs/pretrain_*.toml (every field is
documented by `hsemo-jax pretrain --describe-config`); --train / --val: TFDS builds written by
`hsemo-jax build-dataset`, read through grain (hsemo_jax/train/README.md). Writes
RUN/checkpoints, RUN/metrics.csv, RUN/tensorboard and, at the end, RUN/model (an hsemo-jax model
directory, usable wherever a converted model is). Rerunning the same command resumes an
interrupted run.
"""
from __future__ import annotations

import argparse

from hsemo_jax.commands.arguments import add_config_arguments, load_run_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="TOML/JSON config file")
    p.add_argument("--train", help="training data: a TFDS build of `hsemo-jax build-dataset`, local or gs:// "
                                    "(overrides data.train)")
    p.add_argument("--val", help="validation data: a TFDS build, e.g. the same as --train (its data.val_split "
                                  "split; overrides data.val)")
    p.add_argument("--export", action="store_true",
                   help="write RUN/model from the run's checkpoints without training (after a multi-process run)")
    add_config_arguments(p, set_example="train.steps=100")


def run(args: argparse.Namespace) -> int:
    from hsemo_jax.errors import InputError
    from hsemo_jax.train.config import describe

    if args.describe_config:
        print(describe("pretrain"))
        return 0
    if not args.config:
        raise InputError("pretrain: give a CONFIG file (see hsemo_jax/train/configs/)")
    cfg = load_run_config(args.config, args,
                          [("run_dir", args.out), ("data.train", args.train), ("data.val", args.val)])
    from hsemo_jax.train.runners import run_pretrain

    result = run_pretrain(cfg, export_only=args.export)
    if result:
        print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return 0
