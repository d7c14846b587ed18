"""Models and faces for the export tests: each architecture's PyTorch original with randomized,
calibrated weights (tests/reference/randomize.py) converted to Flax, so outputs depend on the
input (an uncalibrated random deep net returns the same scores for every face)."""
from __future__ import annotations

import zlib

import numpy as np
import torch

from hsemo_jax.checkpoint import ModelInfo
from hsemo_jax.convert import convert_state_dict
from hsemo_jax.models import preprocess, registry

from randomize import randomize_

SOURCE = {"file": "random.pt", "sha256": "5" * 64, "format": "state_dict"}


def faces() -> list[np.ndarray]:
    """Real face crops, uint8 RGB: the astronaut's face (200x170) and three LFW faces (25x25)."""
    from skimage import data

    lfw = [np.repeat((f * 255).round().astype(np.uint8)[..., None], 3, axis=-1) for f in data.lfw_subset()[:3]]
    return [data.astronaut()[20:220, 160:330], *lfw]


def _reference(arch: str) -> torch.nn.Module:
    if registry.get_arch(arch).family in ("efficientnet", "mobilevit"):
        import timm

        return timm.create_model(arch, pretrained=False, num_classes=10)
    if arch == "mobilefacenet":
        import mobilefacenet

        m = mobilefacenet.get_mbf(False, 512)
        m.fc = torch.nn.Linear(512, 10)
        return m
    import ddamfn

    return ddamfn.DDAMNet(num_class=10, num_head=2, pretrained=False)


def calibrated_model(arch: str):
    """(Flax model, ModelInfo with a source SHA-256): the PyTorch original randomized and
    calibrated on the preprocessed faces, converted."""
    x = preprocess(arch, faces())
    ref = _reference(arch)
    randomize_(ref, seed=zlib.crc32(arch.encode()), calib_input=torch.from_numpy(x.transpose(0, 3, 1, 2)))
    model = convert_state_dict({k: v.numpy() for k, v in ref.state_dict().items()}, arch, 10)
    return model, ModelInfo.for_arch(arch, 10, source=SOURCE)
