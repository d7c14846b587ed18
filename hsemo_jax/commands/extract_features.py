"""`hsemo-jax extract-features MODEL (--dataset DIR [--split S] | --images DIR) --out OUT`.

Per-frame embeddings + scores of a converted model over a built dataset split or an image
folder, batched with a fixed shape, resumable (rerun the same command), with a progress bar.
Light at import: jax, grain and tfds are imported only in `run`.
"""
from __future__ import annotations

import argparse

from hsemo_jax.commands.arguments import add_dataset_writing_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL", help="a converted model directory (hsemo-jax convert), a .pt/.pth "
                                                      "file or a published model name, as predict's --model takes them")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a built dataset (DATA_DIR/<name>[/<config>][/<version>])")
    src.add_argument("--images", help="a folder of images (searched recursively)")
    p.add_argument("--split", help="split of --dataset (needed when it has several)")
    p.add_argument("--out", required=True, help="output feature dataset folder")
    p.add_argument("--batch-size", type=int, default=64, help="fixed batch size (default 64)")
    p.add_argument("--chunk-size", type=int, default=4096,
                   help="rows per output chunk, the unit of resumption (default 4096)")
    p.add_argument("--workers", type=int, default=0, help="grain decoding processes (default 0)")
    add_dataset_writing_arguments(p)


def run(args: argparse.Namespace) -> int:
    from hsemo_jax.errors import InputError
    from hsemo_jax.extract import extract_features

    if args.split and args.images:
        raise InputError("--split chooses a split of --dataset; an --images folder has none")
    s = extract_features(args.model_dir, args.out, dataset=args.dataset, split=args.split,
                         images=args.images, batch_size=args.batch_size, chunk_size=args.chunk_size,
                         on_bad_image=args.on_bad_image, workers=args.workers,
                         overwrite=args.overwrite, progress=not args.no_progress)
    if s["already_complete"]:
        print(f"{s['out']}: already complete (pass --overwrite to extract again)")
        return 0
    if s["resumed_at"]:
        print(f"resumed at example {s['resumed_at']}")
    print(f"{s['out']}: {s['written']} examples written, {s['skipped']} skipped")
    if s["skipped_names"]:
        more = ", ..." if s["skipped"] > len(s["skipped_names"]) else ""
        print(f"  skipped (bad image): {', '.join(s['skipped_names'])}{more}")
    return 0
