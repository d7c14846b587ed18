"""`hsemo-jax pretrain` data: TFDS builds read through grain, checked against the model before anything
is built or written; label mapping; the training loader's position; validation gathered over devices."""
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

import data_fixtures as F
from hsemo_jax import cli
from hsemo_jax.errors import InputError
from hsemo_jax.labels import AFFECTNET_CODE_TO_HSE, AFFWILD_EXPR_8, HSE_CLASSES_7, HSE_CLASSES_8
from hsemo_jax.train import pretrain_data as PD

TINY = ["--set", "model.arch=tiny_cnn", "--set", "train.batch_size=8", "--set", "train.steps=2", "--set", "data.workers=0",
        "--set", "train.progress=false"]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return F.synthetic_affectnet_build(tmp_path_factory.mktemp("affectnet"))


def _custom_build(root, features: dict, example) -> str:
    """A one-split TFDS build with the given features, written by the project's builder base."""
    from data_pipelines.builder_base import ManualBuilder

    class Custom(ManualBuilder, skip_registration=True):
        name = "custom_faces"
        MANUAL_DOWNLOAD_INSTRUCTIONS = "in memory"

        def _features(self):
            return dict(features)

        def _candidates(self, _root):
            return {"train": list(range(16))}

        def _load(self, i):
            return example(i)

    builder = Custom(data_dir=str(root), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    return str(root / "custom_faces")


def _jpeg(i):
    import cv2

    return cv2.imencode(".jpg", F.crop(i, 40))[1].tobytes()


def _pretrain(tmp_path, capsys, *args):
    """Run the CLI; returns (exit code, stderr). The run directory must not appear on an error."""
    run = tmp_path / "run"
    code = cli.main(["pretrain", str(F.Path(__file__).parents[1] / "hsemo_jax/train/configs/pretrain_smoke_synthetic.toml"),
                     "--out", str(run), *TINY, *args])
    err = capsys.readouterr().err
    if code != 0:
        assert not run.exists(), "a refused run left its run directory behind"
    return code, err


def test_export_of_a_run_that_does_not_exist_starts_none(tmp_path, capsys, build):
    """`--export` into a mistyped RUN wrote RUN/config.json (starting a run there) before 'no checkpoint'."""
    code, err = _pretrain(tmp_path, capsys, "--train", str(build), "--export")
    assert code == 2 and "not a pretrain run (no config.json), nothing to export" in err, err


def test_an_out_that_is_a_file_or_holds_a_damaged_config(tmp_path, capsys, build):
    """A file at --out was 'File exists', a damaged RUN/config.json a JSONDecodeError traceback."""
    (tmp_path / "afile").write_text("x")
    code = cli.main(["pretrain", str(F.Path(__file__).parents[1] / "hsemo_jax/train/configs/pretrain_smoke_synthetic.toml"),
                     "--out", str(tmp_path / "afile"), "--train", str(build), *TINY])
    assert code == 2 and "afile: a file, not a run directory" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{x")
    code = cli.main(["pretrain", str(F.Path(__file__).parents[1] / "hsemo_jax/train/configs/pretrain_smoke_synthetic.toml"),
                     "--out", str(tmp_path / "run"), "--train", str(build), *TINY])
    assert code == 2 and "config.json: not a run's config" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.json").read_text() == "{x"


def test_model_init_that_is_missing_or_of_another_architecture(tmp_path, capsys, build):
    """A missing model.init failed after RUN/config.json was written (so the corrected command was refused);
    one of another architecture initialized 1 of 12 tensors and trained on."""
    from hsemo_jax.checkpoint import ModelInfo, save_model
    from hsemo_jax.models import registry

    code, err = _pretrain(tmp_path, capsys, "--train", str(build), "--set", f"model.init={tmp_path / 'none'}")
    assert code == 2 and "model.init: " in err and "no hsemo_model.json" in err, err
    save_model(registry.build("mobilefacenet", None, seed=1), ModelInfo.for_arch("mobilefacenet", None), tmp_path / "mbf")
    code, err = _pretrain(tmp_path, capsys, "--train", str(build), "--set", f"model.init={tmp_path / 'mbf'}")
    assert code == 2 and "holds a mobilefacenet model, which cannot initialize a tiny_cnn" in err, err


def test_a_directory_that_is_not_a_tfds_build(tmp_path, capsys, build):
    (tmp_path / "images").mkdir()
    code, err = _pretrain(tmp_path, capsys, "--train", str(tmp_path / "images"), "--val", str(build))
    assert code == 2 and "data.train:" in err and "is not a built dataset" in err and "images" in err


def test_a_missing_split(tmp_path, capsys, build):
    code, err = _pretrain(tmp_path, capsys, "--train", str(build), "--val", str(build), "--set", "data.val_split=test")
    assert code == 2 and f"data.val: {build}: no split 'test' (splits: train, validation)" in err


def test_a_batch_larger_than_the_split_or_not_a_multiple_of_the_devices(tmp_path, capsys, build):
    code, err = _pretrain(tmp_path, capsys, "--train", str(build), "--set", "train.batch_size=64")
    assert code == 2 and "data.train:" in err and "48 examples, fewer than one global batch" in err
    code, err = _pretrain(tmp_path, capsys, "--train", str(build), "--set", "train.eval_batch=12")
    assert code == 2 and "train.eval_batch: 12 is not a multiple of the 8 devices" in err


def test_labels_that_do_not_fit_the_8_expression_outputs(tmp_path, capsys):
    path = _custom_build(tmp_path / "seven", {
        "image": tfds.features.Tensor(shape=(), dtype=np.object_),
        "label": tfds.features.ClassLabel(names=HSE_CLASSES_7),
        "va": tfds.features.Tensor(shape=(2,), dtype=np.float32)},
        lambda i: {"image": _jpeg(i), "label": i % 7, "va": np.zeros(2, np.float32)})
    code, err = _pretrain(tmp_path, capsys, "--train", path)
    assert code == 2 and f"data.train: {path}: feature 'label' has 7 classes" in err


def test_no_va_feature_for_a_10_output_model(tmp_path, capsys):
    path = _custom_build(tmp_path / "nova", {
        "image": tfds.features.Tensor(shape=(), dtype=np.object_),
        "label": tfds.features.ClassLabel(names=HSE_CLASSES_8)},
        lambda i: {"image": _jpeg(i), "label": i % 8})
    code, err = _pretrain(tmp_path, capsys, "--train", path)
    assert code == 2 and f"data.train: {path}: no feature 'va'" in err
    code, _ = _pretrain(tmp_path, capsys, "--train", path, "--set", "model.num_outputs=8")  # fits without VA
    assert code == 0 and (tmp_path / "run" / "model").is_dir()


def test_decoded_images_of_another_size(tmp_path, capsys):
    path = _custom_build(tmp_path / "decoded", {
        "image": tfds.features.Tensor(shape=(48, 48, 1), dtype=np.uint8),
        "label": tfds.features.ClassLabel(names=HSE_CLASSES_8)},
        lambda i: {"image": np.zeros((48, 48, 1), np.uint8), "label": i % 8})
    code, err = _pretrain(tmp_path, capsys, "--train", path, "--set", "model.num_outputs=8")
    assert code == 2 and f"data.train: {path}: feature 'image' holds decoded uint8 (48, 48, 1) arrays" in err
    assert "model's 32x32" in err


def test_label_features_map_to_the_models_class_order():
    feats = tfds.features.FeaturesDict({"image": tfds.features.Tensor(shape=(), dtype=np.object_),
                                        "expression": tfds.features.Tensor(shape=(), dtype=np.int64),
                                        "va": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                                        "va_mask": tfds.features.Tensor(shape=(2,), dtype=np.bool_)})
    spec = PD.label_spec(feats, "w", 10)  # ABAW: Aff-Wild2 order, -1 missing
    y, m = spec.expr(np.array([0, 1, 7, -1]))
    assert [HSE_CLASSES_8[i] for i in y[:3]] == ["Neutral", "Anger", "Contempt"] and m.tolist() == [1, 1, 1, 0]
    assert AFFWILD_EXPR_8[7] == "Other"  # Other -> Contempt, as HSEmotion maps them
    va, vm = spec.va(np.array([[0.5, -0.5], [-5, -5], [0.1, 0.2]]), np.array([[1, 1], [0, 0], [1, 0]], bool))
    assert vm.tolist() == [True, False, False] and va[1].tolist() == [0, 0]
    codes = tfds.features.FeaturesDict({"image": tfds.features.Tensor(shape=(), dtype=np.object_),
                                        "label": tfds.features.ClassLabel(names=[str(c) for c in range(8)])})
    spec = PD.label_spec(codes, "w", 8)  # DDAMFN's folders "0".."7" = AffectNet codes
    np.testing.assert_array_equal(spec.expr(np.arange(8))[0], AFFECTNET_CODE_TO_HSE)
    shuffled = list(reversed(HSE_CLASSES_8))
    spec = PD.label_spec(tfds.features.FeaturesDict({"label": tfds.features.ClassLabel(names=shuffled)}), "w", 8)
    assert [HSE_CLASSES_8[i] for i in spec.expr(np.arange(8))[0]] == shuffled
    with pytest.raises(InputError, match="w: no expression label"):
        PD.label_spec(tfds.features.FeaturesDict({"va": tfds.features.Tensor(shape=(2,), dtype=np.float32)}), "w", 10)
    with pytest.raises(InputError, match=r"w: feature 'va' is float32 \(3,\)"):
        PD.label_spec(tfds.features.FeaturesDict({"label": tfds.features.ClassLabel(names=HSE_CLASSES_8),
                                                  "va": tfds.features.Tensor(shape=(3,), dtype=np.float32)}), "w", 10)


def test_labels_read_from_the_build_are_the_generators(build):
    split = PD.open_split(str(build), "train", "data.train", num_outputs=10, image_size=32)
    labels = split.scan_labels()
    report = json.loads((next(build.glob("*")) / "build_report.json").read_text())
    assert report["train"]["written"] == len(split) == 48 and labels["expr_mask"].all() and labels["va_mask"].all()
    with open(build.parents[1] / "manual" / "training.csv") as f:
        codes = [int(line.split(",")[6]) for line in list(f)[1:]]
    np.testing.assert_array_equal(labels["expr"], AFFECTNET_CODE_TO_HSE[codes])
    w = PD.balanced_weights(labels["expr"], labels["expr_mask"])
    np.testing.assert_allclose(np.bincount(labels["expr"], weights=w, minlength=8), 1.0)


def test_training_position_restores_with_the_grain_iterator(build):
    from data_pipelines.augment import DDAMFN
    from data_pipelines.loaders import Preprocessing

    split = PD.open_split(str(build), "train", "data.train", num_outputs=10, image_size=32)
    prep = Preprocessing.for_arch("tiny_cnn")

    def loader():
        return PD.TrainBatches(split, prep, global_batch=16, seed=5, augment=DDAMFN)

    a = loader()
    assert a.batches_per_epoch == 3
    for _ in range(4):
        next(a)
    pos, grain_state = a.state(), a.grain_iterator.get_state()
    assert pos == {"epoch": 1, "batch": 1, "seed": 5, "rows": 48, "global_batch": 16, "sampling": "shuffle"}
    want = [next(a) for _ in range(3)]
    b = loader()
    b.grain_iterator.set_state(grain_state)
    b.restore(pos)
    for w in want:
        got = next(b)
        assert sorted(got) == ["erase", "expr", "expr_mask", "images", "mask", "va", "va_mask"]
        for k in w:
            np.testing.assert_array_equal(got[k], w[k], err_msg=k)
    assert b.epoch == 2
    c = loader()
    c.restore(pos)  # the position without the iterator's state: refused at the next batch
    with pytest.raises(RuntimeError, match="at global batch 0, the run at 4"):
        next(c)
    with pytest.raises(InputError, match="seed = 6"):
        loader().restore({**pos, "seed": 6})


def test_validation_over_8_devices_gathers_every_row_once(build):
    """Trainer.evaluate on EvalBatches: 16 rows in 2 global batches of 12 over 8 devices (padded),
    metrics equal to a host forward over the whole split."""
    import jax

    from data_pipelines.loaders import Preprocessing
    from hsemo_jax.metrics import accuracy, ccc
    from hsemo_jax.models import build as build_model
    from hsemo_jax import optim
    from hsemo_jax.train.loop import Trainer
    from hsemo_jax.train.objectives import BackboneObjective

    split = PD.open_split(str(build), "validation", "data.val", num_outputs=10, image_size=32)
    prep = Preprocessing.for_arch("tiny_cnn")
    batches = PD.EvalBatches(split, prep, global_batch=24)
    model = build_model("tiny_cnn", 10, seed=2)
    trainer = Trainer(model, BackboneObjective(prep.mean, prep.std), optim.make_optimizer("adam", 1e-3))
    assert trainer.num_devices == 8 == jax.device_count()
    preds, labels = trainer.predict_batches(batches)
    assert len(preds["scores"]) == len(labels["expr"]) == 16
    assert sorted(labels["expr"].tolist()) == sorted(np.repeat(np.arange(8), 2).tolist())
    rows = [b for b in batches]
    images = np.concatenate([b["images"][b["mask"]] for b in rows])
    ref = np.asarray(model((images.astype(np.float32) / 255 - 0.5) / 0.5))
    assert np.ptp(ref, axis=0).min() > 5e-3  # every score depends on the image: a row out of place would fail
    np.testing.assert_allclose(preds["scores"], ref, rtol=1e-4, atol=1e-5)
    metrics = trainer.evaluate(batches, 24)
    assert metrics["accuracy"] == accuracy(labels["expr"], ref[:, :8], 8)
    np.testing.assert_allclose([metrics["CCC_V"], metrics["CCC_A"]], ccc(labels["va"], ref[:, 8:]), rtol=1e-4)
    assert 0 <= metrics["accuracy_7"] <= 1


def test_validation_each_epoch_and_the_best_model_for_load_model_and_predict(tmp_path, capsys, build):
    """2 epochs with validation after each: val_* columns in metrics.csv and TensorBoard, RUN/model =
    the best checkpoint by val accuracy, read by load_model and `hsemo-jax predict --model`."""
    import csv

    import cv2

    from hsemo_jax.checkpoint import load_model
    from hsemo_jax.train.checkpoints import RunCheckpoints

    code, err = _pretrain(tmp_path, capsys, "--train", str(build), "--val", str(build), "--set", "train.steps=0",
                          "--set", "train.epochs=2", "--set", "optim.lr=0.01", "--set", "checkpoint.keep_best=1")
    assert code == 0, err
    run = tmp_path / "run"
    with open(run / "metrics.csv") as f:
        val = [r for r in csv.DictReader(f) if r["val_accuracy"]]
    assert [int(r["step"]) for r in val] == [6, 12]  # 48 examples / 8 per step: an epoch is 6 steps
    assert {"val_accuracy_7", "val_CCC_V", "val_CCC_A", "val_macro_f1"} <= set(val[0])
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    best = max(val, key=lambda r: (float(r["val_accuracy"]), -int(r["step"])))
    ckpt = RunCheckpoints(run / "checkpoints", best_metric="accuracy")
    assert ckpt.best_step() == int(best["step"])
    ckpt.close()
    model = load_model(run / "model")
    assert model.info.arch == "tiny_cnn" and model.info.source["step"] == int(best["step"])
    faces = tmp_path / "faces"
    for i in range(3):
        F.write_jpeg(faces / f"{i}.jpg", F.crop(i, 64))
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", str(faces), "--model", str(run / "model"), "--detector", "none", "--out", str(out)]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[0]["expression"] in HSE_CLASSES_8 and "valence" in rows[0]
    capsys.readouterr()
