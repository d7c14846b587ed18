"""`hsemo-jax distill CONFIG --out RUN`: ABAW-2 multi-database teacher-student training (spec §2).

CONFIG: a TOML/JSON file such as hsemo_jax/train/configs/distill_*.toml; the `[distill]` section
picks the teacher and student backbones, the three streams and the loss constants, `[optim]`,
`[train]`, `[checkpoint]` work as for `pretrain` (`hsemo-jax distill --describe-config`).

    RUN/config.json           the config the run was started with (a different one is refused)
    RUN/teacher/              checkpoints/, metrics.csv, model.npz + model.json (best, else last step)
    RUN/student/              the same for the student, trained against RUN/teacher (or distill.teacher_dir)

Both stages run on the shared trainer (`loop.fit`: data-parallel jitted step, orbax checkpoints);
rerunning the command resumes an interrupted stage and does not retrain a finished one.
"""
from __future__ import annotations

import argparse

from hsemo_jax.commands.arguments import add_config_arguments, load_run_config
from hsemo_jax.errors import InputError

PATH_KEYS = ("run_dir", "data.val", "distill.expr", "distill.va", "distill.expr_va", "distill.teacher_dir",
             "distill.teacher_init", "distill.student_init")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="TOML/JSON config file")
    p.add_argument("--stage", choices=("both", "teacher", "student"), help="overrides distill.stage")
    p.add_argument("--teacher", help="finished teacher directory for --stage student (overrides distill.teacher_dir)")
    add_config_arguments(p, set_example="distill.expr=EXPR.npz")


def run(args: argparse.Namespace) -> int:
    from hsemo_jax.distill.runner import run_distill
    from hsemo_jax.train.config import describe

    if args.describe_config:
        print(describe("distill"))
        return 0
    if not args.config:
        raise InputError("distill: give a CONFIG file (see hsemo_jax/train/configs/distill_*.toml)")
    cfg = load_run_config(args.config, args, [("run_dir", args.out), ("distill.stage", args.stage),
                                              ("distill.teacher_dir", args.teacher)], PATH_KEYS)
    result = run_distill(cfg)
    for stage, metrics in result.items():
        if metrics:
            print(f"{stage} validation: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0
