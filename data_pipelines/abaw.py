"""What the Aff-Wild2 builders share: features, label checks, the ``cropped_aligned`` index.

Images are the organisers' ``cropped_aligned/<video>/<%05d>.jpg`` (112x112, aligned); ABAW-6
split them over ``cropped_aligned/cropped_aligned`` and ``cropped_aligned_new_50_vids``. All
roots found under the manual dir are searched, first match wins. Images are stored as the
original JPEG bytes (checked to decode).

Features (per frame), labels in the Aff-Wild2 order (spec §6, §7), missing codes kept:
    image            bytes           original JPEG
    name             text            ``<video>/<frame>.jpg``
    video            text
    frame            int64           frame number (1-based, from the file name)
    va               float32 (2,)    valence, arousal; -5 = missing
    va_mask          bool (2,)       value >= -1 (given)
    expression       int64           0..7 (Neutral, Anger, ..., Other); -1 = missing
    expression_mask  bool            expression >= 0
    aus              int32 (12,)     AU1, AU2, AU4, AU6, AU7, AU10, AU12, AU15, AU23..AU26; -1 = missing
    au_mask          bool (12,)      au >= 0
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.annotations import Line
from data_pipelines.builder_base import bytes_feature, tensor
from data_pipelines.images import decode_bgr, read_bytes
from hsemo_jax.labels import AU_NAMES, MISSING_AU, MISSING_EXPR, MISSING_VA

IMAGE_DIRS = ("cropped_aligned", "cropped_aligned/cropped_aligned", "cropped_aligned_new_50_vids",
              "cropped_aligned/cropped_aligned_new_50_vids")
VA_RANGE = (-1.0, 1.0)


def features() -> dict:
    return {
        "image": bytes_feature("original cropped_aligned JPEG"),
        "name": tfds.features.Text(doc="<video>/<frame>.jpg"),
        "video": tfds.features.Text(),
        "frame": tensor((), np.int64, "frame number, 1-based"),
        "va": tensor((2,), np.float32, "valence, arousal; -5 = missing"),
        "va_mask": tensor((2,), np.bool_, "value given"),
        "expression": tensor((), np.int64, "Aff-Wild2 order 0..7; -1 = missing"),
        "expression_mask": tensor((), np.bool_, "expression given"),
        "aus": tensor((len(AU_NAMES),), np.int32, f"{', '.join(AU_NAMES)}; -1 = missing"),
        "au_mask": tensor((len(AU_NAMES),), np.bool_, "AU given"),
    }


@dataclass(slots=True)
class Frame:
    """One frame to write; labels default to missing."""

    path: Path
    name: str
    video: str
    frame: int
    va: tuple = (MISSING_VA, MISSING_VA)
    expression: int = MISSING_EXPR
    aus: tuple = field(default_factory=lambda: (MISSING_AU,) * len(AU_NAMES))


def load_frame(c: Frame) -> dict:
    """Frame -> feature dict; BadImage if the JPEG is missing or does not decode."""
    data = read_bytes(c.path, c.name)
    decode_bgr(data, c.name)
    va = np.asarray(c.va, np.float32)
    aus = np.asarray(c.aus, np.int32)
    return {"image": data, "name": c.name, "video": c.video, "frame": c.frame,
            "va": va, "va_mask": va >= -1.0,
            "expression": c.expression, "expression_mask": c.expression >= 0,
            "aus": aus, "au_mask": aus >= 0}


def parse_va(line: Line, texts: list[str]) -> tuple[float, float]:
    """Two fields in [-1, 1] or the missing code -5."""
    out = []
    for text, what in zip(texts, ("valence", "arousal")):
        v = line.float(text, what)
        if v != MISSING_VA and not VA_RANGE[0] <= v <= VA_RANGE[1]:
            raise line.error(f"{what} must be in [-1, 1] or {MISSING_VA:g} (missing), got {text}")
        out.append(v)
    return tuple(out)


def parse_expression(line: Line, text: str) -> int:
    return line.int(text, "expression", range(-1, 8))


def parse_aus(line: Line, texts: list[str]) -> tuple[int, ...]:
    return tuple(line.int(t, name, (-1, 0, 1)) for t, name in zip(texts, AU_NAMES))


def frame_number(line: Line, name: str) -> tuple[str, int]:
    """``<video>/<frame>.jpg`` -> (video, frame); InputError naming the line otherwise."""
    video, _, filename = name.replace("\\", "/").rpartition("/")
    stem = os.path.splitext(filename)[0]
    if not video or not stem.isdigit():
        raise line.error(f"image must be <video>/<frame number>.jpg, got {name!r}")
    return video, int(stem)


class ImageIndex:
    """Finds ``<video>/<file>`` under the cropped_aligned roots of a manual dir.

    Lists each root once (videos) and each video folder on first use (files), so a build does
    one listdir per video instead of one stat per frame.
    """

    def __init__(self, root: Path):
        self.roots = [root / d for d in IMAGE_DIRS if (root / d).is_dir()]
        self._default = self.roots[0] if self.roots else root / IMAGE_DIRS[0]
        self._videos: dict[str, Path] = {}
        for r in reversed(self.roots):  # first root wins
            self._videos.update({p.name: p for p in r.iterdir() if p.is_dir()})
        self._files: dict[str, frozenset] = {}

    def video_dir(self, video: str) -> Path | None:
        return self._videos.get(video)

    def has(self, video: str, filename: str) -> bool:
        d = self._videos.get(video)
        if d is None:
            return False
        if video not in self._files:
            self._files[video] = frozenset(os.listdir(d))
        return filename in self._files[video]

    def path(self, video: str, filename: str) -> Path:
        """Where the image is (or, for a video not found, would be under the first root)."""
        return self._videos.get(video, self._default / video) / filename
