"""Training augmentation recipes, reproducing torchvision on PIL images (spec §1a, §1c).

Recipes (``PRESETS``, the config's ``data.augment``):

* ``hsemotion``: none. HSEmotion's AffectNet training (``train_emotions-pytorch.ipynb``) uses
  ``Resize((S, S))`` -> ``ToTensor()`` -> ``Normalize`` for training as for testing.
* ``ddamfn``: DDAMFN ``affectnet_train.py``, below.
* ``ddamfn++``: DDAMFN++ ``affectnet_train_sam_opt_v2.0.py``: the same with
  ``RandomErasing(p=1, scale=(0.05, 0.05))``.

DDAMFN ``affectnet_train.py``: ``Resize((S, S))`` -> ``RandomHorizontalFlip()`` ->
``RandomApply([RandomAffine(20, scale=(0.8, 1), translate=(0.2, 0.2))], p=0.7)`` ->
``ToTensor()`` -> ``Normalize`` -> ``RandomErasing()``.

* The flip and affine act on the resized uint8 image (PIL in torchvision). ``affine_nearest``
  reproduces ``PIL.Image.transform(AFFINE, NEAREST)`` bit for bit (Pillow's 16.16 fixed-point
  loop), with torchvision's inverse matrix (centre (W/2, H/2), fill 0).
* Random erasing acts on the normalized float image: a rectangle of area ``scale`` x S^2 and
  aspect ``ratio`` (log-uniform), 10 tries, set to ``value`` (0 = the mean colour).
* Random numbers come from a ``numpy.random.Generator`` (grain gives each element its own,
  derived from the pipeline seed and the element index), with the same distributions and
  draw order as torchvision; the exact values differ from torch's generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges; ``None`` for the whole config = no augmentation (eval)."""

    hflip: float = 0.5
    affine_p: float = 0.7
    degrees: float = 20.0
    translate: tuple[float, float] = (0.2, 0.2)
    scale: tuple[float, float] = (0.8, 1.0)
    erase_p: float = 0.5
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    erase_value: float = 0.0


DDAMFN = AugmentConfig()  # DDAMFN affectnet_train.py
DDAMFN_PP = AugmentConfig(erase_p=1.0, erase_scale=(0.05, 0.05))  # DDAMFN++ (SAM script)
PRESETS = {"hsemotion": None, "ddamfn": DDAMFN, "ddamfn++": DDAMFN_PP}


def inverse_affine_matrix(center, angle, translate, scale) -> list[float]:
    """torchvision ``_get_inverse_affine_matrix`` with zero shear: output (x, y) -> input."""
    rot = math.radians(angle)
    cx, cy = center
    tx, ty = translate
    a, b, c, d = math.cos(rot), -math.sin(rot), math.sin(rot), math.cos(rot)
    m = [d / scale, -b / scale, 0.0, -c / scale, a / scale, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
    m[2] += cx
    m[5] += cy
    return m


def affine_nearest(img: np.ndarray, matrix) -> np.ndarray:
    """``PIL.Image.transform(size, AFFINE, matrix, NEAREST)`` on uint8 (H, W[, C]); fill 0.

    Pillow samples output pixel (x, y) at ``floor(M @ (x + 0.5, y + 0.5, 1))`` in 16.16 fixed
    point (``affine_fixed`` in Geometry.c); this does the same integer arithmetic.
    (Pillow takes another path when the matrix has no rotation at all, a[1] == a[3] == 0.)
    """
    h, w = img.shape[:2]

    def fix(v: float) -> int:
        return math.floor(v * 65536.0 + 0.5)

    a0, a1, a3, a4 = fix(matrix[0]), fix(matrix[1]), fix(matrix[3]), fix(matrix[4])
    a2 = fix(matrix[2] + matrix[0] * 0.5 + matrix[1] * 0.5)
    a5 = fix(matrix[5] + matrix[3] * 0.5 + matrix[4] * 0.5)
    if max(h, w) > 32000:
        raise ValueError(f"affine_nearest supports images up to 32000 px, got {w}x{h}")
    bound = abs(a2) + abs(a5) + (abs(a0) + abs(a1) + abs(a3) + abs(a4)) * max(h, w)
    dt = np.int32 if bound < 2**31 else np.int64  # int32 is several times faster here
    xs = np.arange(w, dtype=dt)
    ys = np.arange(h, dtype=dt)[:, None]
    xin = (dt(a2) + ys * dt(a1) + xs * dt(a0)) >> 16  # Pillow's accumulated sums, exactly
    yin = (dt(a5) + ys * dt(a4) + xs * dt(a3)) >> 16
    # Gather with OpenCV: integer (x, y) maps (int16, clipped so outside stays outside) -> 0.
    xy = np.stack([np.clip(xin, -1, w), np.clip(yin, -1, h)], axis=-1).astype(np.int16)
    out = cv2.remap(img, xy, None, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.reshape(img.shape)


def random_affine_params(rng: np.random.Generator, cfg: AugmentConfig, w: int, h: int):
    """torchvision ``RandomAffine.get_params``: (angle, (tx, ty), scale)."""
    angle = rng.uniform(-cfg.degrees, cfg.degrees)
    tx = int(round(rng.uniform(-cfg.translate[0] * w, cfg.translate[0] * w)))
    ty = int(round(rng.uniform(-cfg.translate[1] * h, cfg.translate[1] * h)))
    scale = rng.uniform(*cfg.scale)
    return angle, (tx, ty), scale


def erasing_box(rng: np.random.Generator, cfg: AugmentConfig, h: int, w: int):
    """torchvision ``RandomErasing.get_params``: (top, left, height, width) or None (no fit)."""
    area = h * w
    log_ratio = (math.log(cfg.erase_ratio[0]), math.log(cfg.erase_ratio[1]))
    for _ in range(10):
        erase_area = area * rng.uniform(*cfg.erase_scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        eh = int(round(math.sqrt(erase_area * aspect)))
        ew = int(round(math.sqrt(erase_area / aspect)))
        if not (eh < h and ew < w):
            continue
        return int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1)), eh, ew
    return None


def augment_uint8(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Flip, then (with probability affine_p) random affine: uint8 (S, S, 3) -> same shape."""
    if rng.random() < cfg.hflip:
        img = img[:, ::-1]
    if rng.random() < cfg.affine_p:
        h, w = img.shape[:2]
        angle, translate, scale = random_affine_params(rng, cfg, w, h)
        img = affine_nearest(img, inverse_affine_matrix((w * 0.5, h * 0.5), angle, translate, scale))
    return np.ascontiguousarray(img)


def random_erase_box(rng: np.random.Generator, cfg: AugmentConfig, h: int, w: int):
    """``RandomErasing``'s draws: with probability erase_p a box (top, left, height, width) of
    an (h, w) image, else None (also when no box fits)."""
    if rng.random() < cfg.erase_p:
        return erasing_box(rng, cfg, h, w)
    return None


def random_erase(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """With probability erase_p, set a random box of the normalized float (S, S, 3) image to
    erase_value (in place; returned)."""
    box = random_erase_box(rng, cfg, x.shape[0], x.shape[1])
    if box is not None:
        i, j, eh, ew = box
        x[i:i + eh, j:j + ew] = cfg.erase_value
    return x
