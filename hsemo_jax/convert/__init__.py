"""Convert PyTorch checkpoints (HSEmotion pickled modules, state dicts, DDAMFN checkpoints) to
hsemo-jax model directories, without importing torch and without executing pickled code."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hsemo_jax.checkpoint import ModelInfo, save_model
from hsemo_jax.convert.keymaps import export_torch_state, load_torch_state
from hsemo_jax.convert.torch_reader import (InertObject, extract_state_dict, load_torch_file,
                                            sha256_file)
from hsemo_jax.errors import CheckpointError
from hsemo_jax.models import registry

__all__ = ["convert", "convert_state_dict", "infer_arch", "export_torch_state"]


def _num_classes(sd: dict, *names: str) -> int | None:
    return next((int(sd[n].shape[0]) for n in names if n in sd), None)


def _timm_is_tf_variant(obj) -> bool | None:
    """From a whole pickled timm EfficientNet: TF "same" padding (Conv2dSame stem, BN eps 1e-3)?"""
    if not isinstance(obj, InertObject) or not isinstance(obj.state, Mapping):
        return None
    modules = obj.state.get("_modules", {})
    stem, bn = modules.get("conv_stem"), modules.get("bn1")
    if isinstance(stem, InertObject) and "Same" in stem.qualname:
        return True
    if isinstance(bn, InertObject) and isinstance(bn.state, Mapping) and "eps" in bn.state:
        return float(bn.state["eps"]) >= 1e-3
    return None


def infer_arch(sd: dict[str, np.ndarray], obj=None, source: str = "checkpoint") -> tuple[str, int | None, int]:
    """(arch, num_classes, num_heads) from state-dict keys (and the pickled module, if any).

    A bare EfficientNet state dict cannot tell TF "same" padding from symmetric padding; it is
    taken as `tf_efficientnet_*` (HSEmotion's models) unless `--arch` says otherwise.
    """
    if "conv_stem.weight" in sd and "conv_head.weight" in sd:
        width = sd["conv_head.weight"].shape[0]
        n = _num_classes(sd, "classifier.weight", "classifier.0.weight")
        if width == 1408:
            return "tf_efficientnet_b2", n, 2
        tf = _timm_is_tf_variant(obj)
        return ("efficientnet_b0" if tf is False else "tf_efficientnet_b0"), n, 2
    if "layers.0.layers.0.weight" in sd and "conv_sep.layers.0.weight" in sd:
        return "mobilefacenet", _num_classes(sd, "fc.weight"), 2
    if "stem.conv.weight" in sd and "stages.4.1.conv_proj.conv.weight" in sd:
        # timm ByobNet MobileViTv2: the width multiplier shows in the 1x1 conv ending stage 4.
        width = sd["stages.4.1.conv_proj.conv.weight"].shape[0]
        arch = next((a for a, s in registry.ARCHS.items()
                     if s.family == "mobilevit" and s.embedding_dim == width), None)
        if arch is None:
            raise CheckpointError(f"{source}: a MobileViT with stage-4 width {width} is not supported; "
                                  "expected timm mobilevitv2_150 (768)")
        return arch, _num_classes(sd, "head.fc.weight"), 2
    if "features.0.conv.weight" in sd and "cat_head0.CoordAtt.conv1.weight" in sd:
        heads = len({k.split(".")[0] for k in sd if k.startswith("cat_head")})
        return "ddamfn", _num_classes(sd, "fc.weight"), heads
    raise CheckpointError(
        f"{source}: cannot tell the architecture from its keys (first keys: {list(sd)[:5]}); "
        f"pass --arch with one of {', '.join(registry.ARCHS)}")


def convert_state_dict(sd: dict[str, np.ndarray], arch: str, num_classes: int | None,
                       num_heads: int = 2, source: str = "checkpoint"):
    """Build `arch` and fill it from a torch state dict (shape-checked); returns the model."""
    model = registry.build(arch, num_classes, num_heads=num_heads)
    return load_torch_state(model, registry.get_arch(arch).family, sd, source)


def convert(src: str | os.PathLike, out: str | os.PathLike, *, arch: str | None = None,
            class_order: str = "hse", overwrite: bool = False) -> ModelInfo:
    """Convert the PyTorch file `src` into the model directory `out`; returns its ModelInfo.

    On any error nothing is left at `out`.
    """
    src = Path(src)
    if not src.is_file():
        raise CheckpointError(f"{src}: no such file")
    obj = load_torch_file(src)
    sd = extract_state_dict(obj, src)
    inferred, num_classes, num_heads = infer_arch(sd, obj, str(src))
    if arch is not None:
        registry.get_arch(arch)
        if registry.ARCHS[arch].family != registry.ARCHS[inferred].family:
            raise CheckpointError(f"{src}: --arch {arch} given, but the keys are those of {inferred}")
        inferred = arch
    model = convert_state_dict(sd, inferred, num_classes, num_heads, str(src))
    kind = "module" if isinstance(obj, InertObject) else "state_dict"
    info = ModelInfo.for_arch(inferred, num_classes, class_order, num_heads,
                              source={"file": src.name, "sha256": sha256_file(src), "format": kind})
    save_model(model, info, out, overwrite=overwrite)
    return info
