"""`hsemo-jax train-head`: a failed start leaves nothing behind, only the trained tasks are recorded
and reported, the final metrics are kept in the run, each command describes its own config fields."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from hsemo_jax import cli
from hsemo_jax.errors import InputError
from train_fixtures import feature_data

QUICK = ["--set", "train.steps=3", "--set", "train.batch_size=32", "--set", "train.progress=false",
         "--set", "train.tensorboard=false", "--set", "checkpoint.async_save=false"]


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    d = tmp_path_factory.mktemp("head_features")
    np.savez(d / "train.npz", **feature_data(256, d=6, seed=0, missing=0.2))
    np.savez(d / "val.npz", **feature_data(96, d=6, seed=1, missing=0.2))
    np.savez(d / "narrow.npz", **feature_data(96, d=3, seed=1))
    return d


def test_a_failed_start_leaves_nothing_and_the_corrected_command_runs(features, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train-head", str(features / "train_typo.npz"), "--out", str(run), *QUICK]) == 2
    assert "train_typo.npz" in capsys.readouterr().err and not run.exists()
    assert cli.main(["train-head", str(features / "train.npz"), "--val", str(features / "narrow.npz"),
                     "--out", str(run), *QUICK]) == 2
    assert "feature columns" in capsys.readouterr().err and not run.exists()
    # a batch larger than a head's training rows is found before RUN/ is written too, so the
    # corrected command is not refused as a run with a different config
    assert cli.main(["train-head", str(features / "train.npz"), "--out", str(run), *QUICK,
                     "--set", "train.batch_size=4096"]) == 2
    assert "train.batch_size: 4096 is larger than the" in capsys.readouterr().err and not run.exists()
    assert cli.main(["train-head", str(features / "train.npz"), "--out", str(run), *QUICK]) == 0
    assert (run / "config.json").is_file()


def test_only_the_trained_tasks_are_recorded_reported_and_used(features, tmp_path, capsys):
    from hsemo_jax.predict.pipeline import load_au_head

    run = tmp_path / "va_only"
    assert cli.main(["train-head", str(features / "train.npz"), "--val", str(features / "val.npz"),
                     "--tasks", "va", "--out", str(run), *QUICK]) == 0
    shown = capsys.readouterr().out
    assert "CCC_V" in shown and "P_EXPR" not in shown and "P_AU" not in shown and "P_MTL" not in shown, shown
    assert json.loads((run / "head.json").read_text())["tasks"] == ["va"]
    final = json.loads((run / "metrics_final.json").read_text())
    assert final["tasks"] == ["va"] and {"P_VA", "CCC_V", "CCC_A"} <= set(final["validation"])
    assert not any(k.startswith(("P_EXPR", "EXPR", "P_AU", "loss_expr", "loss_au")) for k in final["validation"])
    model = SimpleNamespace(name="backbone", outputs=("s",) * 10)
    with pytest.raises(InputError, match=r"va_only: .*trained for va only.*AU"):
        load_au_head(str(run), model)


def test_every_task_reports_p_mtl(features, tmp_path, capsys):
    run = tmp_path / "all"
    assert cli.main(["train-head", str(features / "train.npz"), "--val", str(features / "val.npz"),
                     "--out", str(run), *QUICK]) == 0
    assert "P_MTL" in capsys.readouterr().out
    final = json.loads((run / "metrics_final.json").read_text())
    assert final["tasks"] == ["expr", "va", "au"] and "P_MTL" in final["validation"]


@pytest.mark.parametrize("command, own, foreign", [
    ("train-head", ("head.tasks", "data.train", "loss.l2", "optim.lr", "checkpoint.keep"),
     ("model.", "distill.", "data.hflip", "data.synthetic_rows", "data.augment", "data.workers",
      "loss.attention_weight", "optim.trainable")),
    ("pretrain", ("model.arch", "data.augment", "data.sampling", "data.workers", "loss.attention_weight",
                  "optim.trainable", "optim.lr_scaling"),
     ("head.", "distill.", "loss.l2 ", "data.hflip", "data.synthetic_rows")),
    ("distill", ("distill.temperature", "optim.lr", "data.val"), ("head.", "model.", "data.train ")),
])
def test_describe_config_lists_the_commands_own_fields(capsys, command, own, foreign):
    assert cli.main([command, "--describe-config"]) == 0
    text = capsys.readouterr().out
    keys = [line.split(" = ")[0] + " " for line in text.splitlines() if not line.startswith(" ")]
    for key in own:
        assert any(k.startswith(key) for k in keys), key
    for key in foreign:
        assert not any(k.startswith(key) for k in keys), key
    if command == "train-head":  # the values of its default config (the paper's), not the generic defaults
        assert "train.batch_size = 512" in text and "optim.name = 'keras_adam'" in text


@pytest.mark.parametrize("argv", [
    ["pretrain", "hsemo_jax/train/configs/pretrain_smoke_synthetic.toml", "--train", "{typo}"],
    ["distill", "hsemo_jax/train/configs/distill_smoke_synthetic.toml", "--set", "distill.expr={typo}"],
])
def test_the_other_training_commands_leave_nothing_when_their_data_is_missing(tmp_path, capsys, argv):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    typo = tmp_path / "trian.npz"
    argv = [str(repo / a) if a.endswith(".toml") else a.format(typo=typo) for a in argv]
    assert cli.main([*argv, "--out", str(tmp_path / "run")]) == 2
    assert "trian.npz" in capsys.readouterr().err and not (tmp_path / "run").exists()
