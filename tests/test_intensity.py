"""Video-level emotion intensity (ERI / EMI): per-video statistics against numpy, Pearson losses and
metric against scipy / a numpy transcription, the regressor on a synthetic task, label-file errors
naming file:line, and `hsemo-jax intensity train|predict` end to end (features file and face folders)."""
import contextlib
import io
import json

import jax
import numpy as np
import pytest
from scipy.stats import pearsonr

from hsemo_jax import cli
from hsemo_jax.errors import InputError
from hsemo_jax.intensity import labels as L
from hsemo_jax.intensity import regressor as R
from hsemo_jax.intensity.frames import FrameFeatures, load_source, video_features
from hsemo_jax.intensity.stats import every_nth, video_statistics
from hsemo_jax.labels import HUME_REACTION_7, HUME_VIDMIMIC_6, INTENSITY_TARGET_SETS


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------
def _ragged(rng, n_videos=7, d=5):
    """Flat shuffled rows of videos of 1..23 frames with gaps in the frame numbers."""
    vids, frames, rows = [], [], []
    for v in range(n_videos):
        n = int(rng.integers(1, 24))
        f = np.sort(rng.choice(np.arange(200), n, replace=False))
        vids += [f"v{v}"] * n
        frames += f.tolist()
        rows.append(rng.normal(size=(n, d)) * (v + 1) + v)
    x = np.concatenate(rows).astype(np.float32)
    perm = rng.permutation(len(vids))
    return np.asarray(vids, dtype=object)[perm], np.asarray(frames)[perm], x[perm]


def _numpy_stats(vids, frames, x, every):
    out = {}
    for v in dict.fromkeys(vids.tolist()):
        idx = np.nonzero(vids == v)[0]
        idx = idx[np.argsort(frames[idx])][::every]
        xv = x[idx].astype(np.float64)
        out[v] = np.concatenate([xv.mean(0), xv.std(0), xv.min(0), xv.max(0)])
    return out


@pytest.mark.parametrize("every", [1, 3, 5])
def test_video_statistics_equal_numpy_on_ragged_packed_videos(every):
    rng = np.random.default_rng(every)
    vids, frames, x = _ragged(rng)
    with jax.default_matmul_precision("float32"):
        videos, stats = video_statistics(vids, frames, x, every=every, lanes=3)  # groups of 3 lanes, padded
        # a small value budget halves the lanes per call for the long videos
        videos_b, stats_b = video_statistics(vids, frames, x, every=every, lanes=4, budget=4 * 8 * 5)
    ref = _numpy_stats(vids, frames, x, every)
    assert list(videos) == list(ref) == list(videos_b)  # order of first appearance
    assert stats.shape == (len(ref), 4 * x.shape[1]) and stats.dtype == np.float32
    np.testing.assert_allclose(stats, np.stack(list(ref.values())), rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(stats_b, stats)


def test_every_nth_keeps_positions_in_frame_order_and_rejects_duplicates():
    vids = np.array(["a", "b", "a", "a", "b", "a", "a"], dtype=object)
    frames = np.array([10, 3, 2, 7, 1, 30, 4])
    # a in frame order: 2(i2) 4(i6) 7(i3) 10(i0) 30(i5) -> every 2nd: i2, i3, i5; b: 1(i4) 3(i1) -> i4
    assert every_nth(vids, frames, 2).tolist() == [2, 3, 4, 5]
    assert every_nth(vids, frames, 1).tolist() == list(range(7))
    with pytest.raises(InputError, match="duplicate frame 7 of video 'a'"):
        every_nth(np.array(["a", "a"], dtype=object), np.array([7, 7]), 1)
    with pytest.raises(InputError, match="positive integer"):
        every_nth(vids, frames, 0)


# ----------------------------------------------------------------------------------------------
# losses and metric
# ----------------------------------------------------------------------------------------------
def _pred_true(rng, n=40, k=6):
    y = rng.random((n, k)).astype(np.float32)
    p = (0.5 * y + 0.5 * rng.random((n, k))).astype(np.float32)
    return p, y


def test_pearson_loss_equals_one_minus_mean_scipy_pearsonr():
    p, y = _pred_true(np.random.default_rng(0))
    ref = 1 - np.mean([pearsonr(p[:, k], y[:, k])[0] for k in range(p.shape[1])])
    with jax.default_matmul_precision("float32"):
        loss = float(R.pearson_loss(p, y))
        # masked rows (the padded last mini-batch) are left out
        mask = np.arange(len(p)) < 29
        masked = float(R.pearson_loss(np.r_[p[:29], np.ones_like(p[29:])], np.r_[y[:29], np.zeros_like(y[29:])],
                                      mask))
    assert loss == pytest.approx(ref, abs=2e-6)
    ref29 = 1 - np.mean([pearsonr(p[:29, k], y[:29, k])[0] for k in range(p.shape[1])])
    assert masked == pytest.approx(ref29, abs=2e-6)


def test_weighted_pearson_loss_equals_numpy_transcription():
    p, y = _pred_true(np.random.default_rng(1))
    w = R.vidmimic_weights()
    np.testing.assert_allclose(w, [.471, .059, .118, .235, .059, .059], atol=1e-3)
    assert w.sum() == pytest.approx(1.0)
    p64, y64 = p.astype(np.float64), y.astype(np.float64)
    cov = ((y64 - y64.mean(0)) * (p64 - p64.mean(0))).mean(0)
    r = cov / (y64.std(0) * p64.std(0) + 1e-7)
    inv = np.array([1, 8, 4, 2, 8, 8.0])
    ref = 1 - np.sum((1 / inv) / np.sum(1 / inv) * r)
    with jax.default_matmul_precision("float32"):
        assert float(R.weighted_pearson_loss(p, y, w)) == pytest.approx(ref, abs=2e-6)
        assert float(R.weighted_pearson_loss(p, y, 1 / inv)) == pytest.approx(ref, abs=2e-6)  # normalised inside
        assert float(R.weighted_pearson_loss(p, y, np.ones(6))) == pytest.approx(float(R.pearson_loss(p, y)), abs=1e-6)
    assert R.default_weights(HUME_VIDMIMIC_6).tolist() == pytest.approx(w.tolist())
    assert R.default_weights(HUME_REACTION_7).tolist() == pytest.approx([1 / 7] * 7)


def test_metric_equals_scipy_and_constant_column_is_nan():
    p, y = _pred_true(np.random.default_rng(2), n=25, k=7)
    per = R.pearson_per_target(p, y)
    p64, y64 = p.astype(np.float64), y.astype(np.float64)
    ref = [pearsonr(p64[:, k], y64[:, k])[0] for k in range(7)]
    np.testing.assert_allclose(per, ref, atol=1e-12)
    assert R.mean_pearson(p, y) == pytest.approx(np.mean(ref), abs=1e-12)
    p[:, 3] = 0.5
    assert np.isnan(R.pearson_per_target(p, y)[3])
    with pytest.raises(InputError, match="must both be"):
        R.mean_pearson(p[:, :6], y)


# ----------------------------------------------------------------------------------------------
# regressor
# ----------------------------------------------------------------------------------------------
def _synthetic(rng, n, f=12, k=3, w=None):
    w = rng.normal(size=(f, k)) / np.sqrt(f) if w is None else w
    x = rng.normal(size=(n, f)).astype(np.float32)
    y = 1 / (1 + np.exp(-(x @ w * 2))) + 0.05 * rng.normal(size=(n, k))
    return x, y.astype(np.float32), w


@pytest.mark.parametrize("variant", ["linear", "mlp"])
def test_regressor_learns_synthetic_task_and_round_trips(variant, tmp_path):
    rng = np.random.default_rng(3)
    x, y, w = _synthetic(rng, 700)
    xv, yv, _ = _synthetic(rng, 200, w=w)
    xt, yt, _ = _synthetic(rng, 300, w=w)
    names = ("a", "b", "c")
    with jax.default_matmul_precision("float32"):
        res = R.fit(x, y, names, R.TrainConfig(variant=variant, epochs=15, batch_size=128, lr=1e-2),
                    x_val=xv, y_val=yv)
        pred = R.predict(res.model, xt)
    assert pred.shape == (300, 3) and ((pred > 0) & (pred < 1)).all()
    assert R.mean_pearson(pred, yt) > 0.8
    vals = [h["val_pearson"] for h in res.history]
    assert res.best_val == pytest.approx(max(vals)) and res.best_epoch == 1 + int(np.argmax(vals))
    assert res.config.loss == ("pearson" if variant == "linear" else "weighted")
    assert res.config.l2 == (1 / 512 if variant == "linear" else 0.0)
    R.save_regressor(res.model, tmp_path, {"variant": variant, "in_dim": 12, "targets": list(names),
                                           "hidden": res.config.hidden})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["regressor.json", "regressor.npz"]
    model, meta = R.load_regressor(tmp_path)
    assert meta["targets"] == list(names)
    np.testing.assert_array_equal(R.predict(model, xt), pred)


def test_regressor_keeps_best_epoch_weights_not_last():
    """Keeping the best epoch means its weights give exactly the best validation score."""
    rng = np.random.default_rng(4)
    x, y, w = _synthetic(rng, 300)
    xv, yv, _ = _synthetic(rng, 100, w=w)
    res = R.fit(x, y, ("a", "b", "c"), R.TrainConfig(epochs=12, batch_size=64, lr=0.2), x_val=xv, y_val=yv)
    assert R.mean_pearson(R.predict(res.model, xv), yv) == pytest.approx(res.best_val, abs=1e-6)
    with pytest.raises(InputError, match="target weights must be 3"):
        R.fit(x, y, ("a", "b", "c"), R.TrainConfig(loss="weighted", weights=[1, 2]))


def test_default_batch_follows_the_data_size():
    """280 training videos: the notebook's batch of 512 made every epoch one step and the held-out
    mean Pearson stayed far below what the same 100 epochs reach with several steps an epoch."""
    rng = np.random.default_rng(3)
    x, y, w = _synthetic(rng, 280)
    xv, yv, _ = _synthetic(rng, 100, w=w)
    res = R.fit(x, y, ("a", "b", "c"), R.TrainConfig(), x_val=xv, y_val=yv)
    assert res.config.batch_size < 280 // 4 and res.best_val > 0.9
    assert R.TrainConfig().resolved(("a",), 15000).batch_size == 512  # the notebook's, on its data


# ----------------------------------------------------------------------------------------------
# label files
# ----------------------------------------------------------------------------------------------
VM_HEADER = "Filename,Admiration,Amusement,Determination,Empathic Pain,Excitement,Joy"


def test_read_labels_known_sets_and_ids(tmp_path):
    f = tmp_path / "train_split.csv"
    f.write_text(VM_HEADER + "\n00001,0.1,0.2,0.3,0.4,0.5,0.6\n\n12,0,0,0,0,0,1\n")
    lab = L.read_labels(str(f), INTENSITY_TARGET_SETS["vidmimic6"])
    assert lab.ids == ["00001", "00012"] and lab.lines.tolist() == [2, 4]
    np.testing.assert_allclose(lab.values[0], [.1, .2, .3, .4, .5, .6])
    assert L.known_set(L.read_labels(str(f)).names) == "vidmimic6"
    g = tmp_path / "reaction.csv"
    g.write_text("File_ID,Adoration,Amusement,Anxiety,Disgust,Empathic_Pain,Fear,Surprise\n"
                 "00003," + ",".join(["0.5"] * 7))
    assert L.read_labels(str(g), L.resolve_targets("reaction7")).names == HUME_REACTION_7


@pytest.mark.parametrize("text, targets, match", [
    (VM_HEADER + "\n00001,1,2,3,4,5\n", None, r"bad\.csv:2: expected 7 comma-separated fields .* got 6"),
    ("id,A,B,C\n00001,1,2,3\n", "vidmimic6", r"bad\.csv:1: header has 3 target columns .* expected 6"),
    (VM_HEADER.replace("Joy", "Sadness") + "\n", "vidmimic6", r"bad\.csv:1: header column 'Sadness' where 'Joy'"),
    (VM_HEADER + "\n00001,1,2,3,4,5,6\nvid7,1,2,3,4,5,6\n", None, r"bad\.csv:3: video id 'vid7' is not an unsigned"),
    (VM_HEADER + "\n-0003,1,2,3,4,5,6\n", None, r"bad\.csv:2: video id '-0003'"),
    (VM_HEADER + "\n00001,1,2,3,4,5,6\n1,1,2,3,4,5,6\n", None, r"bad\.csv:3: video 00001 already listed on line 2"),
    (VM_HEADER + "\n00001,1,2,x,4,5,6\n", None, r"bad\.csv:2: Determination 'x' is not a number"),
    (VM_HEADER + "\n00001,1,2,nan,4,5,6\n", None, r"bad\.csv:2: Determination 'nan' is not finite"),
    (VM_HEADER + "\n", None, r"bad\.csv: no data rows"),
    ("", None, r"bad\.csv: empty file"),
])
def test_read_labels_errors_name_file_and_line(tmp_path, text, targets, match):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(InputError, match=match):
        L.read_labels(str(f), L.resolve_targets(targets))


def test_missing_label_file_is_named(tmp_path):
    with pytest.raises(InputError, match=r"nope/valid_split\.csv: label file not found"):
        L.read_labels(str(tmp_path / "nope" / "valid_split.csv"))


def test_load_source_keeps_every_nth_frame_of_each_video(tmp_path):
    rng = np.random.default_rng(7)
    vids, frames, x = _ragged(rng, n_videos=5, d=3)
    names = np.array([f"faces/{int(v[1:]) + 1}/{f}.png" for v, f in zip(vids, frames)])
    np.savez(tmp_path / "f.npz", name=names, scores=x, embedding=x[:, :2] * 2)
    ff = load_source(tmp_path / "f.npz", "both", every=3)
    assert ff.dim == 5 and ff.every == 3
    for v in dict.fromkeys(vids.tolist()):
        idx = np.nonzero(vids == v)[0]
        idx = idx[np.argsort(frames[idx])][::3]
        got = ff.videos == f"{int(v[1:]) + 1:05d}"
        assert sorted(ff.frames[got].tolist()) == frames[idx].tolist()
        np.testing.assert_array_equal(ff.values[got][np.argsort(ff.frames[got])],
                                      np.c_[x[idx, :2] * 2, x[idx]])
    bad = tmp_path / "bad.npz"
    np.savez(bad, name=np.array(["00001/x.jpg"]), scores=np.zeros((1, 10), np.float32))
    with pytest.raises(InputError, match=r"bad\.npz: frame '00001/x\.jpg' is not named <video folder>/<frame"):
        load_source(bad, "scores")
    with pytest.raises(InputError, match=r"bad\.npz: no 'embedding' array \(have name, scores\)"):
        load_source(bad, "embedding")


def test_video_features_reports_videos_without_frames():
    ff = FrameFeatures(videos=np.array(["00001", "00001", "00002"], dtype=object), frames=np.array([0, 5, 0]),
                       values=np.arange(6, dtype=np.float32).reshape(3, 2), input="scores",
                       sources=[{"path": "/f.npz"}], folders={"00003": "/faces/00003"},
                       empty={"00003": "/faces/00003"})
    with pytest.raises(InputError, match=r"2 of 4 videos have no face crop.*00003 \(/faces/00003\); "
                                         r"00009 \(no folder in /f.npz\)"):
        video_features(ff, ["00001", "00003", "00002", "00009"])
    reports = []
    ids, x = video_features(ff, ["00002", "00003", "00001"], on_missing="skip", log=reports.append)
    assert ids == ["00002", "00001"] and "00003 (/faces/00003)" in reports[0]
    np.testing.assert_allclose(x[1], [1, 2, 1, 1, 0, 1, 2, 3])  # mean, std, min, max of rows 0..1
    with pytest.raises(InputError, match="00003"):  # every video of the sources, empty folders included
        video_features(ff, None)


# ----------------------------------------------------------------------------------------------
# CLI end to end
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """Frame scores whose per-video mean drives 6 intensities; train/val/test ids continuing."""
    d = tmp_path_factory.mktemp("eri")
    rng = np.random.default_rng(5)
    w = rng.normal(size=(10, 6)) / 3
    names, scores, labels = [], [], {}
    for vid in range(1, 131):
        n = int(rng.integers(3, 30))
        level = rng.normal(size=10)
        frames = np.sort(rng.choice(np.arange(400), n, replace=False))
        names += [f"{vid:05d}/{f}.jpg" for f in frames]
        scores.append(level + 0.3 * rng.normal(size=(n, 10)))
        labels[f"{vid:05d}"] = 1 / (1 + np.exp(-(level @ w))) + 0.03 * rng.normal(size=6)
    np.savez(d / "frames.npz", name=np.array(names), scores=np.concatenate(scores).astype(np.float32),
             embedding=rng.normal(size=(len(names), 4)).astype(np.float32))
    ids = list(labels)

    def write(path, part):
        path.write_text("\n".join([VM_HEADER] + [",".join([v, *(f"{x:.5f}" for x in labels[v])]) for v in part]) + "\n")

    write(d / "train_split.csv", ids[:80])
    write(d / "valid_split.csv", ids[80:110])
    (d / "test.txt").write_text("\n".join(["Filename"] + ids[110:]) + "\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["intensity", "train", "--labels", str(d / "train_split.csv"), "--val-labels",
                       str(d / "valid_split.csv"), "--features", str(d / "frames.npz"), "--targets", "vidmimic6",
                       "--every", "2", "--epochs", "20", "--batch-size", "32", "--lr", "0.03",
                       "--out", str(d / "run"), "--no-progress"])
    assert rc == 0, out.getvalue()
    return d, labels, ids, out.getvalue()


def test_cli_train_then_predict_writes_submission(synthetic_run, capsys):
    d, labels, ids, out = synthetic_run
    meta = json.loads((d / "run" / "regressor.json").read_text())
    assert meta["targets"] == list(HUME_VIDMIMIC_6) and meta["in_dim"] == 40 and meta["features"]["every"] == 2
    assert len(meta["training"]["history"]) == 20 and meta["training"]["videos"] == 80
    assert f"best epoch {meta['training']['best_epoch']}" in out

    assert cli.main(["intensity", "predict", str(d / "run"), "--features", str(d / "frames.npz"),
                     "--videos", str(d / "test.txt"), "--out", str(d / "sub.csv")]) == 0
    lines = (d / "sub.csv").read_text().splitlines()
    assert lines[0] == "Filename,Admiration,Amusement,Determination,Empathic Pain,Excitement,Joy"
    assert [r.split(",")[0] for r in lines[1:]] == ids[110:]
    sub = L.read_submission(str(d / "sub.csv"), HUME_VIDMIMIC_6)
    assert ((sub.values > 0) & (sub.values < 1)).all()
    y = np.stack([labels[v] for v in sub.ids])
    assert R.mean_pearson(sub.values, y) > 0.8  # held-out test videos

    capsys.readouterr()
    assert cli.main(["intensity", "predict", str(d / "run"), "--features", str(d / "frames.npz"),
                     "--labels", str(d / "valid_split.csv"), "--out", str(d / "val.csv")]) == 0
    val_p = float(capsys.readouterr().out.split("mean Pearson ")[1].split()[0])
    assert val_p == pytest.approx(meta["training"]["best_val_mean_pearson"], abs=1e-4)


def _fail_replace(src, dst):
    raise OSError("disk full")


def test_cli_errors_name_the_file_and_leave_no_partial_output(synthetic_run, tmp_path, capsys, monkeypatch):
    d, labels, ids, _ = synthetic_run
    listed = tmp_path / "ids.txt"
    listed.write_text("00111\n00999\n00112\n")  # 00999 has no frames
    out = tmp_path / "sub.csv"
    rc = cli.main(["intensity", "predict", str(d / "run"), "--features", str(d / "frames.npz"),
                   "--videos", str(listed), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "00999" in err and "frames.npz" in err and "--on-missing skip" in err
    assert list(tmp_path.iterdir()) == [listed]  # no partial submission, no temp file
    rc = cli.main(["intensity", "predict", str(d / "run"), "--features", str(d / "frames.npz"),
                   "--videos", str(listed), "--out", str(out), "--on-missing", "skip"])
    assert rc == 0 and "skipped 1 of 3 videos" in capsys.readouterr().err
    assert [r.split(",")[0] for r in out.read_text().splitlines()[1:]] == ["00111", "00112"]
    # a write that fails at the end leaves the previous file and no temporary file behind
    before = out.read_text()
    with monkeypatch.context() as m:
        m.setattr("hsemo_jax.fileio.os.replace", _fail_replace)
        assert cli.main(["intensity", "predict", str(d / "run"), "--features", str(d / "frames.npz"),
                         "--videos", str(d / "test.txt"), "--out", str(out)]) == 2
        assert "disk full" in capsys.readouterr().err
    assert out.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["ids.txt", "sub.csv"]
    # wrong target count against the trained run, missing label file
    bad = tmp_path / "bad.csv"
    bad.write_text("id,A,B,C,D,E,F,G\n00111,1,2,3,4,5,6,7\n")
    rc = cli.main(["intensity", "predict", str(d / "run"), "--features", str(d / "frames.npz"),
                   "--labels", str(bad), "--out", str(tmp_path / "x.csv")])
    assert rc == 2 and "bad.csv:1: header has 7 target columns" in capsys.readouterr().err
    rc = cli.main(["intensity", "train", "--labels", str(tmp_path / "missing.csv"), "--features",
                   str(d / "frames.npz"), "--out", str(tmp_path / "r")])
    assert rc == 2 and "missing.csv: label file not found" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "r").exists()


def test_cli_warns_when_every_epoch_is_one_step_and_the_last_is_best(synthetic_run, tmp_path, capsys):
    d = synthetic_run[0]
    assert cli.main(["intensity", "train", "--labels", str(d / "train_split.csv"), "--val-labels",
                     str(d / "valid_split.csv"), "--features", str(d / "frames.npz"), "--every", "2",
                     "--epochs", "3", "--batch-size", "512", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "every epoch was a single step (batch size 512, 80 training videos)" in err, err


def test_cli_checks_its_outputs_before_reading_features(synthetic_run, tmp_path, capsys, monkeypatch):
    d = synthetic_run[0]
    monkeypatch.setattr("hsemo_jax.intensity.frames.load_frames", lambda *a, **k: pytest.fail("features read"))
    (tmp_path / "file").write_text("x")
    assert cli.main(["intensity", "predict", str(d / "run"), "--features", str(d / "frames.npz"),
                     "--out", str(tmp_path)]) == 2
    assert "existing folder" in capsys.readouterr().err
    assert cli.main(["intensity", "train", "--labels", str(d / "train_split.csv"), "--features",
                     str(d / "frames.npz"), "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_cli_predict_refuses_an_out_that_is_one_of_its_inputs(synthetic_run, tmp_path, capsys, monkeypatch):
    """`intensity predict --out` naming the label or video list it reads would replace that file."""
    import shutil

    d = synthetic_run[0]
    monkeypatch.setattr("hsemo_jax.intensity.frames.load_frames", lambda *a, **k: pytest.fail("features read"))
    labels = tmp_path / "valid_split.csv"
    shutil.copy(d / "valid_split.csv", labels)
    before = labels.read_bytes()
    for flag in ("--labels", "--videos"):
        assert cli.main(["intensity", "predict", str(d / "run"), "--features", str(d / "frames.npz"),
                         flag, str(labels), "--out", str(labels)]) == 2
        assert "would replace the input" in capsys.readouterr().err
    assert labels.read_bytes() == before
    for name in ("regressor.json", "regressor.npz"):  # the run's own files
        before = (d / "run" / name).read_bytes()
        assert cli.main(["intensity", "predict", str(d / "run"), "--features", str(d / "frames.npz"),
                         "--videos", str(d / "test.txt"), "--out", str(d / "run" / name)]) == 2
        assert "would replace the input" in capsys.readouterr().err
        assert (d / "run" / name).read_bytes() == before


def test_cli_from_face_folders_names_empty_video_folder(tmp_path, capsys):
    """--faces + --model: features extracted once (cached); an empty video folder is an error naming
    it, or skipped and listed."""
    import cv2

    from hsemo_jax.checkpoint import ModelInfo, save_model
    from hsemo_jax.models import build

    model = tmp_path / "mbf"
    save_model(build("mobilefacenet", 10, seed=1), ModelInfo.for_arch("mobilefacenet", 10), model)
    faces = tmp_path / "faces"
    rng = np.random.default_rng(6)
    rows = []
    for v in range(1, 5):
        (faces / f"{v:05d}").mkdir(parents=True)
        for f in (0, 5):
            cv2.imwrite(str(faces / f"{v:05d}" / f"{f}.jpg"), rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))
        rows.append(f"{v:05d}," + ",".join(f"{x:.3f}" for x in rng.random(7)))
    (faces / "00005").mkdir()  # a video without face crops
    rows.append("00005," + ",".join(["0.5"] * 7))
    lab = tmp_path / "train_split.csv"
    lab.write_text("\n".join(["Filename," + ",".join(HUME_REACTION_7)] + rows) + "\n")
    args = ["intensity", "train", "--labels", str(lab), "--faces", str(faces), "--model", str(model),
            "--every", "1", "--epochs", "2", "--extract-batch-size", "8", "--out", str(tmp_path / "run"),
            "--no-progress"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "1 of 5 videos" in err and str(faces / "00005") in err
    assert not (tmp_path / "run" / "regressor.json").exists()
    assert cli.main(args + ["--on-missing", "skip"]) == 0
    err = capsys.readouterr().err
    assert "using cached features" in err and "skipped 1 of 5" in err and str(faces / "00005") in err
    meta = json.loads((tmp_path / "run" / "regressor.json").read_text())
    assert meta["target_set"] == "reaction7" and meta["training"]["videos"] == 4
    assert meta["features"]["model"]["arch"] == "mobilefacenet"
