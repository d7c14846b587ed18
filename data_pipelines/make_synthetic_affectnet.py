"""A synthetic AffectNet copy in the official layout: OpenCV drawings of faces, real JPEGs.

    python -m data_pipelines.make_synthetic_affectnet OUT [--train 5000] [--val-per-class 125]
    hsemo-jax build-dataset affectnet --manual-dir OUT --data-dir DATA

writes, like the official release (what ``data_pipelines.affectnet`` reads)::

    OUT/training.csv, OUT/validation.csv    subDirectory_filePath,face_x,face_y,face_width,
                                            face_height,facial_landmarks,expression,valence,arousal
    OUT/Manually_Annotated_Images/<k>/<name>.jpg

Each image is a cartoon face (skin ellipse, eyes, brows, nose, mouth, hair) on a random
background, drawn at a random size, position and angle inside a larger picture whose face box
is in the CSV (the builder crops it). The expression (AffectNet codes 0..7) sets the mouth's
curve, opening and asymmetry, the brows' angle and height, the eyes' opening and a nose
wrinkle, each scaled by an intensity in [0.3, 1] that also scales the class's valence/arousal
(plus noise): classes and VA are learnable from pixels, not trivially (noise, pose, colours).
The training split follows AffectNet's class proportions (Happiness 47 %, ..., Contempt 1.3 %,
each class at least 1 % of ``--train``); validation is balanced like AffectNet's (500 per class
there; ``--val-per-class`` here). Landmarks are left empty (allowed by the format).
Deterministic: image i of a split is drawn from ``np.random.default_rng([seed, split, i])``.
Nothing is downloaded; the folder appears complete or not at all.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np

from hsemo_jax.fileio import atomic_directory
from hsemo_jax.labels import AFFECTNET_CODES_8

HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
          "expression,valence,arousal")
# AffectNet training images per expression code (Neutral, Happiness, Sadness, Surprise, Fear,
# Disgust, Anger, Contempt): HSEmotion's count of the full-resolution training folders.
AFFECTNET_TRAIN_COUNTS = (74874, 134415, 25459, 14090, 6378, 3803, 24882, 3750)
# Per code: mouth curve (+ smile), mouth opening, asymmetry (one-sided smile), brow tilt (+ inner
# ends down = frown), brow raise, eye opening, nose wrinkle; and the class's (valence, arousal).
EXPRESSIONS = {
    0: dict(curve=0.0, open=0.0, asym=0.0, tilt=0.0, raise_=0.0, eye=1.0, wrinkle=0.0, va=(0.0, 0.0)),
    1: dict(curve=1.0, open=0.35, asym=0.0, tilt=0.0, raise_=0.2, eye=0.8, wrinkle=0.0, va=(0.75, 0.35)),
    2: dict(curve=-0.8, open=0.0, asym=0.0, tilt=-0.6, raise_=0.1, eye=0.7, wrinkle=0.0, va=(-0.65, -0.25)),
    3: dict(curve=0.0, open=1.0, asym=0.0, tilt=0.0, raise_=1.0, eye=1.5, wrinkle=0.0, va=(0.2, 0.75)),
    4: dict(curve=-0.3, open=0.6, asym=0.0, tilt=-0.4, raise_=0.8, eye=1.4, wrinkle=0.0, va=(-0.55, 0.7)),
    5: dict(curve=-0.5, open=0.15, asym=0.0, tilt=0.4, raise_=-0.3, eye=0.6, wrinkle=1.0, va=(-0.6, 0.3)),
    6: dict(curve=-0.4, open=0.25, asym=0.0, tilt=1.0, raise_=-0.5, eye=0.9, wrinkle=0.3, va=(-0.5, 0.6)),
    7: dict(curve=0.4, open=0.0, asym=1.0, tilt=0.2, raise_=0.0, eye=0.85, wrinkle=0.0, va=(-0.4, 0.2)),
}
SPLIT_IDS = {"train": 0, "validation": 1}


def _skin(rng) -> tuple[int, int, int]:
    base = np.array([[60, 95, 150], [90, 140, 200], [120, 170, 230], [40, 70, 110]], float)  # BGR
    c = base[rng.integers(len(base))] + rng.normal(0, 12, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _background(rng, h: int, w: int) -> np.ndarray:
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h)[:, None]
    ramp = (a * (1 - t) + b * t).astype(np.uint8)
    img = np.broadcast_to(ramp[None] if len(ramp) == w else ramp[:, None], (h, w, 3)).copy()
    for _ in range(int(rng.integers(0, 6))):  # clutter
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        p = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, p, int(rng.integers(5, max(6, w // 4))), c, -1, cv2.LINE_AA)
    return img


def draw_face(rng: np.random.Generator, code: int, intensity: float, side: int) -> tuple[np.ndarray, tuple]:
    """A BGR picture with one face; returns (image, face box (x, y, w, h))."""
    e = EXPRESSIONS[code]
    k = intensity
    margin = rng.uniform(1.25, 1.8)
    H = W = int(side * margin)
    img = _background(rng, H, W)
    x0 = int(rng.integers(0, W - side + 1))
    y0 = int(rng.integers(0, H - side + 1))
    # the face, drawn on a canvas of the box's size then rotated and pasted
    s = side
    face = np.zeros((s, s, 3), np.uint8)
    mask = np.zeros((s, s), np.uint8)
    cx, cy = s / 2 + rng.normal(0, s * 0.02), s / 2 + rng.normal(0, s * 0.02)
    ax, ay = s * rng.uniform(0.33, 0.4), s * rng.uniform(0.42, 0.48)
    skin = _skin(rng)
    hair = tuple(int(v) for v in rng.integers(0, 90, 3))
    cv2.ellipse(face, (int(cx), int(cy - ay * 0.35)), (int(ax * 1.08), int(ay * 0.8)), 0, 180, 360, hair, -1,
                cv2.LINE_AA)
    cv2.ellipse(face, (int(cx), int(cy)), (int(ax), int(ay)), 0, 0, 360, skin, -1, cv2.LINE_AA)
    cv2.ellipse(mask, (int(cx), int(cy)), (int(ax * 1.1), int(ay * 1.05)), 0, 0, 360, 255, -1)
    cv2.ellipse(mask, (int(cx), int(cy - ay * 0.35)), (int(ax * 1.1), int(ay * 0.82)), 0, 180, 360, 255, -1)
    dark = tuple(int(v * 0.35) for v in skin)
    th = max(1, int(round(s / 60)))
    # eyes
    eye_y = cy - ay * 0.12
    eye_dx = ax * 0.42
    eye_w = ax * 0.2
    eye_h = max(1.0, ax * 0.09 * (1 + (e["eye"] - 1) * k))
    for side_sign in (-1, 1):
        ex = cx + side_sign * eye_dx
        cv2.ellipse(face, (int(ex), int(eye_y)), (int(eye_w), int(eye_h)), 0, 0, 360, (245, 245, 245), -1,
                    cv2.LINE_AA)
        cv2.circle(face, (int(ex), int(eye_y)), max(1, int(min(eye_h, eye_w) * 0.7)), (40, 30, 20), -1, cv2.LINE_AA)
        # brows: inner end lowered by tilt (frown), both raised by raise_
        by = eye_y - ax * (0.22 + 0.15 * e["raise_"] * k)
        inner = ex - side_sign * eye_w * 1.1
        outer = ex + side_sign * eye_w * 1.1
        tilt = ax * 0.12 * e["tilt"] * k
        cv2.line(face, (int(inner), int(by + tilt)), (int(outer), int(by - tilt * 0.3)), hair, th * 2, cv2.LINE_AA)
    # nose, with wrinkles for disgust
    cv2.line(face, (int(cx), int(eye_y + ax * 0.1)), (int(cx - ax * 0.06), int(cy + ay * 0.18)), dark, th,
             cv2.LINE_AA)
    if e["wrinkle"] * k > 0.2:
        for j in range(2):
            yy = int(eye_y + ax * (0.12 + 0.08 * j))
            cv2.line(face, (int(cx - ax * 0.12), yy), (int(cx + ax * 0.12), yy), dark, th, cv2.LINE_AA)
    # mouth: a polyline whose ends go up (smile) or down, opening filled dark, one end raised (asym)
    my = cy + ay * 0.48
    mw = ax * 0.45
    t = np.linspace(-1, 1, 21)
    curve = -e["curve"] * k * ay * 0.12 * t ** 2
    lift = -e["asym"] * k * ay * 0.12 * np.clip(t, 0, 1) ** 2
    top = np.stack([cx + mw * t, my + curve + lift], 1)
    gap = e["open"] * k * ay * 0.2 * (1 - t ** 2)
    bottom = top + np.stack([np.zeros_like(t), gap], 1)
    if gap.max() > 1.5:
        poly = np.concatenate([top, bottom[::-1]]).astype(np.int32)
        cv2.fillPoly(face, [poly], (30, 20, 60), cv2.LINE_AA)
    cv2.polylines(face, [top.astype(np.int32)], False, (40, 40, 140), th * 2, cv2.LINE_AA)
    # rotate the face and paste it into the picture
    angle = rng.normal(0, 8)
    rot = cv2.getRotationMatrix2D((s / 2, s / 2), angle, 1.0)
    face = cv2.warpAffine(face, rot, (s, s), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(mask, rot, (s, s), flags=cv2.INTER_LINEAR)
    region = img[y0:y0 + s, x0:x0 + s]
    alpha = (mask[..., None].astype(np.float32) / 255)
    region[:] = (face * alpha + region * (1 - alpha)).astype(np.uint8)
    # lighting and sensor noise
    gain = rng.uniform(0.7, 1.2)
    noise = rng.normal(0, rng.uniform(2, 8), img.shape)
    img = np.clip(img.astype(np.float32) * gain + noise, 0, 255).astype(np.uint8)
    return img, (x0, y0, s, s)


def _counts(train: int) -> np.ndarray:
    p = np.asarray(AFFECTNET_TRAIN_COUNTS, float)
    p /= p.sum()
    floor = max(1, train // 100)
    counts = np.maximum(np.floor(p * train).astype(int), floor)
    counts[int(np.argmax(counts))] += train - counts.sum()  # exact total, on the largest class
    return counts


def _write_split(root: Path, split: str, codes: np.ndarray, seed: int, sides: tuple[int, int]) -> list[str]:
    lines = [HEADER]
    for i, code in enumerate(codes):
        rng = np.random.default_rng([seed, SPLIT_IDS[split], i])
        intensity = rng.uniform(0.3, 1.0)
        side = int(rng.integers(sides[0], sides[1] + 1))
        img, (x, y, w, h) = draw_face(rng, int(code), intensity, side)
        base = np.asarray(EXPRESSIONS[int(code)]["va"])
        v, a = np.clip(base * intensity + rng.normal(0, 0.05, 2), -1, 1)
        name = f"{i % 997 + 1}/{split}_{i:06d}.jpg"
        path = root / "Manually_Annotated_Images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(80, 96))])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {name}")
        path.write_bytes(buf.tobytes())
        lines.append(f"{name},{x},{y},{w},{h},,{int(code)},{v:.4f},{a:.4f}")
    return lines


def make_synthetic_affectnet(out: str | Path, *, train: int = 5000, val_per_class: int = 125, seed: int = 0,
                             sides: tuple[int, int] = (96, 256)) -> dict[str, list[int]]:
    """Write the dataset to `out` (must not exist); returns the images per class code per split."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    if train < 8 or val_per_class < 1 or not 16 <= sides[0] <= sides[1]:
        raise ValueError("need train >= 8, val_per_class >= 1 and 16 <= min side <= max side")
    rng = np.random.default_rng([seed, 2])
    train_codes = np.repeat(np.arange(8), _counts(train))
    train_codes = train_codes[rng.permutation(len(train_codes))]  # AffectNet's CSV is not sorted by class
    val_codes = np.repeat(np.arange(8), val_per_class)
    with atomic_directory(out) as tmp:
        for split, codes, csv_name in (("train", train_codes, "training.csv"),
                                       ("validation", val_codes, "validation.csv")):
            lines = _write_split(tmp, split, codes, seed, sides)
            (tmp / csv_name).write_text("\n".join(lines) + "\n")
    return {"train": np.bincount(train_codes, minlength=8).tolist(),
            "validation": np.bincount(val_codes, minlength=8).tolist()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_pipelines.make_synthetic_affectnet",
                                description=__doc__.split("\n")[0])
    p.add_argument("out", help="folder to create (AffectNet's official layout)")
    p.add_argument("--train", type=int, default=5000, help="training images (AffectNet's class proportions)")
    p.add_argument("--val-per-class", type=int, default=125, help="validation images per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-side", type=int, default=96, help="smallest face box side in pixels")
    p.add_argument("--max-side", type=int, default=256, help="largest face box side in pixels")
    args = p.parse_args(argv)
    counts = make_synthetic_affectnet(args.out, train=args.train, val_per_class=args.val_per_class,
                                      seed=args.seed, sides=(args.min_side, args.max_side))
    for split, c in counts.items():
        print(f"{split}: {sum(c)} images; " + ", ".join(f"{AFFECTNET_CODES_8[i]} {n}" for i, n in enumerate(c)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
