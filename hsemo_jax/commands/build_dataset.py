"""`hsemo-jax build-dataset NAME --manual-dir DIR --data-dir OUT`: build a TFDS ArrayRecord dataset.

Prints, per config and split, how many examples were written and skipped (with reasons and
the first names). Light at import: tfds is imported only in `run`.
"""
from __future__ import annotations

import argparse

from hsemo_jax.commands.arguments import add_dataset_writing_arguments

NAMES = ("affectnet", "s_aff_wild2", "aff_wild2", "aff_wild2/expr", "aff_wild2/va", "aff_wild2/au",
         "c_expr")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=NAMES, metavar="NAME",
                   help="dataset: affectnet, s_aff_wild2, aff_wild2 (all of expr/va/au found; or "
                        "aff_wild2/expr, /va, /au), c_expr")
    p.add_argument("--manual-dir", required=True, help="your local copy of the dataset")
    p.add_argument("--data-dir", required=True, help="output folder (TFDS data_dir)")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding threads (default: min(8, CPUs))")
    p.add_argument("--frame-format", choices=("png", "jpg"), default="png",
                   help="c_expr: how frames are stored (default png, lossless)")
    add_dataset_writing_arguments(p)


def run(args: argparse.Namespace) -> int:
    from data_pipelines.build import build_dataset
    from data_pipelines.images import format_report

    from hsemo_jax.errors import InputError

    if args.workers is not None and args.workers < 1:  # 0 silently meant the default, -1 one thread
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    kwargs = {"frame_format": args.frame_format} if args.name == "c_expr" else {}
    results = build_dataset(args.name, args.manual_dir, args.data_dir, on_bad_image=args.on_bad_image,
                            overwrite=args.overwrite, workers=args.workers,
                            progress=not args.no_progress, **kwargs)
    for r in results:
        print(f"{r.name} -> {r.path}")
        for line in format_report(r.report).splitlines():
            print(f"  {line}")
    return 0
