"""Process-level settings that make XLA:CPU fast; call before JAX creates its CPU client.

1. One CPU device per core, for inference. XLA:CPU runs its own loop fusions (activations,
   depthwise convolutions, batch norm) on one thread; only library convolutions and matmuls use
   the intra-op pool. With one JAX CPU device per core, `make_forward` splits each batch over the
   devices and every op runs on all cores (`jax_num_cpu_devices`; left alone if `XLA_FLAGS`
   already asks for a device count). Training commands keep one device, which was faster for
   the train step. GPU/TPU devices are unaffected.

2. Warm memory. XLA:CPU allocates each run's outputs and temporaries with `malloc`. glibc
   serves allocations of more than 32 MiB, and any large one from a thread's own arena, with a
   fresh `mmap` that is unmapped on free, so every run page-faults its activations in again: a
   new 154 MB output costs ~110 ms of faults on top of ~20 ms of memory traffic (measured here;
   see `hsemo_jax/bench/NOTES.md`). `keep_freed_memory()` makes glibc serve large blocks from
   the main heap and keep them when freed, so the next run reuses warm pages. The process's
   resident memory then stays at its peak, which is what a long inference or training job wants.

3. Compiled programs kept between runs: JAX's persistent compilation cache, in
   `<cache>/xla/<CPU key>/` (`hsemo_jax.paths.cache_dir()`; the key hashes the CPU's feature
   flags, as XLA:CPU compiles for the host's, so a cache folder shared by other machines is not
   reused), at most 2 GiB (least recently used entries go first). `predict` on the bundled clip
   with a B0 took 12.9-13.7 s compiling afresh and 7.9-8.0 s from the cache (this CPU, wall
   clock, three interleaved runs each): most of a short run is compiling the device program. A `JAX_COMPILATION_CACHE_DIR` the user set is kept.

The command-line entry point calls `configure()`; library users may call it right after
`import jax`. `HSEMO_JAX_KEEP_MEMORY=0` leaves the allocator alone, `HSEMO_JAX_CPU_DEVICES=N`
sets the device count (1: no splitting), `HSEMO_JAX_COMPILATION_CACHE=0` compiles afresh in each run.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import platform
import sys

from hsemo_jax.paths import cache_dir

# glibc <malloc.h> mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_configured = False


def keep_freed_memory() -> bool:
    """Keep freed large blocks in glibc's main heap (Linux/glibc only). True if applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    # One arena: other threads' arenas fall back to mmap for big blocks whatever the settings.
    ok = mallopt(_M_ARENA_MAX, 1) == 1
    ok &= mallopt(_M_MMAP_MAX, 0) == 1  # never mmap: large blocks come from the heap
    ok &= mallopt(_M_TRIM_THRESHOLD, -1) == 1  # and are never returned on free (-1: SIZE_MAX)
    return bool(ok)


def cpu_core_count() -> int:
    """Cores this process may run on (its CPU affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def use_cpu_devices(n: int) -> bool:
    """Ask JAX for `n` CPU devices. False if XLA_FLAGS already decides or JAX already started."""
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return False
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", max(1, n))
    except RuntimeError:  # backends already initialized: keep what the process has
        return False
    return True


def cpu_signature() -> str:
    """What compiled CPU code depends on: machine and, on Linux, the CPU's feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


COMPILATION_CACHE_BYTES = 2 << 30


def use_compilation_cache() -> bool:
    """Keep compiled programs on disk between runs (point 3 above). False if the user chose a folder
    (`JAX_COMPILATION_CACHE_DIR`) or turned it off (`HSEMO_JAX_COMPILATION_CACHE=0`)."""
    import jax

    if os.environ.get("HSEMO_JAX_COMPILATION_CACHE", "1") == "0" or jax.config.jax_compilation_cache_dir:
        return False
    key = hashlib.sha256(cpu_signature().encode()).hexdigest()[:16]
    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla" / key))
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_BYTES)
    return True


def configure(*, split_cpu: bool = True) -> None:
    """Apply the settings once per process, before JAX runs anything. `split_cpu=False` keeps one
    CPU device: training steps ran 2x slower split over the 2 cores here (NOTES.md)."""
    global _configured
    if _configured:
        return
    _configured = True
    if os.environ.get("HSEMO_JAX_KEEP_MEMORY", "1") != "0":
        keep_freed_memory()
    default = cpu_core_count() if split_cpu else 1
    use_cpu_devices(int(os.environ.get("HSEMO_JAX_CPU_DEVICES", default)))
    use_compilation_cache()


# XLA:CPU sends convolutions and matmuls to YNNPACK by default (jax 0.10); its kernels are slower
# here than XLA's own Eigen ones for every backbone (e.g. MobileFaceNet 63.6 vs 39.1 img/s at
# batch 1, see hsemo_jax/bench/NOTES.md), so compiled CPU programs opt out. XLA's loop fusions
# prefer 256-bit vectors by default; on AVX-512 machines 512-bit ones ran B0 9-12% faster (a
# preference only: machines without AVX-512 keep their widest vectors).
_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_prefer_vector_width": 512}


@functools.lru_cache(maxsize=None)
def compiler_options(backend: str | None = None) -> dict:
    """`jax.jit(..., compiler_options=...)` for the fastest programs on `backend` (default: JAX's
    default backend); empty off CPU, or if this jaxlib does not know the options."""
    import jax

    if (backend or jax.default_backend()) != "cpu":
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=_CPU_COMPILER_OPTIONS).lower(1.0).compile()
    except Exception:  # option renamed or removed in another jaxlib
        return {}
    return dict(_CPU_COMPILER_OPTIONS)
