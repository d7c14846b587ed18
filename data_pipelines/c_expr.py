"""C-EXPR-DB builder: videos decoded with OpenCV into frames, for face detection + inference.

``manual_dir``: video files (``.mp4``, ``.avi``, ``.mkv``, ``.mov``, ``.webm``, ``.mpg``), at any
depth. HSEmotion extracted every frame with ffmpeg into ``frames/<video>/%04d.png`` (1-based,
spec §2); here every frame is decoded by ``cv2.VideoCapture`` and stored as PNG (lossless,
default) or JPEG (``frame_format='jpg'``, quality 95). No face detection happens here.
A video OpenCV cannot open, or that yields no frame, falls under the bad-image policy.

Features (per frame):
    image   bytes     encoded BGR frame (PNG or JPEG); decodes to the frame OpenCV read
    name    text      ``<video>/<%05d frame>``
    video   text      path of the video relative to manual_dir, without its extension
    frame   int64     1-based frame number
    fps     float32   the video's frame rate as OpenCV reports it (0 if unknown)
Split: test.
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.builder_base import ManualBuilder, bytes_feature, tensor, threaded_map
from data_pipelines.images import BadImage, encode
from hsemo_jax.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")
FRAME_FORMATS = {"png": ".png", "jpg": ".jpg"}


def read_frames(path: Path, name: str):
    """Yield (frame_number, uint8 BGR (H, W, 3)) from a video, 1-based; BadImage if none."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise BadImage("video cannot be opened", name)
        n = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            n += 1
            yield n, frame
        if n == 0:
            raise BadImage("video has no decodable frame", name)
    finally:
        cap.release()


def video_fps(path: Path) -> float:
    cap = cv2.VideoCapture(str(path))
    try:
        return float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        cap.release()


class CExpr(ManualBuilder):
    """Every frame of the C-EXPR-DB videos (for compound-expression inference)."""

    name = "c_expr"
    DESCRIPTION = __doc__
    HOMEPAGE = "https://affective-behavior-analysis-in-the-wild.github.io/7th/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Point --manual-dir at the folder holding the C-EXPR-DB videos."

    def __init__(self, *, frame_format: str = "png", **kwargs):
        if frame_format not in FRAME_FORMATS:
            raise InputError(f"frame_format must be one of {', '.join(FRAME_FORMATS)}, got {frame_format!r}")
        self.frame_format = frame_format
        super().__init__(**kwargs)

    def _features(self):
        return {
            "image": bytes_feature("encoded frame (PNG or JPEG)"),
            "name": tfds.features.Text(doc="<video>/<%05d frame>"),
            "video": tfds.features.Text(),
            "frame": tensor((), np.int64, "frame number, 1-based"),
            "fps": tensor((), np.float32, "frame rate reported by OpenCV"),
        }

    def _candidates(self, root: Path) -> dict[str, list]:
        videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        if not videos:
            raise InputError(f"{root}: no video files ({', '.join(VIDEO_SUFFIXES)}) found")
        return {"test": [(p, p.relative_to(root).with_suffix("").as_posix()) for p in videos]}

    def _generate_examples(self, split: str, candidates: list):
        ext = FRAME_FORMATS[self.frame_format]
        key = 0
        for path, video in candidates:
            fps = np.float32(video_fps(path))
            frames = read_frames(path, video)
            encoded = threaded_map(functools.partial(_encode_frame, ext), frames, self.workers)
            try:
                for number, data in encoded:
                    self.log.written[split] += 1
                    yield key, {"image": data, "name": f"{video}/{number:05d}", "video": video,
                                "frame": number, "fps": fps}
                    key += 1
            except BadImage as e:
                self.log.bad_image(split, e)


def _encode_frame(ext: str, item):
    number, bgr = item
    return number, encode(bgr, ext)
