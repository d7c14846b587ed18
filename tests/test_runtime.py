"""Process settings for XLA:CPU (hsemo_jax/runtime.py) and multi-device inference."""
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from hsemo_jax import runtime
from hsemo_jax.models import registry
from hsemo_jax.models.inference import make_forward

_FAULTS = textwrap.dedent("""
    import ctypes, resource, sys
    from hsemo_jax import runtime
    if sys.argv[1] == "keep":
        assert runtime.keep_freed_memory()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 40 * 2**20  # above glibc's largest mmap threshold, like XLA's activations
    def faults():  # page faults of writing a fresh block, freed afterwards (one XLA run's temporaries)
        p = libc.malloc(size)
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ctypes.memset(p, 1, size)
        n = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0
        libc.free(p)
        return n
    faults()
    print(faults())
""")



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings are Linux-only")
def test_keep_freed_memory_reuses_pages_of_large_blocks():
    """Without the setting every new 40 MiB block is page-faulted in again; with it, reused."""
    counts = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        counts[mode] = int(out.stdout.split()[-1])
    pages = 40 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert counts["default"] > pages // 2
    assert counts["keep"] < pages // 20


_CACHED = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp
    from hsemo_jax import runtime
    runtime.configure()
    events = []
    jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
    y = jax.jit(lambda x: jnp.sin(x) * 2 + 1)(jnp.arange(8.0))
    print(json.dumps({"dir": jax.config.jax_compilation_cache_dir, "y": y.tolist(),
                      "hit": "/jax/compilation_cache/cache_hits" in events}))
""")


def test_compiled_programs_are_reused_by_the_next_run_from_a_folder_keyed_by_the_cpu(tmp_path):
    """JAX's persistent compilation cache under the project's cache folder (conftest turns it off
    for the suite's own processes); a folder the user chose, or HSEMO_JAX_COMPILATION_CACHE=0, wins."""
    import json

    env = {k: v for k, v in os.environ.items() if k != "HSEMO_JAX_COMPILATION_CACHE"}
    env |= {"HSEMO_JAX_CACHE": str(tmp_path / "cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

    def run(**extra):
        out = subprocess.run([sys.executable, "-c", _CACHED], env=env | extra, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.splitlines()[-1])

    first, second = run(), run()
    folder = tmp_path / "cache" / "xla"
    assert [p.name for p in folder.iterdir()] == [os.path.basename(first["dir"])]  # one CPU key
    assert first["dir"] == second["dir"] and any((folder / os.path.basename(first["dir"])).iterdir())
    assert (first["hit"], second["hit"]) == (False, True)
    assert first["y"] == second["y"]
    assert run(HSEMO_JAX_COMPILATION_CACHE="0")["dir"] is None
    assert run(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "mine"))["dir"] == str(tmp_path / "mine")


def test_compiler_options_only_on_cpu():
    assert runtime.compiler_options("cpu") == {"xla_cpu_experimental_ynn_fusion_type": "",
                                               "xla_cpu_prefer_vector_width": 512}
    assert runtime.compiler_options("gpu") == {}
    assert runtime.compiler_options("tpu") == {}


def test_cpu_device_count_is_left_to_xla_flags():
    # conftest asks for 8 devices through XLA_FLAGS, and JAX is already running
    assert not runtime.use_cpu_devices(2)
    assert jax.local_device_count() == 8


def test_make_forward_splits_divisible_batches_over_devices(calibrate):
    with jax.default_matmul_precision("float32"):
        # calibrated: at initialization the 8 noise images' scores span only 90x the tolerance (ptp 3.9e-5)
        model = calibrate(registry.build("mobilefacenet", 10), "mobilefacenet")
        x = np.random.default_rng(0).standard_normal((8, 112, 112, 3)).astype(np.float32)
        want = np.asarray(nnx.jit(lambda m, x: m(x))(model, x))  # one program (eager: op by op, 5x slower)
        assert np.ptp(want, axis=0).max() > 0.1 * np.abs(want).max()  # rows in the wrong place would fail
        forward = make_forward(model, with_features=True)
        feats, scores = forward(x)
        assert len(scores.sharding.device_set) == 8
        np.testing.assert_allclose(np.asarray(scores), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        odd = forward(x[:3])[1]  # not divisible: one device
        assert len(odd.sharding.device_set) == 1
        np.testing.assert_allclose(np.asarray(odd), want[:3], rtol=1e-5, atol=1e-5 * np.abs(want).max())
