"""Feature datasets and the build-dataset / extract-features commands: exact values, fixed
batches, resumption after an interruption, bad images reported by name."""
import json

import cv2
import numpy as np
import pytest

import data_fixtures as F
from data_pipelines import features as FT
from data_pipelines.images import decode_rgb
from hsemo_jax import cli
from hsemo_jax import extract as X
from hsemo_jax.errors import InputError
from hsemo_jax.models import preprocess


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtl")
    F.make_s_aff_wild2(root / "m", videos=(("video1", [1, 2, 3, 4, 5, 6]), ("vid2", [2, 4]), ("v3", [1])))
    return root


def _expected(model_dir, images_rgb):
    """embedding, scores of the model on exactly preprocessed images, 4 at a time (as extracted)."""
    _, forward = X.load_model_and_forward(model_dir)
    x = preprocess("mbf_va_mtl", images_rgb)
    pad = -len(x) % 4
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], np.float32)])
    outs = [forward(x[i:i + 4]) for i in range(0, len(x), 4)]
    n = len(images_rgb)
    return (np.concatenate([np.asarray(o[0]) for o in outs])[:n],
            np.concatenate([np.asarray(o[1]) for o in outs])[:n])


def test_build_dataset_cli_prints_written_and_skipped(built, capsys):
    rc = cli.main(["build-dataset", "s_aff_wild2", "--manual-dir", str(built / "m"),
                   "--data-dir", str(built / "data"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "train: 8 written, 0 skipped" in out and "validation: 1 written, 0 skipped" in out
    rc = cli.main(["build-dataset", "s_aff_wild2", "--manual-dir", str(built / "m"),
                   "--data-dir", str(built / "data"), "--no-progress"])
    assert rc == 2 and "already exists" in capsys.readouterr().err


def test_extract_features_from_dataset_resumes_after_interruption(built, model_dir, monkeypatch, capsys):
    pytest.importorskip("orbax.checkpoint")
    data = built / "data" / "s_aff_wild2"
    if not data.exists():
        cli.main(["build-dataset", "s_aff_wild2", "--manual-dir", str(built / "m"),
                  "--data-dir", str(built / "data"), "--no-progress"])
    out = built / "feat"
    real_write = FT.FeatureWriter.write_chunk

    def interrupted(self, chunk, arrays, skipped):
        if chunk == 1:
            raise KeyboardInterrupt
        return real_write(self, chunk, arrays, skipped)

    monkeypatch.setattr(FT.FeatureWriter, "write_chunk", interrupted)
    args = ["extract-features", str(model_dir), "--dataset", str(data), "--split", "train",
            "--out", str(out), "--batch-size", "4", "--chunk-size", "4", "--no-progress"]
    assert cli.main(args) == 130
    assert (out / "chunk-00000").is_dir() and not (out / "chunk-00001").exists()
    with pytest.raises(InputError, match="not finished"):
        FT.FeatureDataset(out)
    monkeypatch.setattr(FT.FeatureWriter, "write_chunk", real_write)
    capsys.readouterr()
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "resumed at example 4" in printed and "4 examples written, 0 skipped" in printed

    ds = FT.FeatureDataset(out)
    a = ds.arrays()
    assert len(ds) == 8 and ds.meta["complete"] and ds.meta["source"]["split"] == "train"
    from data_pipelines.build import open_dataset

    src = open_dataset(data, "train")
    rows = [src[i] for i in range(len(src))]
    assert a["name"].tolist() == [r["name"].decode() for r in rows]
    assert a["index"].tolist() == list(range(8))
    emb, scores = _expected(model_dir, [decode_rgb(r["image"]) for r in rows])
    assert np.ptp(scores, axis=0).min() > 0.01  # the rows' values depend on the image: order is checked
    np.testing.assert_allclose(a["embedding"], emb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a["scores"], scores, rtol=1e-5, atol=1e-5)
    assert a["embedding"].shape == (8, 512) and a["scores"].shape == (8, 10)
    for k in ("va", "va_mask", "expression", "expression_mask", "aus", "au_mask", "frame"):
        np.testing.assert_array_equal(a[k], np.stack([np.asarray(r[k]) for r in rows]))
    one = ds[5]
    np.testing.assert_array_equal(one["scores"], a["scores"][5])
    assert one["name"] == a["name"][5]

    assert cli.main(args) == 0  # complete: nothing to do
    assert "already complete" in capsys.readouterr().out
    other = args[:-5] + ["--batch-size", "4", "--chunk-size", "8", "--no-progress"]
    assert cli.main(other) == 2  # a different extraction into the same folder
    assert "different extraction" in capsys.readouterr().err


def test_extract_features_image_folder_reports_bad_images(tmp_path, model_dir):
    imgs = tmp_path / "imgs"
    rgb = []
    for i, name in enumerate(["a.jpg", "b/c.png", "b/d.jpg", "e.jpg", "f.jpg"]):
        p = imgs / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(cv2.imencode(p.suffix, F.crop(i, 60))[1].tobytes())
        rgb.append(decode_rgb(p.read_bytes()))
    (imgs / "b" / "d.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(InputError, match=r"b/d\.jpg: corrupt image"):
        X.extract_features(model_dir, tmp_path / "bad", images=str(imgs), batch_size=4,
                           on_bad_image="error", progress=False)
    s = X.extract_features(model_dir, tmp_path / "out", images=str(imgs), batch_size=4, progress=False)
    assert s["written"] == 4 and s["skipped"] == 1 and s["skipped_names"] == ["b/d.jpg"]
    ds = FT.FeatureDataset(tmp_path / "out")
    a = ds.arrays()
    assert a["name"].tolist() == ["a.jpg", "b/c.png", "e.jpg", "f.jpg"] and ds.skipped() == ["b/d.jpg"]
    emb, scores = _expected(model_dir, [rgb[i] for i in (0, 1, 3, 4)])
    assert np.ptp(scores, axis=0).min() > 0.01  # the rows' values depend on the image
    np.testing.assert_allclose(a["scores"], scores, rtol=1e-5, atol=1e-5)
    meta = json.loads((tmp_path / "out" / "features.json").read_text())
    assert meta["source"]["kind"] == "images" and meta["model"]["arch"] == "mobilefacenet"


@pytest.mark.parametrize("where", ["the_images", "a_folder_holding_them", "the_model", "a_folder_of_other_things"])
def test_extract_features_overwrite_never_deletes_inputs_or_other_folders(tmp_path, monkeypatch, capsys, where):
    """`--out IMAGES --overwrite` deleted the face crops it was to read (then a traceback), `--out MODEL
    --overwrite` the model, `--out FOLDER --overwrite` any folder; all are refused before the model loads."""
    monkeypatch.setattr(X, "load_model_and_forward", lambda *a: pytest.fail("the model was loaded"))
    imgs = tmp_path / "crops" / "faces"
    imgs.mkdir(parents=True)
    (imgs / "a.jpg").write_bytes(cv2.imencode(".jpg", F.crop(0, 60))[1].tobytes())
    model = tmp_path / "model"
    model.mkdir()
    (model / "hsemo_model.json").write_text("{}")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    out = {"the_images": imgs, "a_folder_holding_them": tmp_path / "crops", "the_model": model,
           "a_folder_of_other_things": other}[where]
    assert cli.main(["extract-features", str(model), "--images", str(imgs), "--out", str(out),
                     "--overwrite", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("which is read from it" in err[0] or "never replaced" in err[0]), err
    assert (imgs / "a.jpg").is_file() and (model / "hsemo_model.json").is_file() and (other / "keep.txt").is_file()


@pytest.mark.parametrize("flags, message", [(["--chunk-size", "0"], "--chunk-size must be positive"),
                                            (["--workers", "-1"], "--workers must be 0"),
                                            (["--split", "train"], "--split chooses a split of --dataset")])
def test_extract_features_refuses_options_it_used_to_ignore(tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.setattr(X, "load_model_and_forward", lambda *a: pytest.fail("the model was loaded"))
    (tmp_path / "imgs").mkdir()
    assert cli.main(["extract-features", str(tmp_path / "model"), "--images", str(tmp_path / "imgs"),
                     "--out", str(tmp_path / "out"), "--no-progress", *flags]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_build_dataset_data_dir_that_is_a_file(tmp_path, capsys):
    """It was reported as '<path>: File exists'."""
    (tmp_path / "m").mkdir()
    (tmp_path / "afile").write_text("x")
    assert cli.main(["build-dataset", "s_aff_wild2", "--manual-dir", str(tmp_path / "m"), "--data-dir",
                     str(tmp_path / "afile"), "--no-progress"]) == 2
    assert "afile is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_build_dataset_refuses_workers_below_one(tmp_path, capsys, workers):
    """--workers 0 silently meant the default (up to 8 threads) and -1 one thread."""
    (tmp_path / "m").mkdir()
    assert cli.main(["build-dataset", "s_aff_wild2", "--manual-dir", str(tmp_path / "m"), "--data-dir",
                     str(tmp_path / "data"), "--workers", workers, "--no-progress"]) == 2
    assert f"--workers must be at least 1, got {workers}" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_extract_features_takes_a_published_name(tmp_path, model_dir, monkeypatch):
    """MODEL was made an absolute path first, so a published name (`mbf_va_mtl`) was looked for as
    <cwd>/mbf_va_mtl: 'no such file or directory'. It now resolves as predict's --model does."""
    import hsemo_jax.hub as hub

    monkeypatch.setattr(hub, "resolve_model",
                        lambda spec, **kw: model_dir if spec == "mbf_va_mtl" else pytest.fail(f"resolved {spec}"))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        (imgs / f"{i}.jpg").write_bytes(cv2.imencode(".jpg", F.crop(i, 60))[1].tobytes())
    s = X.extract_features("mbf_va_mtl", tmp_path / "out", images=str(imgs), batch_size=4, progress=False)
    assert s["written"] == 2
    assert json.loads((tmp_path / "out" / "features.json").read_text())["model"]["path"] == "mbf_va_mtl"


def test_train_head_reads_affectnet_features_in_the_affwild2_order(tmp_path, model_dir):
    """AffectNet builds store `expression` as AffectNet codes (Neutral, Happiness, Sadness, ...);
    extract-features copied it and train-head read it as Aff-Wild2 EXPR (Neutral, Anger, Disgust, ...),
    so a head trained on AffectNet features learnt Happiness as Anger, silently. The class names are now
    recorded in features.json and mapped by name (Contempt -> Other); without them it is refused."""
    from hsemo_jax.labels import AFFECTNET_CODES_8, AFFWILD_EXPR_8
    from hsemo_jax.train.data import load_features

    data = F.synthetic_affectnet_build(tmp_path / "data", train=16, val_per_class=1)
    out = tmp_path / "feat"
    X.extract_features(model_dir, out, dataset=str(data), split="validation", batch_size=8, progress=False)
    d = load_features(out)
    csv = [ln.split(",") for ln in (tmp_path / "data" / "manual" / "validation.csv").read_text().split()[1:]]
    code_of = {f[0]: int(f[6]) for f in csv}  # the AffectNet code each image was drawn with
    codes = [code_of[n] for n in FT.FeatureDataset(out).arrays()["name"]]
    assert sorted(codes) == list(range(8))
    want = ["Other" if AFFECTNET_CODES_8[c] == "Contempt" else AFFECTNET_CODES_8[c] for c in codes]
    assert d["expr_mask"].all() and [AFFWILD_EXPR_8[i] for i in d["expr"]] == want

    meta_path = out / "features.json"
    meta = json.loads(meta_path.read_text())
    meta["class_names"]["expression"][2] = "Boredom"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"features\.json: .*'Boredom'") as e:
        load_features(out)
    assert "\n" not in str(e.value)
    del meta["class_names"]  # made before the names were recorded
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"features\.json: .*AffectNet.*re-run .*extract-features") as e:
        load_features(out)
    assert "\n" not in str(e.value)
