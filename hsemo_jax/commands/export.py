"""`hsemo-jax export MODEL --format onnx|stablehlo --out FILE [--batch N|dynamic]
[--dtype float32|bfloat16] [--with-preprocess]`."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="a converted model directory, a .pt/.pth file or a published model name (as predict's "
                        "--model takes them), or an architecture name (tf_efficientnet_b0, mobilefacenet, ...) for "
                        "that architecture with random weights and 10 outputs, for trying the export")
    p.add_argument("--format", required=True, metavar="onnx|stablehlo",
                   help="onnx: through jax2onnx, for onnxruntime and other ONNX runtimes; stablehlo: a serialized "
                        "jax.export module for CPU, CUDA and TPU, its metadata in FILE.json beside it")
    p.add_argument("--out", required=True, metavar="FILE", help="the artifact (written only if the export succeeds)")
    p.add_argument("--batch", default="dynamic", metavar="N|dynamic",
                   help="a fixed batch size, or 'dynamic' (default): any batch size")
    p.add_argument("--dtype", default="float32", metavar="float32|bfloat16",
                   help="weights and activations (default float32; bfloat16 for stablehlo only); inputs and "
                        "outputs stay as they are")
    p.add_argument("--with-preprocess", action="store_true",
                   help="uint8 RGB face crops of any size in (Pillow's bilinear resize and the normalization in "
                        "the graph), expression probabilities and valence/arousal out")


def load(spec: str):
    """(model, ModelInfo) for MODEL: an architecture name builds that architecture with random
    weights (seed 0, 10 outputs); anything else goes through `hub.resolve_model`."""
    from hsemo_jax.checkpoint import ModelInfo, load_model
    from hsemo_jax.errors import InputError
    from hsemo_jax.hub import resolve_model
    from hsemo_jax.models import registry

    if spec in registry.ARCHS:
        info = ModelInfo.for_arch(spec, 10, source={"random_weights": True, "seed": 0})
        return registry.build(spec, 10, seed=0), info
    try:
        path = resolve_model(spec)
    except InputError as e:
        if Path(spec).exists():
            raise
        raise InputError(f"{e}; or an architecture (random weights): {', '.join(registry.ARCHS)}") from None
    model = load_model(path)
    return model, model.info


def check_out(out: str, fmt: str, model: str) -> None:
    """Before any work: the artifact (and StableHLO's FILE.json) can be written, and neither replaces
    MODEL's file nor lands inside MODEL's directory."""
    from hsemo_jax.errors import InputError
    from hsemo_jax.export import metadata_path
    from hsemo_jax.fileio import check_writable, holds

    src = Path(model)
    for path in [Path(out)] + ([metadata_path(out)] if fmt == "stablehlo" else []):
        if path.is_dir():
            raise InputError(f"--out {path}: is a directory; expected a file path")
        check_writable(path, "artifact", inputs=(model,))
        if src.is_dir() and holds(src, path):
            raise InputError(f"--out {path}: inside the model directory {model}, which it would change; "
                             "give a path outside it")


def run(args: argparse.Namespace) -> int:
    from hsemo_jax.export import check_options, export_model, metadata_path, parse_batch

    check_options(args.format, args.dtype)  # bad options fail before a model is loaded (or fetched)
    batch = parse_batch(args.batch)
    check_out(args.out, args.format, args.model)
    model, info = load(args.model)
    meta = export_model(model, info, args.format, args.out, batch=batch, dtype=args.dtype,
                        with_preprocess=args.with_preprocess)
    inp = meta["input"]
    outs = ", ".join(f"{o['name']}[{','.join(map(str, o['shape']))}]" for o in meta["graph_outputs"])
    print(f"exported {args.model} ({info.arch}) -> {args.out}: {args.format}, {meta['dtype']}, input {inp['name']} "
          f"{inp['dtype']}[{','.join(map(str, inp['shape']))}] {inp['layout']}, outputs {outs}")
    if args.format == "stablehlo":
        print(f"metadata: {metadata_path(args.out)}")
    return 0
