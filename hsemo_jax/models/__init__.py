"""Flax NNX backbones with one interface: `model(x_nhwc)` -> class scores as the PyTorch forward
returns them, `model.features(x_nhwc)` -> embedding, `model.head(embedding)` -> scores."""
from __future__ import annotations

import numpy as np

from hsemo_jax.models.registry import ARCHS, PUBLISHED, build, get_arch
from hsemo_jax.models.transforms import preprocess_images, resize_uint8

__all__ = ["ARCHS", "PUBLISHED", "build", "get_arch", "preprocess", "preprocess_images", "resize_uint8"]


def preprocess(name: str, images) -> np.ndarray:
    """uint8 RGB image(s) -> float32 NHWC input of the model `name` (architecture or published
    model name), exactly as the original: PIL-bilinear resize to (S, S), /255, (x - mean) / std.

    images: (H, W, 3), (N, H, W, 3), or a list of (Hi, Wi, 3) crops of any sizes.
    """
    arch = get_arch(PUBLISHED[name].arch if name in PUBLISHED else name)
    return preprocess_images(images, arch.input_size, arch.mean, arch.std)
