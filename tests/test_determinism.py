"""The CPU kernels (ops/cpu_kernels) are deterministic: the same inputs give bit-identical
outputs on every call and with any number of threads (every reduction split over the pool sums
fixed, shape-given chunks and merges them in a fixed order), so that two runs of a training config
end bit-identical, as the training README promises for a SIGKILLed and rerun run."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from hsemo_jax.ops import cpu_kernels as ck

REPO = Path(__file__).resolve().parents[1]
CALLS = 20


@pytest.fixture(scope="module", autouse=True)
def kernels():
    """Build the kernels; skip only when they cannot be built (a skip fails under CI=true)."""
    if not ck.available():
        pytest.skip("the CPU kernels cannot be built here (no compiler, not x86-64 with AVX2, or off)")


def _f32(rng, *shape, scale=1.0, shift=0.0):
    return jnp.asarray(rng.standard_normal(shape) * scale + shift, jnp.float32)


def _cases():
    """name -> (jitted function, its arguments): every kernel, on shapes that the pool splits (many
    images, many rows; a depthwise gradient's images outnumber the threads of a 16-core host)."""
    rng = np.random.default_rng(0)
    n, h, w, c = 24, 28, 28, 64
    x = _f32(rng, n, h, w, c)
    kern = _f32(rng, 3, 3, c)
    sc, sh = _f32(rng, c, scale=0.3, shift=1.0), _f32(rng, c, scale=0.2)
    g = _f32(rng, n, h, w, c)
    g2 = _f32(rng, n, h // 2, w // 2, c)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    m = _f32(rng, n * h * w, c, scale=3.0, shift=50.0)  # a large mean, as batch norm's inputs have
    gm = _f32(rng, n * h * w, c)
    xin = _f32(rng, 4, 28, 28, 24)
    w_kn = _f32(rng, 24, c, scale=0.2)
    stem = _f32(rng, n, 57, 57, 3)
    return {
        "depthwise_grad": (lambda xp, g, k: ck.depthwise_grad(xp, g, k, stride=1, pt=1, pl=1, in_hw=(h, w)),
                           (xp, g, kern)),
        "depthwise_grad_stride2": (lambda xp, g, k: ck.depthwise_grad(xp, g, k, stride=2, pt=1, pl=1,
                                                                      in_hw=(h, w)), (xp, g2, kern)),
        "depthwise_grad_silu": (lambda x, s, b, g, k: ck.depthwise_grad_silu(x, s, b, g, k, stride=1, pt=1, pl=1),
                                (x, sc, sh, g, kern)),
        "channel_moments": (ck.channel_moments, (m,)),
        "channel_grad_sums": (ck.channel_grad_sums, (gm, m, jnp.asarray(np.asarray(m).mean(0)))),
        "fused_depthwise": (lambda x, k, a, b, s, t: ck.fused_depthwise(
            x, k, a, b, s, t, stride=1, pt=1, pl=1, out_hw=(h, w), in_act=True, out_act=True),
            (x, kern, sc, sh, sc, sh)),
        "expand_depthwise": (lambda x, we, a, b, k, s, t: ck.expand_depthwise(
            x, we, a, b, k, s, t, stride=2, pt=0, pl=0, out_hw=(14, 14), out_act=True),
            (xin, w_kn, sc, sh, kern, sc, sh)),
        "pointwise": (lambda x, w: ck.pointwise(x, w, act="silu"), (m[:4096, :24] / 50, w_kn)),
        "conv_act": (lambda x, k, s, b: ck.conv_act(x, k, s, b, stride=2, silu=True),
                     (stem, _f32(rng, 3, 3, 3, 32), _f32(rng, 32), _f32(rng, 32))),
    }


CASES = list(_cases().keys())


def _run(name):
    fn, args = _cases()[name]
    fn = jax.jit(fn)
    return [np.asarray(a) for a in jax.tree.leaves(fn(*args))], fn, args


@pytest.mark.parametrize("name", CASES)
def test_kernel_is_bit_identical_over_calls(name):
    first, fn, args = _run(name)
    assert all(np.isfinite(a).all() for a in first)
    for i in range(CALLS):
        again = [np.asarray(a) for a in jax.tree.leaves(fn(*args))]
        for a, b in zip(first, again):
            assert np.array_equal(a, b), f"{name}: call {i + 2} differs from the first " \
                f"(max |diff| {np.abs(a - b).max():.3g})"


_ONE_THREAD = """
import os, sys
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before XLA sizes its thread pool
import numpy as np
sys.path.insert(0, sys.argv[1])
import test_determinism as t
assert t.ck.available()
out = {}
for name in t.CASES:
    for i, a in enumerate(t._run(name)[0]):
        out[f"{name}/{i}"] = a
np.savez(sys.argv[2], **out)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity (Linux)")
def test_kernels_give_the_same_bits_on_one_thread(tmp_path):
    """The work is split by the problem's shape, not by the pool's size: a process held to one
    core gives the bits this one (all its cores) gives."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("this process has one core already")  # nothing to compare
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run([sys.executable, "-c", _ONE_THREAD, str(Path(__file__).parent), str(tmp_path / "one.npz")],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp_path / "one.npz") as one:
        for name in CASES:
            for i, a in enumerate(_run(name)[0]):
                b = one[f"{name}/{i}"]
                assert np.array_equal(a, b), f"{name} output {i}: one thread differs " \
                    f"(max |diff| {np.abs(a - b).max():.3g})"


# ----------------------------------------------------------------------------------------------
# two pretraining runs (MobileFaceNet: depthwise gradients and batch norm statistics) end alike
# ----------------------------------------------------------------------------------------------
SMOKE = REPO / "hsemo_jax" / "train" / "configs" / "pretrain_smoke_synthetic.toml"
STEPS = 4
BATCH = 8  # the smoke config's 32 would make the steps most of the time; any batch exercises the same kernels


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    """A small synthetic AffectNet build (the smoke config's kind of dataset)."""
    from data_fixtures import synthetic_affectnet_build

    return synthetic_affectnet_build(tmp_path_factory.mktemp("affectnet"), train=64, val_per_class=1)


def _start_pretrain(out: Path, data: Path) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.pop(ck.ENV, None)  # the kernels on
    cmd = [sys.executable, "-m", "hsemo_jax.cli", "pretrain", str(SMOKE), "--out", str(out), "--train", str(data),
           "--set", "data.workers=0", "--set", f"train.steps={STEPS}", "--set", f"train.batch_size={BATCH}", "--set", "train.log_every=1", "--set", "train.progress=false",
           "--set", "data.val=", "--set", "checkpoint.save_every=0", "--set", "checkpoint.async_save=false",
           # no event file: tensorboardX imports torch (2-3 s per run); tested in test_train_checkpoint.py
           "--set", "train.tensorboard=false"]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish_pretrain(proc: subprocess.Popen, out: Path):
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    with open(out / "metrics.csv") as f:
        rows = {int(r["step"]): (r["loss"], r["grad_norm"]) for r in csv.DictReader(f) if r["loss"]}
    from hsemo_jax.checkpoint import load_model
    from flax import nnx

    params = {"/".join(map(str, k)): np.asarray(v) for k, v in
              nnx.to_flat_state(nnx.state(load_model(out / "model")))}
    return rows, params


def test_two_pretrain_runs_are_bit_identical(tmp_path, smoke_data):
    """The two runs at once, each compiling its own program (no shared compilation cache): XLA
    compiles on one thread, so on two cores the second run adds little time; and the runs' thread
    pools compete for the cores, which must not change a bit either."""
    procs = {name: _start_pretrain(tmp_path / name, smoke_data) for name in ("a", "b")}
    try:
        (rows_a, params_a), (rows_b, params_b) = [_finish_pretrain(p, tmp_path / name) for name, p in procs.items()]
    finally:
        for p in procs.values():  # no-op once ended; a failed or hung run must not outlive the test
            p.kill()
            p.wait()
    assert sorted(rows_a) == list(range(1, STEPS + 1))
    assert rows_a == rows_b  # losses and gradient norms, every step, as written (repr of float32)
    assert params_a.keys() == params_b.keys() and params_a
    for k, a in params_a.items():
        assert np.array_equal(a, params_b[k]), f"{k} differs"
