"""Serialized StableHLO through `jax.export`: one artifact for CPU, CUDA and TPU.

The program is lowered once for the three platforms; where an op has several forms
(`ops.dispatch`), each platform's is kept behind the platform switch that `jax.export` resolves
when the artifact is called, and the CPU kernels' custom calls give way to their XLA forms (an
exported module keeps no custom call without compatibility guarantees). The bytes are
`Exported.serialize()`: reload them with `jax.export.deserialize` and call `.call(x)`, no
hsemo-jax needed. The metadata goes beside it as JSON (`metadata_path`).
"""
from __future__ import annotations

import json
from pathlib import Path

import jax

from hsemo_jax.export.program import Program

PLATFORMS = ("cpu", "cuda", "tpu")


def export_stablehlo(program: Program) -> tuple[bytes, dict]:
    """(the serialized `jax.export.Exported`, the metadata with its platforms and calling
    convention version)."""
    exported = jax.export.export(jax.jit(program.fn), platforms=PLATFORMS)(program.input_spec)
    metadata = {**program.metadata, "platforms": list(exported.platforms),
                "calling_convention_version": exported.calling_convention_version}
    return bytes(exported.serialize()), metadata


def metadata_path(path) -> Path:
    """Where the metadata of the artifact at `path` goes: `path` + '.json'."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_metadata(path) -> dict:
    return json.loads(metadata_path(path).read_text())
