"""tpu_scripts/ --dry-run: prints the gcloud commands as runnable shell lines and never calls gcloud
(a `gcloud` on PATH that records its calls stays silent); no network, no gcloud installed needed."""
import os
import shlex
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "tpu_scripts"
CONFIG = "hsemo_jax/train/configs/pretrain_enet_b0_affectnet_tpu.toml"


@pytest.fixture
def env(tmp_path):
    """PATH with a fake gcloud that records any call in tmp_path/called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gcloud"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'called'}\n")
    fake.chmod(0o755)
    e = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    e.update(PATH=f"{bin_dir}:{e['PATH']}", REPO_URL="https://example.com/hsemo-jax.git", TPU_TYPE="v5litepod-8",
             TPU_ZONE="us-west4-a")
    return e


def _run(env, script, *args, check=True):
    return subprocess.run(["bash", str(SCRIPTS / script), *args], env=env, capture_output=True, text=True,
                          timeout=30, check=check)


def test_pretrain_dry_run_prints_create_install_and_launch_without_calling_gcloud(env, tmp_path):
    out = _run(env, "pretrain.sh", "--dry-run", "--data", "gs://bucket/tfds/affectnet", "--out", "/home/me/runs/b0",
               "--create", "--install", "--", "--set", "train.epochs=1").stdout
    assert not (tmp_path / "called").exists(), "--dry-run called gcloud"
    commands = [shlex.split(line) for line in _logical_lines(out)]
    assert [c[:5] for c in commands] == [["gcloud", "compute", "tpus", "tpu-vm", "create"],
                                         ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
                                         ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    create, install, launch = commands
    assert create[5:] == ["hsemo-pod", "--zone", "us-west4-a", "--accelerator-type", "v5litepod-8", "--version",
                          "tpu-ubuntu2204-base"]
    assert "--worker=all" in install and "git clone -q https://example.com/hsemo-jax.git" in install[-1]
    remote = shlex.split(launch[launch.index("--command") + 1])
    assert remote[:3] == ["cd", "hsemo-jax", "&&"]
    assert remote[3:] == ["hsemo-jax", "pretrain", CONFIG, "--train", "gs://bucket/tfds/affectnet", "--val",
                          "gs://bucket/tfds/affectnet", "--out", "/home/me/runs/b0", "--set", "train.epochs=1",
                          "--set", "distributed.initialize=true"]


def test_dry_run_lines_are_the_commands_that_would_run(env, tmp_path):
    """Run the printed line with a gcloud that records its arguments: the same as a real run's."""
    args = ["--data", "gs://b/d", "--out", "/runs/it's mine", "--config", "my config.toml"]
    printed = _run(env, "pretrain.sh", "--dry-run", *args).stdout
    subprocess.run(["bash", "-c", printed], env=env, check=True, timeout=30)
    replayed = (tmp_path / "called").read_text()
    (tmp_path / "called").unlink()
    _run(env, "pretrain.sh", *args)  # a real run: calls the fake gcloud
    assert (tmp_path / "called").read_text() == replayed


def test_bad_arguments_are_refused_before_any_gcloud_call(env, tmp_path):
    r = _run(env, "pretrain.sh", "--data", "affectnet", "--out", "/runs/x", check=False)
    assert r.returncode == 2 and "expected a gs:// dataset directory" in r.stderr
    r = _run(env, "pretrain.sh", "--dry-run", "--data", "gs://b/d", check=False)
    assert r.returncode == 2 and "usage:" in r.stderr
    del env["REPO_URL"]
    r = _run(env, "delete.sh", "--dry-run", check=False)
    assert r.returncode != 0 and "REPO_URL" in r.stderr
    assert not (tmp_path / "called").exists()


def test_every_script_has_a_dry_run(env, tmp_path):
    for script, extra in (("create.sh", []), ("install.sh", []), ("delete.sh", []),
                          ("launch.sh", ["train-head", "f.npz", "--out", "r"])):
        out = _run(env, script, "--dry-run", *extra).stdout
        assert out.startswith("gcloud compute tpus tpu-vm "), script
    assert not (tmp_path / "called").exists()


def _logical_lines(text: str) -> list[str]:
    """Split shell output into commands: a newline inside quotes continues the command."""
    lines, current = [], ""
    for line in text.splitlines(keepends=True):
        current += line
        try:
            shlex.split(current)
        except ValueError:  # an open quote: the command goes on
            continue
        if current.strip():
            lines.append(current)
        current = ""
    return lines
