"""Tiny dataset copies in the exact official layouts, with real JPEGs (skimage astronaut crops)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# An editable install made while data_pipelines/ had no __init__.py maps it as a namespace
# package (no modules found under plain `pytest`); put this checkout first in that case.
_spec = importlib.util.find_spec("data_pipelines")
if _spec is None or _spec.origin is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
from skimage import data as skdata

ASTRONAUT_BGR = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)  # (512, 512, 3)
CLIP = Path(__file__).resolve().parents[1] / "examples" / "astronaut.mp4"
AU_HEADER = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"


def crop(i: int, size: int = 112) -> np.ndarray:
    """A different BGR crop of the astronaut image per i (shifted window), (size, size, 3)."""
    y, x = (37 * i) % (512 - size), (53 * i) % (512 - size)
    return np.ascontiguousarray(ASTRONAUT_BGR[y:y + size, x:x + size])


def clip_images(size: int):
    """8 uint8 RGB images (8, size, size, 3) from the bundled clip: the face, shifted, and the
    whole frame, mirrored, as the models see crops."""
    cap = cv2.VideoCapture(str(CLIP))
    images = []
    for i in range(8):
        ok, bgr = cap.read()
        assert ok
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        images.append(rgb[20 + 4 * i:160 + 4 * i, 80 + 4 * i:220 + 4 * i] if i % 2 else rgb[:, ::-1])
    cap.release()
    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])


def write_jpeg(path: Path, bgr: np.ndarray) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", bgr)
    assert ok
    path.write_bytes(buf.tobytes())
    return buf.tobytes()


def landmarks_text(x: int, y: int) -> str:
    pts = [(x + 1.5 * k, y + 2.25 * k) for k in range(68)]
    return ";".join(f"{a:.2f};{b:.2f}" for a, b in pts)


# (file, face_x, face_y, w, h, expression code, valence, arousal)
AFFECTNET_TRAIN = [
    ("689/a0.jpg", 10, 20, 60, 70, 1, 0.75, 0.25),   # Happiness
    ("689/a1.jpg", 0, 0, 90, 90, 7, -0.5, 0.5),      # Contempt
    ("12/b2.jpg", 30, 5, 50, 50, 0, 0.0, -0.125),    # Neutral
    ("12/b3.jpg", 5, 5, 40, 40, 9, -2.0, -2.0),      # Uncertain: skipped
    ("12/b4.jpg", 8, 9, 64, 64, 6, -0.625, 0.875),   # Anger
]
AFFECTNET_VAL = [
    ("7/c0.jpg", 12, 14, 80, 60, 3, 0.5, 0.5),       # Surprise
    ("7/c1.jpg", 0, 0, 30, 30, 10, -2.0, -2.0),      # No-Face: skipped
]


def make_affectnet(root: Path, *, train=AFFECTNET_TRAIN, val=AFFECTNET_VAL, header_val=True) -> dict:
    """Official layout; returns {file: full BGR image as decoded from its JPEG}."""
    images = {}
    header = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
              "expression,valence,arousal")
    for csv_name, rows, with_header in (("training.csv", train, True), ("validation.csv", val, header_val)):
        lines = [header] if with_header else []
        for i, (f, x, y, w, h, code, v, a) in enumerate(rows):
            write_jpeg(root / "Manually_Annotated_Images" / f, crop(i + len(images), 128))
            images[f] = cv2.imread(str(root / "Manually_Annotated_Images" / f))
            lines.append(f"{f},{x},{y},{w},{h},{landmarks_text(x, y)},{code},{v},{a}")
        (root / csv_name).write_text("\n".join(lines) + "\n")
    return images


def mtl_row(name: str, i: int) -> str:
    """One ABAW-7 MTL line with a mix of given and missing labels, different per i."""
    v, a = (-5, -5) if i % 4 == 3 else (round(0.1 * (i % 10) - 0.4, 3), round(0.05 * i % 1, 3))
    expr = -1 if i % 5 == 4 else i % 8
    aus = [-1] * 12 if i % 3 == 2 else [(i >> k) & 1 for k in range(12)]
    return ",".join([name, str(v), str(a), str(expr)] + [str(u) for u in aus])


def make_s_aff_wild2(root: Path, videos=(("video1", [1, 2, 3]), ("10-60-1280x720_right", [5, 8]),
                                         ("v2", [1, 9]))) -> dict:
    """ABAW-7 MTL layout; first two videos train, last validation. Returns {name: line}."""
    lines = {}
    all_rows = []
    for vi, (video, frames) in enumerate(videos):
        rows = []
        for f in frames:
            name = f"{video}/{f:05d}.jpg"
            write_jpeg(root / "cropped_aligned" / name, crop(len(lines)))
            lines[name] = mtl_row(name, len(lines))
            rows.append(lines[name])
        all_rows.append(rows)
    header = "image,valence,arousal,expression," + AU_HEADER
    (root / "training_set_annotations.txt").write_text(
        "\n".join([header] + all_rows[0] + all_rows[1]) + "\n")
    (root / "validation_set_annotations.txt").write_text("\n".join([header] + all_rows[2]) + "\n")
    return lines


def make_aff_wild2(root: Path) -> dict:
    """ABAW-6 per-video layout for the three challenges; returns the label values written."""
    ann = root / "6th ABAW Annotations"
    expr = {"train": {"vidA": [0, 7, -1, 3, 5]}, "validation": {"vidB": [2, 2, 6]}}
    va = {"train": {"vidA": [(0.5, -0.25), (-5, -5), (0.125, 1.0), (-1.0, 0.0), (0.3, 0.3)]},
          "validation": {"vidB": [(0.0, 0.0), (0.75, -0.5), (-5, -5)]}}
    au = {"train": {"vidA": [[1, 0] * 6, [-1] * 12, [0] * 12, [1] * 12, [0, 1] * 6]}}
    split_dir = {"train": "Train_Set", "validation": "Validation_Set"}
    for challenge, header, table, fmt in (
            ("EXPR_Recognition_Challenge", "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other",
             expr, str),
            ("VA_Estimation_Challenge", "valence,arousal", va, lambda t: f"{t[0]},{t[1]}"),
            ("AU_Detection_Challenge", AU_HEADER, au, lambda t: ",".join(map(str, t)))):
        for split, videos in table.items():
            for video, values in videos.items():
                p = ann / challenge / split_dir[split] / f"{video}.txt"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("\n".join([header] + [fmt(v) for v in values]) + "\n")
    # frames with crops: vidA has no crop for frame 2; vidB all three (in the ABAW-6 second folder)
    for f in (1, 3, 4, 5):
        write_jpeg(root / "cropped_aligned" / "cropped_aligned" / "vidA" / f"{f:05d}.jpg", crop(f))
    for f in (1, 2, 3):
        write_jpeg(root / "cropped_aligned_new_50_vids" / "vidB" / f"{f:05d}.jpg", crop(10 + f))
    return {"expr": expr, "va": va, "au": au}


def make_video(path: Path, n_frames: int = 5, size=(64, 48), fps: float = 10.0) -> list[np.ndarray]:
    """An MJPG .avi of astronaut crops; returns the BGR frames OpenCV decodes back from it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for i in range(n_frames):
        writer.write(np.ascontiguousarray(crop(i, 128)[:h, :w]))
    writer.release()
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, fr = cap.read()
        if not ok:
            break
        frames.append(fr)
    cap.release()
    return frames


def synthetic_affectnet_build(root: Path, *, train: int = 48, val_per_class: int = 2, seed: int = 0) -> Path:
    """A TFDS build (`build_dataset("affectnet", ...)`) of a small synthetic AffectNet copy with
    real JPEGs (`data_pipelines.make_synthetic_affectnet`): train + validation splits, VA labels."""
    from data_pipelines.build import build_dataset
    from data_pipelines.make_synthetic_affectnet import make_synthetic_affectnet

    make_synthetic_affectnet(root / "manual", train=train, val_per_class=val_per_class, seed=seed, sides=(24, 48))
    (result,) = build_dataset("affectnet", root / "manual", root / "tfds", progress=False, workers=2)
    return result.path.parent  # DATA_DIR/affectnet (the version folder below it is found)
