"""Where hsemo-jax keeps files of its own: the cache root (downloads, converted models, kernels)."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "HSEMO_JAX_CACHE"


def cache_dir() -> Path:
    """Root of the cache: `$HSEMO_JAX_CACHE`, else `~/.cache/hsemo-jax` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hsemo-jax"
