"""Training configs, CLI wiring and input validation: bad input raises InputError naming the field."""
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from hsemo_jax import cli
from hsemo_jax.errors import InputError
from hsemo_jax.train import config as C
from hsemo_jax.train.data import BatchIterator, load_features
from hsemo_jax.train.runners import prepare_run_dir

CONFIGS = sorted((Path(C.__file__).parent / "configs").glob("*.toml"))


def test_learning_rate_scaling_rules():
    from hsemo_jax.optim import scaled_lr

    assert scaled_lr(1e-4, "none", 1024, 48) == 1e-4
    assert scaled_lr(1e-4, "linear", 1024, 256) == pytest.approx(4e-4)
    assert scaled_lr(1e-4, "sqrt", 1024, 256) == pytest.approx(2e-4)
    cfg = C.load_config(None, ["optim.lr=1e-4", "optim.lr_scaling=\"sqrt\"", "optim.lr_reference_batch=64",
                               "train.batch_size=128", "optim.grad_accum=2"])
    from hsemo_jax.train.runners import _optimizer

    _, schedule = _optimizer(cfg, total_steps=10, steps_per_epoch=10)
    assert float(schedule(0)) == pytest.approx(2e-4)  # effective batch 256 = 4 x 64
    with pytest.raises(InputError, match="optim.lr_scaling"):
        C.load_config(None, ["optim.lr_scaling=\"cube\""])


def tpu_header(path):
    return path.read_text().split("\n\n")[0]


def test_shipped_configs_are_valid_and_say_how_to_run_them():
    assert len(CONFIGS) >= 4
    for path in CONFIGS:
        cfg = C.load_config(path)
        header = path.read_text().split("\n\n")[0]
        assert "Run:" in header and "Expect" in header, path.name
        assert cfg.optim.lr > 0
    ddamfn = C.load_config(next(p for p in CONFIGS if "ddamfn" in p.name))
    assert (ddamfn.model.arch, ddamfn.loss.attention_weight, ddamfn.optim.schedule, ddamfn.optim.gamma) == \
        ("ddamfn", 0.1, "exponential", 0.6)
    assert (ddamfn.data.augment, ddamfn.data.sampling, ddamfn.loss.class_weights) == ("ddamfn", "class_balanced", "none")
    enet = C.load_config(next(p for p in CONFIGS if p.name == "pretrain_enet_b0_affectnet.toml"))
    assert (enet.data.augment, enet.train.batch_size, enet.optim.lr) == ("hsemotion", 48, 1e-4)  # spec §1a
    tpu = C.load_config(next(p for p in CONFIGS if p.name == "pretrain_enet_b0_affectnet_tpu.toml"))
    assert tpu.train.batch_size >= 1024 and tpu.train.batch_size % 8 == 0 and tpu.data.workers > 0
    assert "tpu_scripts/pretrain.sh" in tpu_header(next(p for p in CONFIGS if "_tpu" in p.name))
    head = C.load_config(next(p for p in CONFIGS if "head" in p.name))
    assert (head.optim.name, head.optim.eps, head.train.batch_size, head.loss.l2) == ("keras_adam", 1e-7, 512, 1 / 512)


def test_every_field_is_documented():
    for section in [C.Config] + [type(f()) for f in C.SECTIONS.values()]:
        for f in dataclasses.fields(section):
            if f.name not in C.SECTIONS:
                assert len(f.metadata.get("doc", "")) >= 10, f"{section.__name__}.{f.name}"
    text = C.describe()
    assert "optim.eps = 1e-08" in text and "train.compute_dtype = 'float32' [float32|bfloat16]" in text


@pytest.mark.parametrize("toml, field", [
    ("[optim]\nlr = \"fast\"", "optim.lr"),
    ("[optim]\nlr = -1.0", "optim.lr"),
    ("[optim]\nname = \"sgd\"", "optim.name"),
    ("[optim]\nlrr = 0.1", "optim.lrr"),
    ("[optimizer]\nlr = 0.1", "optimizer"),
    ("[train]\nbatch_size = 0", "train.batch_size"),
    ("[train]\nbatch_size = 1.5", "train.batch_size"),
    ("[train]\nhflip = true", "train.hflip"),
    ("[model]\narch = \"resnet50\"", "model.arch"),
    ("[head]\ntasks = [\"expr\", \"pose\"]", "head.tasks"),
    ("[data]\nhflip = \"yes\"", "data.hflip"),
    ("optim = 3", "optim"),
])
def test_bad_config_names_the_field(tmp_path, toml, field):
    path = tmp_path / "bad.toml"
    path.write_text(toml + "\n")
    with pytest.raises(InputError, match=field.replace(".", r"\.")) as e:
        C.load_config(path)
    assert str(path) in str(e.value)


def test_json_configs_overrides_and_parse_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"optim": {"lr": 0.01}, "train": {"steps": 5}}))
    cfg = C.load_config(path, ["optim.name=keras_adam", "run_dir=/tmp/x y", "head.tasks=[\"va\"]"])
    assert (cfg.optim.lr, cfg.optim.name, cfg.train.steps, cfg.run_dir, cfg.head.tasks) == \
        (0.01, "keras_adam", 5, "/tmp/x y", ["va"])
    with pytest.raises(InputError, match=r"optim\.b1"):
        C.load_config(path, ["optim.b1=-3"])
    (tmp_path / "broken.toml").write_text("[optim\nlr = 1")
    with pytest.raises(InputError, match="cannot parse"):
        C.load_config(tmp_path / "broken.toml")


def test_cli_reports_bad_config_field(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nepochs = -2\n")
    assert cli.main(["pretrain", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert cli.main(["train-head", "--describe-config"]) == 0
    assert "head.mode = 'separate'" in capsys.readouterr().out
    assert cli.main(["train-head", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "r")]) == 2
    assert "missing.npz" in capsys.readouterr().err


def test_feature_dataset_validation(tmp_path):
    x = np.zeros((6, 14), np.float32)
    np.savez(tmp_path / "ok.npz", x=x, expr=np.array([0, 1, -1, 7, 2, 3]), va=np.full((6, 2), -5.0),
             au=np.array([[0, 1] * 6] * 5 + [[-1] * 12]))
    d = load_features(tmp_path / "ok.npz")
    assert d["expr_mask"].tolist() == [True, True, False, True, True, True]
    assert not d["va_mask"].any() and d["au_mask"].tolist() == [True] * 5 + [False]
    np.savez(tmp_path / "badexpr.npz", x=x, expr=np.array([0, 1, 9, 7, 2, 3]))
    with pytest.raises(InputError, match=r"expr\[2\] = 9"):
        load_features(tmp_path / "badexpr.npz")
    np.savez(tmp_path / "nox.npz", expr=np.zeros(6))
    with pytest.raises(InputError, match="missing array 'x'"):
        load_features(tmp_path / "nox.npz")
    np.savez(tmp_path / "shape.npz", x=x, va=np.zeros((5, 2)))
    with pytest.raises(InputError, match="'va' has shape"):
        load_features(tmp_path / "shape.npz")
    with pytest.raises(InputError, match="fewer than one batch"):
        BatchIterator(d, 8)


def test_feature_files_that_are_damaged_or_hold_bad_values_are_one_line_errors(tmp_path):
    """A truncated or empty .npz was a BadZipFile / EOFError traceback; NaN features failed only after
    training, in the metrics; a labelled valence of 3 was trained on."""
    x = np.zeros((6, 14), np.float32)
    np.savez(tmp_path / "ok.npz", x=x, expr=np.arange(6))
    data = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.npz").write_bytes(b"")
    for name in ("truncated.npz", "empty.npz"):
        with pytest.raises(InputError, match=f"{name}: not a readable .npz archive"):
            load_features(tmp_path / name)
    bad = x.copy()
    bad[4, 3] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad, expr=np.arange(6))
    with pytest.raises(InputError, match=r"nan.npz: x\[4\] has a non-finite value"):
        load_features(tmp_path / "nan.npz")
    np.savez(tmp_path / "float_expr.npz", x=x, expr=np.array([0.0, 1.0, 2.7, 3.0, -1.0, 5.0]))
    with pytest.raises(InputError, match=r"float_expr.npz: expr\[2\] = 2.7 is not a class index"):
        load_features(tmp_path / "float_expr.npz")  # was truncated to class 2
    np.savez(tmp_path / "int_valued.npz", x=x, expr=np.array([0.0, 1.0, 2.0, 3.0, -1.0, 5.0]))
    assert load_features(tmp_path / "int_valued.npz")["expr_mask"].sum() == 5
    va = np.full((6, 2), -5.0)
    va[2] = [3.0, 0.5]
    np.savez(tmp_path / "va.npz", x=x, va=va)
    with pytest.raises(InputError, match=r"va.npz: va\[2\] = \[3.0, 0.5\] is outside \[-1, 1\]"):
        load_features(tmp_path / "va.npz")


def test_extracted_features_keep_the_sources_label_masks(tmp_path):
    """AffectNet's folder layout has no VA: va = 0 with va_mask False. train-head read extract-features
    output without the masks, so those rows were trained towards valence = arousal = 0."""
    from data_pipelines.features import FeatureWriter

    n = 4
    w = FeatureWriter(tmp_path / "feats", {"num_examples": n, "chunk_size": n})
    w.write_chunk(0, {"index": np.arange(n), "name": np.array([f"v/{i}.jpg" for i in range(n)]),
                      "embedding": np.ones((n, 3), np.float32), "scores": np.ones((n, 10), np.float32),
                      "expression": np.array([0, 1, 2, 3]), "expression_mask": np.array([True, True, False, True]),
                      "va": np.zeros((n, 2), np.float32), "va_mask": np.zeros(n, bool),
                      "aus": np.zeros((n, 12), np.int64),
                      "au_mask": np.array([[True] * 12, [True] * 11 + [False], [True] * 12, [False] * 12])}, [])
    w.finish()
    d = load_features(tmp_path / "feats")
    assert d["x"].shape == (n, 13)
    assert d["expr_mask"].tolist() == [True, True, False, True]
    assert not d["va_mask"].any()
    assert d["au_mask"].tolist() == [True, False, True, False]


def test_a_run_directory_refuses_a_different_config(tmp_path):
    cfg = C.load_config(None, [f"run_dir={tmp_path / 'run'}", "optim.lr=0.001"])
    prepare_run_dir(cfg, "pretrain")
    prepare_run_dir(C.load_config(None, [f"run_dir={tmp_path / 'run'}", "optim.lr=0.001",
                                         "train.progress=false"]), "pretrain")  # allowed change
    with pytest.raises(InputError, match="optim.lr"):
        prepare_run_dir(C.load_config(None, [f"run_dir={tmp_path / 'run'}", "optim.lr=0.01"]), "pretrain")


def test_a_run_started_before_a_config_section_existed_still_resumes(tmp_path):
    """config.json written before `distill` was added: the missing fields count as their defaults."""
    import json

    cfg = C.load_config(None, [f"run_dir={tmp_path / 'run'}"])
    prepare_run_dir(cfg, "pretrain")
    meta = tmp_path / "run" / "config.json"
    old = json.loads(meta.read_text())
    del old["distill"]
    meta.write_text(json.dumps(old))
    prepare_run_dir(cfg, "pretrain")
    with pytest.raises(InputError, match="distill.temperature"):
        prepare_run_dir(C.load_config(None, [f"run_dir={tmp_path / 'run'}", "distill.temperature=2.0"]), "pretrain")


def test_init_from_copies_matching_weights_and_keeps_the_new_classifier(tmp_path):
    """model.init: e.g. face-ID weights without a classifier -> a 10-output model."""
    from flax import nnx

    from hsemo_jax.checkpoint import ModelInfo, save_model
    from hsemo_jax.models import registry
    from hsemo_jax.train.runners import init_from

    src = registry.build("mobilefacenet", None, seed=1)
    save_model(src, ModelInfo.for_arch("mobilefacenet", None), tmp_path / "faceid")
    model = registry.build("mobilefacenet", 10, seed=0)
    fc_before = np.asarray(model.fc.kernel[...]).copy()
    copied, total = init_from(model, str(tmp_path / "faceid"))
    assert total - copied == 2  # fc kernel and bias
    np.testing.assert_array_equal(np.asarray(model.conv_sep.layers[0].kernel[...]),
                                  np.asarray(src.conv_sep.layers[0].kernel[...]))
    np.testing.assert_array_equal(np.asarray(model.fc.kernel[...]), fc_before)
    assert len(jax.tree.leaves(nnx.state(model))) == total


def test_saved_head_loads_back(tmp_path):
    from flax import nnx

    from hsemo_jax.models.heads import MTLHead, load_head, save_head

    head = MTLHead(30, seed=4)
    save_head(head, tmp_path)
    back = load_head(tmp_path)
    assert back.in_dim == 30
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(back, nnx.Param)),
                 nnx.to_pure_dict(nnx.state(head, nnx.Param)))
    assert np.abs(np.asarray(back.au.out.kernel[...]) - np.asarray(MTLHead(30).au.out.kernel[...])).max() > 0


def test_pretrain_export_writes_a_loadable_model_from_the_checkpoint(tmp_path):
    """`hsemo-jax pretrain CONFIG --export` (after a multi-process run): checkpoint -> RUN/model."""
    from data_fixtures import synthetic_affectnet_build
    from hsemo_jax.checkpoint import load_model
    from hsemo_jax.train.checkpoints import RunCheckpoints
    from hsemo_jax.train.runners import _optimizer, _pretrain_setup, run_pretrain
    from hsemo_jax.train.loop import Trainer

    data = synthetic_affectnet_build(tmp_path / "data", train=16, val_per_class=1)
    run = tmp_path / "run"
    cfg = C.load_config(None, [f"run_dir={run}", "model.arch=tiny_cnn", f"data.train={data}",
                               "train.batch_size=8", "train.steps=3"])
    prepare_run_dir(cfg, "pretrain")
    model, objective, _ = _pretrain_setup(cfg, None)
    trainer = Trainer(model, objective, _optimizer(cfg, 3, 2)[0])
    state = trainer.host_state()
    state["params"]["fc"]["bias"].set_value(np.arange(10, dtype=np.float32))  # a recognisable "trained" value
    state["step"] = np.int32(3)
    ckpt = RunCheckpoints(run / "checkpoints")
    ckpt.save(3, state, {"epoch": 1, "batch": 1, "seed": 0, "rows": 16})
    ckpt.close()
    assert cli.main(["pretrain", str(tmp_path / "none.toml")]) == 2  # missing config file
    run_pretrain(cfg, export_only=True)
    exported = load_model(run / "model")
    assert exported.info.arch == "tiny_cnn" and exported.info.source["step"] == 3
    np.testing.assert_array_equal(np.asarray(exported.fc.bias[...]), np.arange(10))


def test_a_bad_set_override_is_blamed_on_the_set_not_the_config_file(tmp_path, capsys):
    """`--set train.batch_size=abc` was reported as an error of the (default) config file, and a `--set`
    without '=' as an unknown setting."""
    path = tmp_path / "c.toml"
    path.write_text("[train]\nbatch_size = 32\n")
    for override, expected in (("train.batch_size=abc", "--set train.batch_size=abc: train.batch_size: expected int"),
                               ("train.nokey=1", "--set train.nokey=1: unknown setting 'train.nokey'"),
                               ("garbage", "--set 'garbage': expected section.key=VALUE")):
        assert cli.main(["train-head", str(tmp_path / "f.npz"), "--config", str(path), "--set", override,
                         "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert expected in err and "c.toml" not in err, err
    with pytest.raises(InputError, match=r"^--set distill.teacher_arch=resnet: distill.teacher_arch: expected one "
                                         r"of [a-z0-9_, ]*; got 'resnet'$") as e:
        C.load_config(path, ["distill.teacher_arch=resnet"])
    assert str(e.value).count("tiny_cnn") == 1, str(e.value)
    path.write_text("[train]\nbatch_size = 'x'\n")
    with pytest.raises(InputError, match=r"c.toml: train.batch_size: expected int"):
        C.load_config(path, ["train.steps=3"])
