"""Where hsemo-jax keeps files between runs (a leaf module: imports nothing of the project)."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "HSEMO_JAX_CACHE"


def cache_dir() -> Path:
    """Root of the cache: `$HSEMO_JAX_CACHE`, else `~/.cache/hsemo-jax` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hsemo-jax"
