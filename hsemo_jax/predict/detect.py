"""Face detectors returning boxes (x1, y1, x2, y2) in pixels, and the original crop rule.

* `haar`: OpenCV's frontal-face Haar cascade (bundled with opencv-python 4.x; needs nothing else).
* `yunet`: `cv2.FaceDetectorYN` with a YuNet ONNX model file (`--detector-model`).
* `blazeface`, `blazeface_full_range`: MediaPipe's BlazeFace (bundled weights), jitted, on the
  whole frame (`hsemo_jax.models.detection`).
* `mtcnn`: facenet-pytorch's MTCNN (HSEmotion's examples use it), jitted (`hsemo_jax.models.mtcnn_cascade`);
  weights from a directory with pnet.pt, rnet.pt, onet.pt (`--detector-model`), else fetched by name.
* `none`: the whole frame is the face (pre-cropped input such as ABAW `cropped_aligned`).

`haar` and `yunet` also search `near(rgb, boxes)`: each box's surroundings only, at scales close to
its size, which is how `hsemo_jax.predict.follow` tracks faces between full-frame detections.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from hsemo_jax.errors import InputError
from hsemo_jax.models import registry
from hsemo_jax.predict.defaults import DETECT_WIDTH, DETECTORS, HOST_BLAZEFACE_MAX_FACES

NEAR_MARGIN = 0.5  # `near` searches each box widened by this fraction of its size on every side
NEAR_SIZE = 96  # ... shrunk so that the box is at most this many pixels wide


def _regions(shape, boxes_n4: np.ndarray, margin: float = NEAR_MARGIN):
    """Per box: the integer region (x1, y1, x2, y2) around it, clamped to the image."""
    h, w = shape[:2]
    for x1, y1, x2, y2 in boxes_n4:
        mx, my = margin * (x2 - x1), margin * (y2 - y1)
        rx1, ry1 = max(int(x1 - mx), 0), max(int(y1 - my), 0)
        rx2, ry2 = min(int(np.ceil(x2 + mx)), w), min(int(np.ceil(y2 + my)), h)
        yield rx1, ry1, rx2, ry2


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
        return self._detect(gray, **self.kw) / scale

    def _detect(self, gray: np.ndarray, **kw) -> np.ndarray:
        boxes = self.cascade.detectMultiScale(cv2.equalizeHist(gray), **kw)
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        return boxes

    def near(self, rgb: np.ndarray, boxes_n4: np.ndarray, scale_range=(0.7, 1.4)) -> list[np.ndarray]:
        """Per box, the faces found in its surroundings (widened by NEAR_MARGIN, shrunk so that the
        box is at most NEAR_SIZE px) whose size is within `scale_range` of the box's."""
        found = []
        for (rx1, ry1, rx2, ry2), box in zip(_regions(rgb.shape, boxes_n4), boxes_n4):
            size = float(max(box[2] - box[0], box[3] - box[1]))
            if rx2 - rx1 < 24 or ry2 - ry1 < 24 or size <= 0:
                found.append(np.zeros((0, 4), np.float32))
                continue
            gray = cv2.cvtColor(rgb[ry1:ry2, rx1:rx2], cv2.COLOR_RGB2GRAY)
            scale = min(1.0, NEAR_SIZE / size)
            if scale < 1.0:
                gray = cv2.resize(gray, (max(round(gray.shape[1] * scale), 1), max(round(gray.shape[0] * scale), 1)),
                                  interpolation=cv2.INTER_AREA)
            lo, hi = (max(int(f * size * scale), 24) for f in scale_range)
            kw = dict(self.kw, minSize=(lo, lo), maxSize=(hi, hi))
            found.append(self._detect(gray, **kw) / scale + np.array([rx1, ry1, rx1, ry1], np.float32))
        return found


class YuNetDetector:
    def __init__(self, model_path: str | None, score_threshold: float = 0.8, max_width: int = 0):
        if not model_path or not Path(model_path).is_file():
            got = f"; {model_path}: no such file" if model_path else ""
            raise InputError(f"--detector yunet needs --detector-model FILE.onnx (YuNet, e.g. "
                             f"face_detection_yunet_2023mar.onnx from opencv_zoo){got}")
        try:
            self.detector = cv2.FaceDetectorYN.create(str(model_path), "", (320, 320), score_threshold)
        except cv2.error as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise InputError(f"{model_path}: OpenCV cannot load it as a YuNet face detection model "
                             f"({reason})") from None
        self.max_width = max_width

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        image, scale = _shrunk(rgb, self.max_width)
        return self._detect(image) / scale

    def _detect(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        self.detector.setInputSize((w, h))
        _, faces = self.detector.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if faces is None:
            return np.zeros((0, 4), np.float32)
        boxes = faces[:, :4].astype(np.float32)
        boxes[:, 2:] += boxes[:, :2]
        return boxes

    def near(self, rgb: np.ndarray, boxes_n4: np.ndarray) -> list[np.ndarray]:
        """Per box, the faces YuNet finds in its surroundings (widened by NEAR_MARGIN)."""
        return [self._detect(np.ascontiguousarray(rgb[y1:y2, x1:x2])) + np.array([x1, y1, x1, y1], np.float32)
                if x2 - x1 >= 16 and y2 - y1 >= 16 else np.zeros((0, 4), np.float32)
                for x1, y1, x2, y2 in _regions(rgb.shape, boxes_n4)]


class BlazeFaceDetector:
    """BlazeFace on the whole frame at two scales (`models.detection.detect`, resized to its input
    on the device): one compiled program per frame size."""

    def __init__(self, name: str = "blazeface", max_faces: int = HOST_BLAZEFACE_MAX_FACES, size: int | None = None):
        import jax

        from hsemo_jax.convert.blazeface import load_blazeface
        from hsemo_jax.models.detection import detect

        model = load_blazeface(name)
        self._detect = jax.jit(lambda frames: detect(model, frames, max_faces=max_faces, size=size))

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        found = self._detect(np.ascontiguousarray(rgb)[None])
        return np.asarray(found.boxes[0])[np.asarray(found.valid[0])]


class MTCNNDetector:
    """MTCNN on the (shrunk) frame: one compilation per frame size."""

    def __init__(self, weights: str | None = None, max_width: int = 0):
        from hsemo_jax.hub import load_mtcnn
        from hsemo_jax.models.mtcnn_cascade import make_detect

        self.detect = make_detect(load_mtcnn(weights))
        self.max_width = max_width

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        image, scale = _shrunk(rgb, self.max_width)
        faces = self.detect(image)
        return faces.boxes[faces.valid] / scale


class WholeFrame:
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        return np.array([[0, 0, w, h]], np.float32)


def make_detector(name: str, model_path: str | None = None, max_width: int = DETECT_WIDTH,
                  detect_size: int | None = None):
    """A detector by name; frames wider than `max_width` (0: never) are shrunk for detection
    (BlazeFace: `detect_size` instead, its finer view's short side; None: the model's)."""
    if name == "haar":
        return HaarDetector(max_width=max_width)
    if name == "yunet":
        return YuNetDetector(model_path, max_width=max_width)
    if name in registry.DETECTORS:
        return BlazeFaceDetector(name, size=detect_size)
    if name == "mtcnn":
        return MTCNNDetector(model_path, max_width=max_width)
    if name == "none":
        return WholeFrame()
    raise InputError(f"unknown detector {name!r}; expected one of {', '.join(DETECTORS)}")


def check_detector(name: str, model_path: str | None = None) -> None:
    """Before any input is read: a detector that needs a model file (YuNet, MTCNN) gets a usable one,
    so that a missing or wrong file is one error, not one per input."""
    if name in ("yunet", "mtcnn"):
        make_detector(name, model_path)
    elif model_path:
        print(f"warning: --detector-model {model_path} is ignored: only --detector yunet and mtcnn read one",
              file=sys.stderr)


def crop(rgb: np.ndarray, box) -> np.ndarray | None:
    """The original crop: box truncated to int (`astype(int)`), no margin, clamped to the image."""
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in box)
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if x2 <= x1 or y2 <= y1:
        return None
    return rgb[y1:y2, x1:x2]
