"""What an exported artifact computes and what it says about itself.

A `Program` is one function of one array with the model's weights inside as constants, its input
(shape with a symbolic batch, height and width where they are dynamic), its outputs' names and the
metadata that travels with the artifact. Both formats export the same program.

    plain             x: float32 (N, S, S, 3), preprocessed as `hsemo_jax.models.preprocess` does
                      -> scores (N, K): the model's outputs as `model(x)` returns them (embedding
                      (N, D) for a model without a head)
    with_preprocess   crops: uint8 RGB (N, H, W, 3), any H and W
                      -> probabilities (N, classes) [, valence_arousal (N, 2)]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import hsemo_jax
from hsemo_jax import labels
from hsemo_jax.errors import InputError
from hsemo_jax.export import preprocess

FORMAT = "hsemo-jax-export/1"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclass(frozen=True)
class Program:
    fn: Callable
    input_name: str
    input_spec: jax.ShapeDtypeStruct
    output_names: tuple[str, ...]
    metadata: dict


def parse_batch(text: str | int | None) -> int | None:
    """'dynamic' / None -> None (a symbolic batch); a positive int -> that fixed batch."""
    if text is None or text == "dynamic":
        return None
    try:
        batch = int(text)
    except (TypeError, ValueError):
        batch = 0
    if batch < 1:
        raise InputError(f"--batch: expected a positive integer or 'dynamic', got {text!r}")
    return batch


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise InputError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def _dims(batch: int | None, spatial) -> tuple:
    """(batch, *spatial) with a symbolic dimension (one `jax.export` scope) for each name."""
    dims = ("batch" if batch is None else batch, *spatial)
    names = [d for d in dims if isinstance(d, str)]
    symbols = iter(jax.export.symbolic_shape(", ".join(names)) if names else ())
    return tuple(next(symbols) if isinstance(d, str) else d for d in dims)


def _shape_text(dims) -> list:
    return [d if isinstance(d, int) else str(d) for d in dims]


def build_program(model: nnx.Module, info, *, batch: int | None = None, dtype: str = "float32",
                  with_preprocess: bool = False) -> Program:
    """The program of `model` (eval mode) with `info` (`checkpoint.ModelInfo`); batch None: dynamic."""
    check_dtype(dtype)
    if with_preprocess and not info.num_classes:
        raise InputError(f"--with-preprocess: {info.arch} here has no class scores (an embedding model), "
                         "so there are no probabilities to put out")
    model.eval()
    graphdef, state = nnx.split(model)
    cast = DTYPES[dtype]
    weights = jax.tree.map(lambda a: np.asarray(a).astype(cast) if jnp.issubdtype(a.dtype, jnp.floating)
                           else np.asarray(a), state)
    size = info.input_size

    def scores(x_nhwc):
        return nnx.merge(graphdef, weights)(x_nhwc.astype(cast)).astype(jnp.float32)

    with_va = tuple(info.outputs[-2:]) == labels.VA_NAMES
    classes = list(info.outputs[:-2] if with_va else info.outputs)
    if with_preprocess:
        dims = _dims(batch, ("height", "width", 3))
        spec = jax.ShapeDtypeStruct(dims, jnp.uint8)
        names = ("probabilities", "valence_arousal") if with_va else ("probabilities",)

        def fn(crops):
            x = preprocess.normalize(preprocess.resize_bilinear(crops, size), info.mean, info.std)
            return preprocess.read_out(scores(x), with_va)

        input_name, meaning = "crops", "uint8 RGB face crops, any height and width (one size per call)"
        outputs = [{"name": "probabilities", "shape": _shape_text((dims[0], len(classes))), "columns": classes}]
        if with_va:
            outputs.append({"name": "valence_arousal", "shape": _shape_text((dims[0], 2)),
                            "columns": list(labels.VA_NAMES)})
    else:
        dims = _dims(batch, (size, size, 3))
        spec = jax.ShapeDtypeStruct(dims, jnp.float32)
        name = "scores" if info.num_classes else "embedding"  # a model without a head: its embedding
        names, fn = (name,), scores
        input_name = "x"
        meaning = f"float32 RGB, resized to {size}x{size} (Pillow bilinear), / 255, (x - mean) / std"
        outputs = [{"name": name, "shape": _shape_text((dims[0], len(info.outputs) or info.embedding_dim)),
                    "columns": list(info.outputs) or None}]
    source = dict(info.source)
    metadata = {
        "format": FORMAT,
        "hsemo_jax_version": hsemo_jax.__version__,
        "arch": info.arch,
        "class_order": info.class_order,
        "classes": classes,
        "outputs": list(info.outputs),
        "input_size": size,
        "mean": list(info.mean),
        "std": list(info.std),
        "source": source,
        "source_sha256": source.get("sha256"),
        "dtype": dtype,
        "preprocessing": "in the graph" if with_preprocess else "before the graph",
        "input": {"name": input_name, "dtype": str(spec.dtype), "shape": _shape_text(dims), "layout": "NHWC",
                  "meaning": meaning},
        "graph_outputs": outputs,
    }
    return Program(fn, input_name, spec, names, metadata)

