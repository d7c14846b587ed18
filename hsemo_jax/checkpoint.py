"""Converted-model directories: an orbax checkpoint of the NNX state plus `hsemo_model.json`.

    DIR/
      hsemo_model.json   arch, outputs, class order, input size, normalization, source sha256
      state/             orbax StandardCheckpointer (params + batch statistics)

Directories are written atomically: everything goes to a temporary sibling that is renamed into
place only when complete, so a failed save leaves nothing at DIR.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from hsemo_jax.errors import CheckpointError
from hsemo_jax.fileio import atomic_directory, holds
from hsemo_jax.models import registry

META_FILE = "hsemo_model.json"
FORMAT = "hsemo-jax-model/1"


@dataclass(frozen=True)
class ModelInfo:
    """What a model needs besides its weights: how to feed it and how to read its outputs."""

    arch: str
    num_classes: int | None
    outputs: tuple[str, ...]
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    embedding_dim: int
    class_order: str = "hse"
    num_heads: int = 2
    source: dict = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def for_arch(cls, arch: str, num_classes: int | None, class_order: str = "hse",
                 num_heads: int = 2, source: dict | None = None) -> "ModelInfo":
        a = registry.get_arch(arch)
        return cls(arch, num_classes, registry.output_names(num_classes, class_order), a.input_size,
                   a.mean, a.std, a.embedding_dim, class_order, num_heads, source or {})


def check_model_out(out: str | os.PathLike, *, overwrite: bool = False,
                    inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Before any work: can a model directory be written at `out`? It must be absent or an empty
    folder, or with `overwrite` a model directory (it has META_FILE) that none of `inputs` lies in:
    replacing `out` deletes everything in it, so a file, or a folder of other things (`--out .`), is
    never replaced. Raises CheckpointError naming `out`; returns its absolute, normalized path."""
    path = Path(os.path.abspath(out))
    for src in inputs:
        if holds(path, src):
            raise CheckpointError(f"{path}: the output would replace {src}, which is read from it; "
                                  "give another --out")
    if path.is_symlink() or path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file, not a model directory; give another --out")
        if any(path.iterdir()):
            if not overwrite:
                raise CheckpointError(f"{path} already exists and is not empty (pass --overwrite to replace it)")
            if not (path / META_FILE).is_file():
                raise CheckpointError(f"{path} is not an hsemo-jax model directory (no {META_FILE}), so "
                                      "--overwrite does not replace it: it holds other files; give another --out")
    return path


def save_model(model: nnx.Module, info: ModelInfo, out: str | os.PathLike, *,
               overwrite: bool = False) -> Path:
    import orbax.checkpoint as ocp

    path = check_model_out(out, overwrite=overwrite)
    with atomic_directory(path) as tmp:
        state = nnx.to_pure_dict(nnx.state(model))
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "state", state)
            ckptr.wait_until_finished()
        meta = {"format": FORMAT, **asdict(info)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return Path(out)


def read_info(path: str | os.PathLike) -> ModelInfo:
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not an hsemo-jax model directory (no {META_FILE}); "
                              "create one with `hsemo-jax convert`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # e.g. overwritten by another file
        raise CheckpointError(f"{meta_path}: invalid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.pop("format", None) != FORMAT:
        raise CheckpointError(f"{meta_path}: expected format {FORMAT!r}")
    if meta.get("arch") not in registry.ARCHS:
        raise CheckpointError(f"{meta_path}: unknown architecture {meta.get('arch')!r}; expected one of "
                              f"{', '.join(registry.ARCHS)}")
    try:
        for key in ("outputs", "mean", "std"):
            meta[key] = tuple(meta[key])
        return ModelInfo(**meta)
    except KeyError as e:
        raise CheckpointError(f"{meta_path}: no {e.args[0]!r} field") from None
    except TypeError as e:
        raise CheckpointError(f"{meta_path}: {e}") from None


def load_model(path: str | os.PathLike) -> nnx.Module:
    """Model in eval mode, with its `ModelInfo` as `model.info`."""
    import orbax.checkpoint as ocp

    info = read_info(path)
    model = registry.build(info.arch, info.num_classes, num_heads=info.num_heads)
    state = nnx.state(model)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(state))
    with ocp.StandardCheckpointer() as ckptr:
        try:
            restored = ckptr.restore(Path(path).absolute() / "state", target)
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise CheckpointError(f"{path}: cannot restore the model state: {e}") from None
        except Exception as e:  # noqa: BLE001 - orbax raises a bare Exception for damaged array files
            cause = e
            while (cause.__cause__ or cause.__context__) is not None:
                cause = cause.__cause__ or cause.__context__
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            raise CheckpointError(f"{path}: cannot restore the model state (damaged files?): {first}") from None
    nnx.replace_by_pure_dict(state, jax.tree.map(np.asarray, restored))
    nnx.update(model, state)
    model.info = info
    return model
