"""Torch state_dict <-> NNX state, per architecture, shape-checked.

The NNX module trees mirror the PyTorch attribute trees, so a torch key maps to an NNX path by
(1) an architecture's renames (regexes on the torch key), (2) splitting on "." (integers index an
`nnx.List`), and (3) the leaf rule of the module that owns it (e.g. Conv2d `weight` OIHW ->
`kernel` HWIO). Every source key must land on exactly one target of the same size, and every
target must be filled: missing and unexpected keys are reported by name.
"""
from __future__ import annotations

import re

import numpy as np
from flax import nnx

from hsemo_jax.errors import CheckpointError
from hsemo_jax.models.layers import BatchNorm, Conv2d, Linear, PReLU
from hsemo_jax.models.mobilevit import GroupNorm1

# module type -> {torch leaf name: (nnx leaf name, torch->nnx transform, nnx->torch transform)}
_OIHW_TO_HWIO = (lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1))
_OI_TO_IO = (lambda a: a.T, lambda a: a.T)
_SAME = (lambda a: a, lambda a: a)
LEAF_RULES = {
    Conv2d: {"weight": ("kernel", *_OIHW_TO_HWIO), "bias": ("bias", *_SAME)},
    Linear: {"weight": ("kernel", *_OI_TO_IO), "bias": ("bias", *_SAME)},
    BatchNorm: {"weight": ("scale", *_SAME), "bias": ("bias", *_SAME),
                "running_mean": ("mean", *_SAME), "running_var": ("var", *_SAME)},
    PReLU: {"weight": ("alpha", *_SAME)},
    GroupNorm1: {"weight": ("scale", *_SAME), "bias": ("bias", *_SAME)},
}
# torch keys that carry no information for inference or training here.
IGNORED = re.compile(r"(^|\.)num_batches_tracked$")

# arch family -> (torch prefix, nnx prefix) pairs; the first match is applied on import, and the
# pairs are inverted on export (first nnx-prefix match).
RENAMES: dict[str, list[tuple[str, str]]] = {
    # HSEmotion's FER-only models wrap the classifier in nn.Sequential; exported as `classifier.`.
    "efficientnet": [("classifier.", "classifier."), ("classifier.0.", "classifier.")],
    # torch `features` is a module there; here `features(x)` is the embedding method of every model.
    "mobilefacenet": [("features.", "gdc.")],
    "ddamfn": [("features.", "trunk.")],
    # timm ByobNet's classifier `head.fc`; `head(f)` is the scores method of every model.
    "mobilevit": [("head.fc.", "fc.")],
    # facenet-pytorch's PNet / RNet / ONet state dicts: attribute names as in torch.
    "mtcnn": [],
}


def _owners(model: nnx.Module) -> dict[tuple, nnx.Module]:
    return {tuple(path): m for path, m in nnx.iter_graph(model) if isinstance(m, nnx.Module)}


def _rename(key: str, pairs) -> str:
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _torch_path(key: str, family: str) -> tuple:
    # Longest torch prefix first, so `classifier.0.` wins over `classifier.`.
    pairs = sorted(RENAMES[family], key=lambda p: -len(p[0]))
    return tuple(int(p) if p.isdigit() else p for p in _rename(key, pairs).split("."))


def load_torch_state(model: nnx.Module, family: str, state_dict: dict[str, np.ndarray],
                     source: str = "checkpoint") -> nnx.Module:
    """Copy a torch state_dict into `model` in place (float32) and return it.

    Raises CheckpointError listing missing / unexpected keys or the first shape mismatch.
    """
    owners = _owners(model)
    targets = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(model))}
    filled, misfit, unexpected, errors = set(), set(), [], []
    for key, value in state_dict.items():
        if IGNORED.search(key):
            continue
        path = _torch_path(key, family)
        rule = LEAF_RULES.get(type(owners.get(path[:-1])), {}).get(path[-1])
        if rule is None or path[:-1] + (rule[0],) not in targets:
            unexpected.append(key)
            continue
        name, to_nnx, _ = rule
        tpath = path[:-1] + (name,)
        var = targets[tpath]
        arr = to_nnx(np.asarray(value, dtype=np.float32))
        if arr.shape != var[...].shape:
            errors.append(f"{key}: shape {np.shape(value)} in {source} does not fit "
                          f"{'.'.join(map(str, tpath))} {var[...].shape}")
            misfit.add(tpath)
            continue
        var[...] = arr
        filled.add(tpath)
    # a key whose shape did not fit is reported as such, not again as missing; missing keys are
    # named as the checkpoint would name them (torch keys), as the other two lists are
    missing = [_torch_key(p, owners, family) for p in targets if p not in filled and p not in misfit]
    if errors or missing or unexpected:
        parts = list(errors)
        if missing:
            parts.append(f"missing ({len(missing)}): " + ", ".join(missing[:20])
                         + (" ..." if len(missing) > 20 else ""))
        if unexpected:
            parts.append(f"unexpected ({len(unexpected)}): " + ", ".join(unexpected[:20])
                         + (" ..." if len(unexpected) > 20 else ""))
        raise CheckpointError(f"{source} does not match architecture {family}: " + "; ".join(parts))
    return model


def _torch_key(path: tuple, owners: dict, family: str) -> str:
    """The torch state-dict key of the NNX variable at `path` (`load_torch_state`'s map inverted)."""
    rules = LEAF_RULES[type(owners[path[:-1]])]
    torch_name = next(k for k, r in rules.items() if r[0] == path[-1])
    key = ".".join(map(str, path[:-1] + (torch_name,)))
    return _rename(key, [(new, old) for old, new in RENAMES[family]])


def export_torch_state(model: nnx.Module, family: str) -> dict[str, np.ndarray]:
    """Inverse of `load_torch_state` (without `num_batches_tracked`), keys in NNX tree order.

    Renamed prefixes get their first torch name back (e.g. `classifier.weight`).
    """
    owners = _owners(model)
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        path = tuple(path)
        to_torch = next(r[2] for r in LEAF_RULES[type(owners[path[:-1]])].values() if r[0] == path[-1])
        out[_torch_key(path, owners, family)] = to_torch(np.asarray(var[...]))
    return out
