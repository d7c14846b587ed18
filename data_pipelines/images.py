"""Image file checks and OpenCV decode/encode, with the bad-image policy and its report.

Colour order: OpenCV decodes to BGR; ``decode_rgb`` returns RGB, the order the models expect.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from hsemo_jax.errors import InputError

POLICIES = ("skip", "error")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class BadImage(Exception):
    """A missing, unreadable or corrupt image (or an empty crop); ``reason`` is a short label."""

    def __init__(self, reason: str, name: str):
        super().__init__(f"{name}: {reason}")
        self.reason = reason
        self.name = name


def read_bytes(path: Path, name: str) -> bytes:
    """The file's bytes; BadImage('missing image' | 'unreadable image') otherwise."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BadImage("missing image", name) from None
    except OSError as e:
        raise BadImage(f"unreadable image ({e.strerror})", name) from None


def decode_bgr(data: bytes, name: str, *, ignore_orientation: bool = False) -> np.ndarray:
    """Encoded bytes -> uint8 BGR (H, W, 3). Truncated JPEGs (no end marker) count as corrupt.

    ``cv2.IMREAD_COLOR`` applies EXIF orientation like ``cv2.imread`` (what HSEmotion's
    AffectNet cropping used); ignore_orientation=True matches PIL (torchvision ImageFolder).
    """
    if data[:2] == b"\xff\xd8" and _jpeg_truncated(data):
        raise BadImage("corrupt image (truncated JPEG)", name)
    flags = cv2.IMREAD_COLOR | (cv2.IMREAD_IGNORE_ORIENTATION if ignore_orientation else 0)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None or img.size == 0:
        raise BadImage("corrupt image (cannot decode)", name)
    return img


def _jpeg_truncated(data: bytes) -> bool:
    """No end-of-image marker after the last start-of-scan marker (0xFFDA, 0xFFD9 cannot occur
    inside entropy-coded data, and an EXIF thumbnail's markers come before the main scan)."""
    sos = data.rfind(b"\xff\xda")
    return sos < 0 or data.find(b"\xff\xd9", sos) < 0


def decode_rgb(data: bytes, name: str = "image") -> np.ndarray:
    """Encoded image bytes -> uint8 RGB (H, W, 3), EXIF orientation ignored (as PIL)."""
    return cv2.cvtColor(decode_bgr(data, name, ignore_orientation=True), cv2.COLOR_BGR2RGB)


def encode(bgr: np.ndarray, ext: str = ".jpg") -> bytes:
    """uint8 BGR -> encoded bytes with OpenCV defaults (JPEG quality 95), as ``cv2.imwrite``."""
    ok, buf = cv2.imencode(ext, bgr)
    if not ok:
        raise InputError(f"OpenCV could not encode a {bgr.shape} image as {ext}")
    return buf.tobytes()


@dataclass
class SkipLog:
    """Per-split counts of what a builder wrote and skipped, and why (names kept, capped)."""

    policy: str = "skip"
    max_names: int = 1000
    written: Counter = field(default_factory=Counter)
    skipped: dict = field(default_factory=lambda: defaultdict(Counter))
    names: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise InputError(f"bad-image policy must be one of {POLICIES}, got {self.policy!r}")

    def bad_image(self, split: str, err: BadImage, count: int = 1) -> None:
        """Apply the policy to a bad image (or a missing folder of `count` frames): raise
        InputError ('error') or record it ('skip')."""
        if self.policy == "error":
            raise InputError(f"{split}: {err.name}: {err.reason} (pass --on-bad-image skip to skip it)")
        self.skip(split, err.reason, err.name, count)

    def skip(self, split: str, reason: str, name: str, count: int = 1) -> None:
        """Record `count` examples left out for `reason` under `name` (whatever the policy)."""
        self.skipped[split][reason] += count
        names = self.names[split][reason]
        if len(names) < self.max_names:
            names.append(name)

    def report(self) -> dict:
        """{split: {"written": n, "skipped": n, "reasons": {reason: {"count", "names"}}}}."""
        out = {}
        for split in sorted(set(self.written) | set(self.skipped)):
            reasons = {r: {"count": c, "names": list(self.names[split][r])}
                       for r, c in sorted(self.skipped[split].items())}
            out[split] = {"written": self.written[split],
                          "skipped": sum(self.skipped[split].values()), "reasons": reasons}
        return out


def format_report(report: dict, max_names: int = 5) -> str:
    """One line per split: ``train: 10 written, 2 skipped (missing image: 1 [a.jpg], ...)``."""
    lines = []
    for split, r in report.items():
        line = f"{split}: {r['written']} written, {r['skipped']} skipped"
        if r["reasons"]:
            parts = []
            for reason, info in r["reasons"].items():
                names = info["names"][:max_names]
                more = ", ..." if info["count"] > len(names) else ""
                parts.append(f"{reason}: {info['count']} [{', '.join(names)}{more}]")
            line += " (" + "; ".join(parts) + ")"
        lines.append(line)
    return "\n".join(lines)
