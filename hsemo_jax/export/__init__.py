"""Deployable artifacts of the Flax models: ONNX (through jax2onnx) and serialized StableHLO
(through `jax.export`), each with the model's metadata; `hsemo-jax export` on the command line.

    export_model(model, info, "onnx" | "stablehlo", out, batch=None, dtype="float32",
                 with_preprocess=False) -> metadata        the artifact at `out`, written atomically
    build_program(model, info, ...)         what both formats export (`program.py`)
    export_onnx(program) -> bytes           `onnx.py`
    export_stablehlo(program) -> (bytes, metadata)          `stablehlo.py`
    read_metadata(path, format)             the metadata an artifact carries
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from hsemo_jax.errors import InputError
from hsemo_jax.export import onnx as _onnx
from hsemo_jax.export import stablehlo as _stablehlo
from hsemo_jax.export.onnx import export_onnx
from hsemo_jax.export.program import Program, build_program, check_dtype, parse_batch
from hsemo_jax.export.stablehlo import export_stablehlo, metadata_path
from hsemo_jax.fileio import atomic_path

FORMATS = ("onnx", "stablehlo")

__all__ = ["FORMATS", "Program", "build_program", "check_options", "export_model", "export_onnx",
           "export_stablehlo", "metadata_path", "parse_batch", "read_metadata"]


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def check_options(fmt: str, dtype: str) -> None:
    """Raise InputError for an unknown format or dtype, or a dtype the format cannot hold."""
    check_format(fmt)
    check_dtype(dtype)
    if fmt == "onnx":
        _onnx.check_dtype(dtype)


def export_model(model, info, fmt: str, out, *, batch: int | None = None, dtype: str = "float32",
                 with_preprocess: bool = False) -> dict:
    """Export `model` (with its `checkpoint.ModelInfo`) to `out` in format `fmt`; returns the
    metadata written with it. StableHLO's metadata goes to `metadata_path(out)`. Nothing is
    written unless the export succeeds; an export that fails raises InputError naming the model,
    the format and the first line of the cause."""
    check_options(fmt, dtype)
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out {out}: is a directory; expected a file path")
    program = build_program(model, info, batch=batch, dtype=dtype, with_preprocess=with_preprocess)
    try:
        if fmt == "onnx":
            files, metadata = {out: export_onnx(program)}, program.metadata
        else:
            data, metadata = export_stablehlo(program)
            files = {out: data, metadata_path(out): json.dumps(metadata, indent=2) + "\n"}
    except InputError:
        raise
    except Exception as e:  # the converter's or jax.export's own message, on one line
        first = (str(e).strip().splitlines() or [""])[0]
        raise InputError(f"{info.arch}: cannot export to {fmt}: {type(e).__name__}: {first}") from e
    _write_all(files)
    return metadata


def _write_all(files: dict) -> None:
    """Write every file to a temporary sibling, then rename them all, the first last (the
    temporary paths close in reverse order); an error leaves no temporary and no new file."""
    with contextlib.ExitStack() as stack:
        for path, data in files.items():
            tmp = stack.enter_context(atomic_path(path))
            if isinstance(data, str):
                tmp.write_text(data, encoding="utf-8")
            else:
                tmp.write_bytes(data)


def read_metadata(path, fmt: str) -> dict:
    """The metadata the artifact at `path` carries (ONNX: its `metadata_props`; StableHLO: the
    JSON beside it)."""
    return (_onnx if check_format(fmt) == "onnx" else _stablehlo).read_metadata(path)
