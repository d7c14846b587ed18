"""`hsemo-jax convert SRC --out DIR [--arch NAME]`."""
from __future__ import annotations

import argparse

from hsemo_jax.labels import CLASS_ORDERS
from hsemo_jax.models.registry import ARCHS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="PyTorch checkpoint: a pickled model (torch.save(model)), a state dict, "
                               "or a {'model_state_dict': ...} dict (DDAMFN)")
    p.add_argument("--out", required=True, help="output model directory (created atomically)")
    p.add_argument("--arch", choices=sorted(ARCHS), help="architecture (default: inferred from the keys)")
    p.add_argument("--class-order", choices=sorted(CLASS_ORDERS), default="hse",
                   help="order of the 8 expression logits: 'hse' (alphabetical, HSEmotion's models) or "
                        "'affectnet' (AffectNet codes, the original DDAMFN repository)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory at --out (never a file or a folder of other things)")


def run(args: argparse.Namespace) -> int:
    from hsemo_jax.convert import convert

    info = convert(args.src, args.out, arch=args.arch, class_order=args.class_order,
                   overwrite=args.overwrite)
    outputs = ", ".join(info.outputs) if info.outputs else f"{info.embedding_dim}-d embedding"
    print(f"converted {args.src} -> {args.out}: {info.arch}, input {info.input_size}x{info.input_size}, "
          f"outputs: {outputs}")
    return 0
