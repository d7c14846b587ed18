"""The detector names and default settings of `predict`, importable without JAX or OpenCV, so that
`hsemo-jax predict --help` shows them without loading either."""
from __future__ import annotations

from hsemo_jax.models import registry

DETECTORS = ("haar", "yunet", *registry.DETECTORS, "mtcnn", "none")
DETECT_WIDTH = 960  # frames wider than this are shrunk for detection (boxes mapped back)
DETECT_EVERY = 5  # video frames per full-frame face search (tracked faces are followed between)
