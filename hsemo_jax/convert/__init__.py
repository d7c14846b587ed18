"""Convert PyTorch checkpoints (HSEmotion pickled modules, state dicts, DDAMFN checkpoints) to
hsemo-jax model directories, without importing torch and without executing pickled code."""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flax import nnx

from hsemo_jax.checkpoint import ModelInfo, check_model_out, save_model
from hsemo_jax.convert.keymaps import export_torch_state, load_torch_state
from hsemo_jax.convert.torch_reader import InertObject, extract_state_dict, load_torch_file, walk_modules
from hsemo_jax.digests import file_digests
from hsemo_jax.errors import CheckpointError
from hsemo_jax.models import registry
from hsemo_jax.models.layers import BatchNorm, Conv2d

__all__ = ["convert", "convert_state_dict", "infer_arch", "export_torch_state"]


def _num_classes(sd: dict, *names: str) -> int | None:
    return next((int(sd[n].shape[0]) for n in names if n in sd), None)


@dataclass(frozen=True)
class _Shows:
    """What a model shows besides its keys: the classes of its padding modules (timm's Conv2dSame
    and the like, TF "same" padding; none for symmetric padding) and its batch-norm eps values."""

    padding: tuple[str, ...]
    eps: tuple[float, ...]

    def differences(self, other: "_Shows") -> tuple[str, str] | None:
        """(what self shows, what other has) where they differ, or None."""
        mine, theirs = [], []
        if bool(self.padding) != bool(other.padding):
            mine.append(f"TF 'same' padding modules ({', '.join(self.padding)})" if self.padding
                        else "no padding modules (symmetric padding)")
            theirs.append("TF 'same' padding" if other.padding else "symmetric padding")
        if self.eps and other.eps and self.eps != other.eps:
            mine.append(f"batch-norm eps {' and '.join(map(str, self.eps))}")
            theirs.append(f"eps {' and '.join(map(str, other.eps))}")
        return (" and ".join(mine), " and ".join(theirs)) if mine else None


def _eps(values) -> tuple[float, ...]:
    return tuple(sorted({float(f"{v:.6g}") for v in values}))


def _checkpoint_shows(obj, source: str) -> _Shows | None:
    """What a pickled nn.Module shows; None for a state dict (it shows only keys)."""
    if not isinstance(obj, InertObject) or not isinstance(obj.state, Mapping) or "_modules" not in obj.state:
        return None
    padding, eps = set(), set()
    for _, module, _ in walk_modules(obj, source):
        module_path, _, name = module.qualname.rpartition(".")
        if "Same" in name or module_path == "torch.nn.modules.padding":
            padding.add(module.qualname)
        if "BatchNorm" in name and isinstance(module.state.get("eps"), float):
            eps.add(module.state["eps"])
    return _Shows(tuple(sorted(padding)), _eps(eps))


@functools.lru_cache(maxsize=None)
def _arch_shows(arch: str) -> _Shows:
    """What `arch` as built here has: TF "same" padding if any convolution pads "SAME"; its eps."""
    model = nnx.eval_shape(lambda: registry.build(arch, None))
    modules = [m for _, m in nnx.iter_graph(model)]
    same = any(isinstance(m, Conv2d) and m.padding == "SAME" for m in modules)
    return _Shows(("SAME",) if same else (), _eps(m.eps for m in modules if isinstance(m, BatchNorm)))


def _key_candidates(sd: dict[str, np.ndarray], source: str,
                    arch: str | None = None) -> tuple[tuple[str, ...], int | None, int]:
    """(architectures whose keys and widths `sd` has, best first; num_classes; num_heads)."""
    if "conv_stem.weight" in sd and "conv_head.weight" in sd:
        n = _num_classes(sd, "classifier.weight", "classifier.0.weight")
        if sd["conv_head.weight"].shape[0] == 1408:
            return ("tf_efficientnet_b2",), n, 2
        return ("tf_efficientnet_b0", "efficientnet_b0"), n, 2
    if "layers.0.layers.0.weight" in sd and "conv_sep.layers.0.weight" in sd:
        return ("mobilefacenet",), _num_classes(sd, "fc.weight"), 2
    if "stem.conv.weight" in sd and "stages.4.1.conv_proj.conv.weight" in sd:
        # timm ByobNet MobileViTv2: the width multiplier shows in the 1x1 conv ending stage 4.
        width = sd["stages.4.1.conv_proj.conv.weight"].shape[0]
        arch = next((a for a, s in registry.ARCHS.items()
                     if s.family == "mobilevit" and s.embedding_dim == width), None)
        if arch is None:
            raise CheckpointError(f"{source}: a MobileViT with stage-4 width {width} is not supported; "
                                  "expected timm mobilevitv2_150 (768)")
        return (arch,), _num_classes(sd, "head.fc.weight"), 2
    if "features.0.conv.weight" in sd and "cat_head0.CoordAtt.conv1.weight" in sd:
        heads = len({k.split(".")[0] for k in sd if k.startswith("cat_head")})
        return ("ddamfn",), _num_classes(sd, "fc.weight"), heads
    if arch is not None:  # given, but the keys are not recognizably any architecture's: not "pass --arch"
        raise CheckpointError(f"{source}: its keys are not those of --arch {arch} nor of any supported "
                              f"architecture (first keys: {list(sd)[:5]})")
    raise CheckpointError(
        f"{source}: cannot tell the architecture from its keys (first keys: {list(sd)[:5]}); "
        f"pass --arch with one of {', '.join(registry.ARCHS)}")


def infer_arch(sd: dict[str, np.ndarray], obj=None, source: str = "checkpoint",
               arch: str | None = None) -> tuple[str, int | None, int]:
    """(arch, num_classes, num_heads) from state-dict keys and, for a pickled module `obj`, its
    padding modules and batch-norm eps. `arch` (`--arch`) is checked against both: CheckpointError
    naming it and what the checkpoint is when they contradict it.

    A bare EfficientNet state dict cannot tell TF "same" padding from symmetric padding; it is
    taken as `tf_efficientnet_*` (HSEmotion's models) unless `arch` says otherwise.
    """
    candidates, num_classes, num_heads = _key_candidates(sd, source, arch)
    shows = _checkpoint_shows(obj, source)
    fitting = [a for a in candidates if shows is None or shows.differences(_arch_shows(a)) is None]
    if arch is not None:
        registry.get_arch(arch)
        if arch not in candidates:
            raise CheckpointError(f"{source}: --arch {arch} contradicts the checkpoint: its keys are "
                                  f"those of {' or '.join(candidates)}")
        if arch not in fitting:
            mine, theirs = shows.differences(_arch_shows(arch))
            raise CheckpointError(f"{source}: --arch {arch} contradicts the checkpoint: its modules show "
                                  f"{mine}, {arch} has {theirs}; the checkpoint is "
                                  f"{' or '.join(fitting) or 'none of the supported architectures'}")
        return arch, num_classes, num_heads
    if not fitting:
        mine, theirs = shows.differences(_arch_shows(candidates[0]))
        raise CheckpointError(f"{source}: its keys are those of {' or '.join(candidates)}, but its modules "
                              f"show {mine}, which none of them has ({candidates[0]}: {theirs})")
    return fitting[0], num_classes, num_heads


def convert_state_dict(sd: dict[str, np.ndarray], arch: str, num_classes: int | None,
                       num_heads: int = 2, source: str = "checkpoint"):
    """Build `arch` and fill it from a torch state dict (shape-checked); returns the model."""
    model = registry.build(arch, num_classes, num_heads=num_heads)
    return load_torch_state(model, registry.get_arch(arch).family, sd, source)


def convert(src: str | os.PathLike, out: str | os.PathLike, *, arch: str | None = None,
            class_order: str = "hse", overwrite: bool = False) -> ModelInfo:
    """Convert the PyTorch file `src` into the model directory `out`; returns its ModelInfo, whose
    `source` names the file and its SHA-256 and git blob id (`hsemo_jax.digests`).

    On any error nothing is left at `out`.
    """
    src = Path(src)
    if not src.is_file():
        raise CheckpointError(f"{src}: no such file")
    check_model_out(out, overwrite=overwrite, inputs=(src,))  # before the file is read
    obj = load_torch_file(src)
    sd = extract_state_dict(obj, src)
    inferred, num_classes, num_heads = infer_arch(sd, obj, str(src), arch)
    if class_order != "hse" and num_classes not in (8, 10):  # the names would ignore it silently
        raise CheckpointError(f"{src}: --class-order {class_order} orders 8 expression logits (8 or 10 outputs); "
                              f"this checkpoint has {num_classes or 'no'} class outputs")
    model = convert_state_dict(sd, inferred, num_classes, num_heads, str(src))
    kind = "module" if isinstance(obj, InertObject) else "state_dict"
    digests = file_digests(src)
    source = {"file": src.name, "sha256": digests.sha256, "git_blob": digests.git_blob, "format": kind}
    info = ModelInfo.for_arch(inferred, num_classes, class_order, num_heads, source=source)
    save_model(model, info, out, overwrite=overwrite)
    return info
