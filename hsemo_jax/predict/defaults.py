"""The detector names and default settings of `predict`, importable without JAX or OpenCV, so that
`hsemo-jax predict --help` shows them without loading either."""
from __future__ import annotations

from hsemo_jax.models import registry

DETECTORS = ("haar", "yunet", *registry.DETECTORS, "mtcnn", "none")
DETECT_WIDTH = 960  # frames wider than this are shrunk for detection (boxes mapped back)
MIN_DETECT_SIZE = 32  # px: the least --detect-size (BlazeFace's finer view's short side)
HOST_BLAZEFACE_MAX_FACES = 16  # faces per frame BlazeFace keeps on the host path (the device program: 8)
DETECT_EVERY = 5  # video frames per full-frame face search (tracked faces are followed between)
# frames per device program (BlazeFace), faces per forward (other detectors). On the 2-core CPU 8
# ran predict as fast per frame as 16 (24.1 and 23.6 frames/s at 720p) and a short clip pads less
BATCH_SIZE = 8
