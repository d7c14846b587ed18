"""JAX settings for tests."""
from __future__ import annotations

import contextlib
from pathlib import Path

import jax


@contextlib.contextmanager
def compilation_cache(path: Path):
    """A persistent compilation cache in `path` (every program, however quick to compile) for the
    duration: an XLA program compiled again in the same process, e.g. by a second `jax.jit` of the
    same function, is read back instead (test time only); the previous settings are put back."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: getattr(jax.config, n) for n in names}
    for n, v in zip(names, (str(path), 0, 0)):
        jax.config.update(n, v)
    cc.reset_cache()
    try:
        yield
    finally:
        for n, v in saved.items():
            jax.config.update(n, v)
        cc.reset_cache()
