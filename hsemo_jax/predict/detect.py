"""Face detectors returning boxes (x1, y1, x2, y2) in pixels, and the original crop rule.

* `haar`: OpenCV's frontal-face Haar cascade (bundled with opencv-python 4.x; needs nothing else).
* `yunet`: `cv2.FaceDetectorYN` with a YuNet ONNX model file (`--detector-model`).
* `none`: the whole frame is the face (pre-cropped input such as ABAW `cropped_aligned`).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from hsemo_jax.errors import InputError

DETECTORS = ("haar", "yunet", "none")
DETECT_WIDTH = 960  # frames wider than this are shrunk for detection (boxes mapped back)


def _shrunk(image: np.ndarray, max_width: int) -> tuple[np.ndarray, float]:
    """`image` resized (area interpolation) to at most `max_width` wide, and the scale used."""
    w = image.shape[1]
    if not max_width or w <= max_width:
        return image, 1.0
    scale = max_width / w
    return cv2.resize(image, (max_width, round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA), scale


class HaarDetector:
    """Haar cascade on the (shrunk) grayscale frame; min_size in pixels of the shrunk frame."""

    def __init__(self, min_size: int = 32, scale_factor: float = 1.1, min_neighbors: int = 5,
                 max_width: int = 0):
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise InputError(f"{path}: cannot load OpenCV's Haar cascade (opencv-python 4.x bundles it; "
                             "OpenCV 5 does not). Use --detector yunet or none.")
        self.kw = dict(scaleFactor=scale_factor, minNeighbors=min_neighbors, minSize=(min_size, min_size))
        self.max_width = max_width

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        gray, scale = _shrunk(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), self.max_width)
        boxes = self.cascade.detectMultiScale(cv2.equalizeHist(gray), **self.kw)
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        return boxes / scale


class YuNetDetector:
    def __init__(self, model_path: str | None, score_threshold: float = 0.8, max_width: int = 0):
        if not model_path or not Path(model_path).is_file():
            raise InputError(f"--detector yunet needs --detector-model FILE.onnx (YuNet, e.g. "
                             f"face_detection_yunet_2023mar.onnx from opencv_zoo); got {model_path!r}")
        self.detector = cv2.FaceDetectorYN.create(str(model_path), "", (320, 320), score_threshold)
        self.max_width = max_width

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        image, scale = _shrunk(rgb, self.max_width)
        h, w = image.shape[:2]
        self.detector.setInputSize((w, h))
        _, faces = self.detector.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if faces is None:
            return np.zeros((0, 4), np.float32)
        boxes = faces[:, :4].astype(np.float32)
        boxes[:, 2:] += boxes[:, :2]
        return boxes / scale


class WholeFrame:
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        return np.array([[0, 0, w, h]], np.float32)


def make_detector(name: str, model_path: str | None = None, max_width: int = DETECT_WIDTH):
    """A detector by name; frames wider than `max_width` (0: never) are shrunk for detection."""
    if name == "haar":
        return HaarDetector(max_width=max_width)
    if name == "yunet":
        return YuNetDetector(model_path, max_width=max_width)
    if name == "none":
        return WholeFrame()
    raise InputError(f"unknown detector {name!r}; expected one of {', '.join(DETECTORS)}")


def crop(rgb: np.ndarray, box) -> np.ndarray | None:
    """The original crop: box truncated to int (`astype(int)`), no margin, clamped to the image."""
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in box)
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if x2 <= x1 or y2 <= y1:
        return None
    return rgb[y1:y2, x1:x2]
