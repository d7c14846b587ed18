"""`hsemo-jax bench TARGET ...`: dispatch to `hsemo_jax.bench.<target>`."""
from __future__ import annotations

import argparse
import importlib

TARGETS = {
    "backbones": "Flax vs PyTorch eager images/s per backbone, batch 1 and 32",
    "data": "decoded + augmented images/s of the grain loader by worker count",
    "postprocess": "smoothing sweep and AU-threshold search vs numpy/scikit-learn loops",
    "train": "train-step images/s per backbone vs a PyTorch eager training step; --dataset DIR: the grain "
             "loader's images/s per core vs the train step's",
    "roofline": "on paper: bf16 train-step images/s on a TPU v5e / H100 from XLA's FLOPs and bytes, loader cores",
    "predict": "frames/s and faces found at 360p and 720p: HSEmotion's MTCNN + eager PyTorch per face, predict's "
               "Haar host path and its device program with each BlazeFace model; the device resize vs PIL-exact",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="target", metavar="TARGET")
    sub.required = True
    for name, help_text in TARGETS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(f"hsemo_jax.bench.{name}").add_arguments(sp)


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(f"hsemo_jax.bench.{args.target}").run(args)
