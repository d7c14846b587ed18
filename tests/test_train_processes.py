"""Real processes: `hsemo-jax train-head` and `hsemo-jax pretrain` killed with SIGKILL mid-run and
restarted end with the same result as an uninterrupted run; two processes (jax.distributed on
127.0.0.1) equal one process."""
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
        "--set", "head.epochs_va=1", "--set", "head.epochs_au=2",
        # no event file: tensorboardX imports torch (2-3 s per process); tested in test_train_checkpoint.py
        "--set", "train.tensorboard=false"]
DEVICES = 2  # the reference and the killed run: 1 process x 2 CPU devices; the distributed run: 2 x 1


def _env(cache: Path, devices: int = DEVICES, **extra) -> dict:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **extra)
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


# ----------------------------------------------------------------------------------------------
# hsemo-jax pretrain: a TFDS build read through grain (tiny_cnn: compiles in seconds)
# ----------------------------------------------------------------------------------------------
PRETRAIN_TOML = """
[model]
arch = "tiny_cnn"
num_outputs = 10
[data]
augment = "ddamfn"
sampling = "class_balanced"
[loss]
class_weights = "none"
[optim]
lr = 3e-3
[train]
batch_size = 8
epochs = 4
log_every = 1
progress = false
tensorboard = false
[checkpoint]
save_every = 3
"""
PRETRAIN_STEPS = 32  # 64 training examples / 8 per step x 4 epochs; validation after each epoch


@pytest.fixture(scope="module")
def pretrain_data(workdir):
    from data_fixtures import synthetic_affectnet_build

    data = synthetic_affectnet_build(workdir / "affectnet", train=64, val_per_class=2, seed=3)
    (workdir / "pretrain.toml").write_text(PRETRAIN_TOML)
    return data


def _pretrain_cmd(workdir: Path, data: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "hsemo_jax.cli", "pretrain", str(workdir / "pretrain.toml"), "--train", str(data),
            "--val", str(data), "--out", str(out), *extra]


def _final_state(run: Path) -> dict:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore((run / "checkpoints" / "latest" / str(PRETRAIN_STEPS) / "state").absolute())
    import jax

    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(state)[0]}


def _rows(csv_path: Path) -> tuple[dict, dict]:
    """(step -> training loss, step -> validation accuracy) of a metrics.csv."""
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    return ({int(r["step"]): r["loss"] for r in rows if r["loss"]},
            {int(r["step"]): r["val_accuracy"] for r in rows if r.get("val_accuracy")})


@pytest.fixture(scope="module")
def pretrain_reference(workdir, pretrain_data):
    """An uninterrupted 1-process x 2-device run, grain in this process (data.workers = 0)."""
    run = workdir / "pretrain_reference"
    subprocess.run(_pretrain_cmd(workdir, pretrain_data, run), env=_env(workdir / "cache_pt"), cwd=REPO,
                   check=True, capture_output=True, timeout=300)
    return run


@pytest.mark.parametrize("workers", [0, 2])
def test_pretrain_sigkill_then_rerun_resumes_bit_identical(workdir, pretrain_data, pretrain_reference, workers):
    """SIGKILL after the first checkpoints (grain iterator state saved in the same orbax step as the
    train state), rerun: the same final train state, bit for bit, and the same per-step losses and
    validation accuracies as the uninterrupted in-process run; with 2 grain worker processes too
    (the batches do not depend on the worker count). The killed run's workers exit with it."""
    run = workdir / f"pretrain_killed_{workers}"
    cmd = _pretrain_cmd(workdir, pretrain_data, run, "--set", f"data.workers={workers}")
    env = _env(workdir / "cache_pt")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while not any(s >= 9 for s in _saved_steps(run)):  # mid-epoch 1, after the first validation
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "the run made no progress"
            time.sleep(0.02)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()  # no-op once killed; a failed wait above must not leave the run behind
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert max(_saved_steps(run)) < PRETRAIN_STEPS and not (run / "model").exists()
    assert (run / "checkpoints" / "latest" / str(max(_saved_steps(run))) / "iterator").is_dir()
    end = time.time() + 10
    while any(Path(f"/proc/{c}").exists() for c in children) and time.time() < end:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{c}").exists() and "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()
                   for c in children), "grain workers outlived the killed run"

    subprocess.run(cmd, env=env, cwd=REPO, check=True, capture_output=True, timeout=300)
    got, want = _final_state(run), _final_state(pretrain_reference)
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert _rows(run / "metrics.csv") == _rows(pretrain_reference / "metrics.csv")
    assert len(_rows(run / "metrics.csv")[1]) == 4  # validated once per epoch


def test_pretrain_two_processes_each_reading_its_shard_equal_one_process(workdir, pretrain_data, pretrain_reference):
    """2 processes x 1 CPU device, each reading its half of every global batch through grain, vs
    the 1 x 2 reference reading whole global batches: the same final parameters and statistics."""
    run = workdir / "pretrain_two_procs"
    port = _free_port()
    procs = []
    for pid in range(2):
        dist_args = ["--set", "distributed.initialize=true", "--set", f"distributed.coordinator_address=127.0.0.1:{port}",
                     "--set", "distributed.num_processes=2", "--set", f"distributed.process_id={pid}"]
        procs.append(subprocess.Popen(_pretrain_cmd(workdir, pretrain_data, run, *dist_args),
                                      env=_env(workdir / "cache_pt2", devices=1), cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    finally:
        for p in procs:  # a hung run must not outlive the test
            p.kill()
            p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    got, want = _final_state(run), _final_state(pretrain_reference)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    (losses, accuracy), (want_losses, want_accuracy) = _rows(run / "metrics.csv"), _rows(pretrain_reference / "metrics.csv")
    np.testing.assert_allclose([float(v) for v in losses.values()], [float(v) for v in want_losses.values()], rtol=1e-5)
    assert accuracy == want_accuracy  # validation: each process its half of the split, gathered
