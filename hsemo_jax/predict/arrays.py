"""Frames given as numpy arrays (the Python API's `predict(frames)`), as a frame source like
`hsemo_jax.predict.video.FrameSource`."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from hsemo_jax.errors import InputError
from hsemo_jax.predict.video import Frame


def as_rgb_uint8(image, what: str = "image") -> np.ndarray:
    """An RGB uint8 array (H, W, 3) from uint8 (H, W) grayscale, (H, W, 1), (H, W, 3) RGB or
    (H, W, 4) RGBA (alpha dropped); anything else is an InputError."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise InputError(f"{what}: expected uint8 pixels (0..255), got {a.dtype}; convert with "
                         "np.clip(x, 0, 255).astype(np.uint8) (16-bit images: x >> 8)")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{what}: expected an RGB image (H, W, 3), got an array of shape {a.shape}")
    return np.ascontiguousarray(a[..., :3])


class ArraySource:
    """One image (H, W[, C]), a stack of frames (N, H, W, C) or a list of frames (of any sizes), uint8,
    RGB; frames numbered 0..N-1."""

    kind = "frames"

    def __init__(self, frames, name: str = "<array>"):
        a = frames if isinstance(frames, (list, tuple)) else np.asarray(frames)  # a list: frames may differ in size
        if isinstance(a, (list, tuple)) or a.ndim == 4 or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
            self.frames = [as_rgb_uint8(f, f"{name} frame {i}") for i, f in enumerate(a)]
        else:
            self.frames = [as_rgb_uint8(a, name)]
        if not self.frames:
            raise InputError(f"{name}: no frames (an empty array)")
        self.name = name
        self.notes: list[str] = []

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[Frame]:
        for i, rgb in enumerate(self.frames):
            yield Frame(i, None, rgb, self.name, self.name)  # one sequence: frames of one clip
