"""Real processes: `hsemo-jax train-head` killed with SIGKILL mid-run and restarted ends with the same
head as an uninterrupted run; two processes (jax.distributed on 127.0.0.1) equal one process."""
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from train_fixtures import feature_data

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--mode", "separate", "--set", "train.batch_size=64", "--set", "checkpoint.save_every=25",
        "--set", "train.log_every=1", "--set", "train.progress=false", "--set", "head.epochs_expr=1",
        "--set", "head.epochs_va=1", "--set", "head.epochs_au=2"]
DEVICES = 2  # the reference and the killed run: 1 process x 2 CPU devices; the distributed run: 2 x 1


def _env(cache: Path, devices: int = DEVICES) -> dict:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return env


def _cmd(features: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "hsemo_jax.cli", "train-head", str(features), "--out", str(out), *ARGS, *extra]


def _head(run: Path) -> dict:
    with np.load(run / "head.npz") as z:
        return {k: z[k] for k in z.files}


def _losses(csv_path: Path) -> dict:
    with open(csv_path) as f:
        return {int(r["step"]): r["loss"] for r in csv.DictReader(f) if r["loss"]}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_processes")
    np.savez(d / "features.npz", **feature_data(4096, d=10, seed=0, missing=0.2))
    return d


@pytest.fixture(scope="module")
def reference(workdir):
    """An uninterrupted single-process run; also fills the compilation cache for the killed run."""
    run = workdir / "reference"
    subprocess.run(_cmd(workdir / "features.npz", run), env=_env(workdir / "cache"), cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    return run


def _saved_steps(run: Path) -> list[int]:
    d = run / "checkpoints" / "latest"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def test_sigkill_mid_run_then_restart_ends_with_the_uninterrupted_result(workdir, reference):
    run = workdir / "killed"
    cmd = _cmd(workdir / "features.npz", run)
    proc = subprocess.Popen(cmd, env=_env(workdir / "cache"), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        # kill once the second sub-run (VA) has a checkpoint: EXPR is done, VA is mid-way, AU not started
        while not any(s >= 25 for s in _saved_steps(run / "va")):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "the run made no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "head.npz").exists()  # written last: the run was stopped before its end
    assert max(_saved_steps(run / "expr")) == max(_losses(reference / "expr" / "metrics.csv"))  # EXPR finished

    subprocess.run(cmd, env=_env(workdir / "cache"), cwd=REPO, check=True, capture_output=True, timeout=300)
    got, want = _head(run), _head(reference)
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    for task in ("expr", "va", "au"):  # every step logged once, with the uninterrupted run's loss
        assert _losses(run / task / "metrics.csv") == _losses(reference / task / "metrics.csv")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(workdir, reference):
    """2 processes x 1 CPU device (jax.distributed, gloo) vs the 1 x 2 reference, EXPR sub-head."""
    run = workdir / "two_procs"
    port = _free_port()
    procs = []
    for pid in range(2):
        dist_args = ["--tasks", "expr", "--set", "distributed.initialize=true",
                     "--set", f"distributed.coordinator_address=127.0.0.1:{port}",
                     "--set", "distributed.num_processes=2", "--set", f"distributed.process_id={pid}"]
        procs.append(subprocess.Popen(_cmd(workdir / "features.npz", run, *dist_args),
                                      env=_env(workdir / "cache2", devices=1), cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    got, want = _head(run), _head(reference)
    for k in want:
        if k.startswith("expr/"):
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose([float(v) for v in _losses(run / "expr" / "metrics.csv").values()],
                               [float(v) for v in _losses(reference / "expr" / "metrics.csv").values()], rtol=1e-5)
