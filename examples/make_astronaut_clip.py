"""Regenerate examples/astronaut.mp4: a short clip panning and zooming over NASA's public-domain
portrait of astronaut Eileen Collins (as shipped by scikit-image, `skimage.data.astronaut()`).

    pip install scikit-image && python examples/make_astronaut_clip.py
"""
from pathlib import Path

import cv2
import numpy as np


def frames(n: int = 48, size=(320, 240)):
    from skimage import data

    w, h = size
    img = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), (w, w))  # square portrait
    for i in range(n):
        t = i / (n - 1)
        scale = 1.0 + 0.35 * np.sin(np.pi * t)  # zoom in and out
        cx = w / 2 + 0.08 * w * np.cos(2 * np.pi * t)  # while circling around the face
        cy = 0.39 * w + 0.06 * w * np.sin(2 * np.pi * t)
        m = np.array([[scale, 0, w / 2 - scale * cx], [0, scale, h / 2 - scale * cy]])
        yield cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def write(path: Path, fps: float = 12.0, size=(320, 240)) -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for f in frames(size=size):
        vw.write(f)
    vw.release()
    return path


if __name__ == "__main__":
    print(write(Path(__file__).with_name("astronaut.mp4")))
