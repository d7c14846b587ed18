"""`hsemo-jax predict` with several inputs (one run each, checked before any work) and `--abaw-out`
(ABAW MTL predictions that `hsemo-jax evaluate` and `abaw_io.read_mtl_predictions` read)."""
import csv

import cv2
import numpy as np
import pytest

from hsemo_jax.cli import main as cli_main
from hsemo_jax.labels import AU_NAMES, HSE_CLASSES_8
from hsemo_jax.postprocess import abaw_io


def _video(path, frames=5, seed=0):
    """A small MJPG AVI of noise frames (with --detector none each frame is one face)."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (112, 112))
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
    writer.release()
    return path


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory):
    from hsemo_jax.models.heads import MTLHead, save_head

    out = tmp_path_factory.mktemp("heads") / "mbf_head"
    save_head(MTLHead(512 + 10, seed=3), out)  # on the fixture MobileFaceNet's 512-d features + 10 scores
    return str(out)


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("predict: ")]  # progress
    assert "Traceback" not in err and len(lines) == 1, err
    for w in words:
        assert w in lines[0], err
    return lines[0]


def test_a_glob_of_two_videos_gives_two_csvs_and_one_abaw_file_evaluate_reads(model_dir, head_dir, tmp_path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    _video(clips / "v1.avi", 5, seed=0)
    _video(clips / "v2.avi", 4, seed=1)
    out, abaw = tmp_path / "out", tmp_path / "abaw.txt"
    assert cli_main(["predict", str(clips / "*.avi"), "--model", model_dir, "--detector", "none", "--head", head_dir,
                     "--batch-size", "4", "--out", str(out) + "/", "--abaw-out", str(abaw)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["v1.emotions.csv", "v2.emotions.csv"]
    assert [len(_rows(out / f"v{i}.emotions.csv")) for i in (1, 2)] == [5, 4]
    pred = abaw_io.read_mtl_predictions(str(abaw))
    assert pred.kind == "scores"
    assert pred.images == [f"v1/{i:05d}.jpg" for i in range(1, 6)] + [f"v2/{i:05d}.jpg" for i in range(1, 5)]
    # the file's values are the CSV's, expressions mapped to the Aff-Wild2 order (Other <- Contempt)
    v1 = _rows(out / "v1.emotions.csv")
    np.testing.assert_allclose(pred.va[:5, 0], [float(r["valence"]) for r in v1], rtol=1e-5)
    np.testing.assert_allclose(pred.expr[:5, 0], [float(r["p_Neutral"]) for r in v1], rtol=1e-5)
    np.testing.assert_allclose(pred.expr[:5, 7], [float(r["p_Contempt"]) for r in v1], rtol=1e-5)
    np.testing.assert_allclose(pred.aus[:5, 2], [float(r["p_AU4"]) for r in v1], rtol=1e-5)

    rng = np.random.default_rng(2)
    gt = ["image,Valence,Arousal,Expression," + ",".join(AU_NAMES)]
    for name in pred.images:
        v, a = rng.uniform(-1, 1, 2)
        gt.append(",".join([name, f"{v:.3f}", f"{a:.3f}", str(rng.integers(0, 8)),
                            *map(str, rng.integers(0, 2, 12))]))
    (tmp_path / "gt.txt").write_text("\n".join(gt) + "\n")
    capsys.readouterr()
    assert cli_main(["evaluate", str(abaw), str(tmp_path / "gt.txt")]) == 0
    report = capsys.readouterr().out
    assert "9 rows (scores layout)" in report and "P_MTL" in report, report


def test_abaw_submission_layout_of_an_image_folder(model_dir, head_dir, tmp_path):
    frames = tmp_path / "cropped_aligned" / "10-60-1280x720_right"
    frames.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in (1, 2, 4):
        cv2.imwrite(str(frames / f"{i:05d}.jpg"), rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
    sub = tmp_path / "sub.txt"
    assert cli_main(["predict", str(frames), "--model", model_dir, "--detector", "none", "--head", head_dir,
                     "--out", str(tmp_path / "f.csv"), "--abaw-out", str(sub), "--abaw-layout", "submission",
                     "--au-thresholds", "0.5"]) == 0
    pred = abaw_io.read_mtl_predictions(str(sub))
    assert pred.kind == "submission"
    assert pred.images == [f"10-60-1280x720_right/{i:05d}.jpg" for i in (1, 2, 4)]
    rows = _rows(tmp_path / "f.csv")
    hse = np.array([[float(r[f"p_{c}"]) for c in HSE_CLASSES_8] for r in rows])
    affwild = ["Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Contempt"]
    assert pred.expr_labels.tolist() == [affwild.index(HSE_CLASSES_8[i]) for i in hse.argmax(1)]
    np.testing.assert_array_equal(pred.aus, [[int(r[a]) for a in AU_NAMES] for r in rows])


def _table(rows, classes=HSE_CLASSES_8):
    """A Predictions table from (source, frame, track_id, box side, neutral probability) rows."""
    from hsemo_jax.predict.pipeline import Predictions

    n = len(rows)
    face = np.array([r[2] >= 0 for r in rows])
    side = np.array([r[3] for r in rows], float)
    cols = {"source": np.array([r[0] for r in rows], dtype=object), "frame": np.array([r[1] for r in rows]),
            "time": np.full(n, np.nan), "track_id": np.array([r[2] for r in rows]),
            "x1": np.where(face, 0.0, np.nan), "y1": np.where(face, 0.0, np.nan),
            "x2": np.where(face, side, np.nan), "y2": np.where(face, side, np.nan)}
    p_neutral = np.array([r[4] for r in rows], float)
    for c in classes:
        cols[f"p_{c}"] = np.where(face, p_neutral if c == "Neutral" else (1 - p_neutral) / (len(classes) - 1), np.nan)
    cols["valence"] = cols["arousal"] = np.where(face, p_neutral, np.nan)
    for a in AU_NAMES:
        cols[f"p_{a}"] = np.where(face, 0.25, np.nan)
        cols[a] = np.where(face, 0, -1)
    return Predictions(cols, tuple(classes))


def test_abaw_rows_follow_the_largest_track_and_fill_frames_without_it():
    from hsemo_jax.predict import abaw

    nan = np.nan
    table = _table([
        ("clip.mp4", 0, -1, nan, nan),  # no face yet: takes the first prediction of the main track
        ("clip.mp4", 1, 0, 50, 0.1), ("clip.mp4", 1, 1, 10, 0.9),  # track 0 is the larger face
        ("clip.mp4", 2, 1, 10, 0.8),  # only the small face: repeats frame 1 of track 0
        ("clip.mp4", 3, 0, 50, 0.3),
        ("other.mp4", 0, -1, nan, nan), ("other.mp4", 1, -1, nan, nan),  # never a face: neutral
    ])
    images, cols, notes = abaw.mtl_rows(table)
    assert images == ["clip/00001.jpg", "clip/00002.jpg", "clip/00003.jpg", "clip/00004.jpg",
                      "other/00001.jpg", "other/00002.jpg"]
    np.testing.assert_allclose(cols["expr"][:, 0], [0.1, 0.1, 0.1, 0.3, 1.0, 1.0])
    np.testing.assert_allclose(cols["va"][:, 0], [0.1, 0.1, 0.1, 0.3, 0.0, 0.0])
    np.testing.assert_allclose(cols["au"][4:], 0.0)
    np.testing.assert_allclose(cols["expr"].sum(axis=1), 1.0)
    assert any("other: no face" in n for n in notes) and any("clip: 2 of 4 frame(s)" in n for n in notes), notes
    # a 7-class model: Other (from Contempt) is 0 and the 8 columns still sum to 1
    from hsemo_jax.labels import HSE_CLASSES_7

    _, cols, _ = abaw.mtl_rows(_table([("clip.mp4", 0, 0, 50, 0.4)], HSE_CLASSES_7))
    assert cols["expr"][0, 7] == 0 and np.isclose(cols["expr"][0].sum(), 1.0)


def test_a_missing_input_is_refused_before_any_output(model_dir, tmp_path, capsys):
    good = _video(tmp_path / "good.avi")
    out = tmp_path / "out"
    out.mkdir()
    missing = tmp_path / "missing.mp4"
    assert cli_main(["predict", str(good), str(missing), "--model", model_dir, "--detector", "none",
                     "--out", str(out)]) == 2
    _one_line_error(capsys, str(missing), "no such file")
    assert not list(out.iterdir())


@pytest.mark.parametrize("flag", ["--out", "--plot"])
def test_a_file_for_the_outputs_of_two_inputs_is_refused(model_dir, tmp_path, capsys, flag):
    a, b = _video(tmp_path / "a.avi"), _video(tmp_path / "b.avi")
    target = tmp_path / "results.csv"
    extra = ["--out", str(tmp_path / "o") + "/"] if flag == "--plot" else []
    assert cli_main(["predict", str(a), str(b), "--model", model_dir, "--detector", "none", *extra,
                     flag, str(target)]) == 2
    _one_line_error(capsys, str(target), flag, "folder")
    assert not target.exists() and not (tmp_path / "o").exists()


def test_two_inputs_of_one_name_and_abaw_without_a_head_are_refused(model_dir, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a, b = _video(tmp_path / "x" / "same.avi"), _video(tmp_path / "y" / "same.avi")
    assert cli_main(["predict", str(a), str(b), "--model", model_dir, "--detector", "none",
                     "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, str(tmp_path / "same.emotions.csv"), str(a), str(b))
    assert cli_main(["predict", str(a), "--model", model_dir, "--detector", "none",
                     "--out", str(tmp_path / "o.csv"), "--abaw-out", str(tmp_path / "abaw.txt")]) == 2
    _one_line_error(capsys, "--head")
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "beach.jpg"), np.zeros((112, 112, 3), np.uint8))
    assert cli_main(["predict", str(photos), "--model", model_dir, "--detector", "none", "--head", "unused",
                     "--out", str(tmp_path / "o.csv"), "--abaw-out", str(tmp_path / "abaw.txt")]) == 2
    _one_line_error(capsys, str(photos / "beach.jpg"), "frame number")
    assert not list(tmp_path.glob("o.csv*")) and not (tmp_path / "abaw.txt").exists()


def test_a_bad_head_stops_several_inputs_once_before_any_output(model_dir, tmp_path, capsys):
    a, b = _video(tmp_path / "a.avi"), _video(tmp_path / "b.avi")
    out = tmp_path / "out"
    assert cli_main(["predict", str(a), str(b), "--model", model_dir, "--detector", "none",
                     "--head", str(tmp_path / "no_head"), "--out", str(out) + "/"]) == 2
    _one_line_error(capsys, str(tmp_path / "no_head"))
    assert not out.exists()


def test_a_corrupt_video_among_several_fails_alone(model_dir, head_dir, tmp_path, capsys):
    good = _video(tmp_path / "good.avi")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    out, abaw = tmp_path / "out", tmp_path / "abaw"
    assert cli_main(["predict", str(bad), str(good), "--model", model_dir, "--detector", "none", "--head", head_dir,
                     "--out", str(out) + "/", "--abaw-out", str(abaw) + "/"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"hsemo-jax predict: error: {bad}" in err, err
    assert "1 of 2 input(s) failed" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["good.emotions.csv"]
    assert len(_rows(out / "good.emotions.csv")) == 5
    assert sorted(p.name for p in abaw.iterdir()) == ["good.abaw.txt"]  # a folder: one ABAW file per input
    assert abaw_io.read_mtl_predictions(str(abaw / "good.abaw.txt")).images == [f"good/{i:05d}.jpg" for i in range(1, 6)]


def test_a_head_on_a_video_without_a_face_gives_empty_au_columns_and_a_neutral_abaw_file(model_dir, head_dir,
                                                                                          tmp_path, capsys):
    # no face, so no row carries AU probabilities: the AU columns must still be there (the labels read them)
    clip = tmp_path / "blank.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 25, (96, 96))
    for _ in range(3):
        writer.write(np.zeros((96, 96, 3), np.uint8))
    writer.release()
    out, abaw = tmp_path / "blank.csv", tmp_path / "blank.txt"
    assert cli_main(["predict", str(clip), "--model", model_dir, "--detector", "haar", "--head", head_dir,
                     "--out", str(out), "--abaw-out", str(abaw)]) == 0, capsys.readouterr().err
    rows = _rows(out)
    assert len(rows) == 3 and {f"p_{a}" for a in AU_NAMES} | set(AU_NAMES) <= set(rows[0])
    assert all(r["p_AU1"] == "" and r["AU1"] == "" for r in rows)
    pred = abaw_io.read_mtl_predictions(str(abaw))
    assert pred.images == [f"blank/{i:05d}.jpg" for i in range(1, 4)]
    assert "no face" in capsys.readouterr().err


def test_an_output_path_that_is_an_input_file_is_refused_and_the_input_kept(model_dir, tmp_path, capsys):
    clip = _video(tmp_path / "clip.avi", 2)
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.jpg"), np.zeros((112, 112, 3), np.uint8))
    before = clip.read_bytes(), (photos / "a.jpg").read_bytes()
    for source, outputs in ((clip, ["--out", str(clip)]),
                            (clip, ["--out", str(tmp_path / "c.csv"), "--plot", str(tmp_path / "." / "clip.avi")]),
                            (photos, ["--out", str(photos / "a.jpg")])):
        assert cli_main(["predict", str(source), "--model", model_dir, "--detector", "none", *outputs]) == 2
        _one_line_error(capsys, "overwrite this input file")
    assert (clip.read_bytes(), (photos / "a.jpg").read_bytes()) == before
    assert not (tmp_path / "c.csv").exists()


def test_a_detector_without_its_model_file_stops_several_inputs_once_before_any_output(model_dir, tmp_path, capsys):
    a, b = _video(tmp_path / "a.avi"), _video(tmp_path / "b.avi")
    out = tmp_path / "out"
    not_onnx = tmp_path / "yunet.onnx"
    not_onnx.write_text("not an ONNX model")
    for extra, words in ((["--detector", "yunet"], ["--detector-model"]),
                         (["--detector", "yunet", "--detector-model", str(not_onnx)], [str(not_onnx), "YuNet"]),
                         (["--detector", "mtcnn", "--detector-model", str(tmp_path)], [str(tmp_path), "pnet.pt"])):
        assert cli_main(["predict", str(a), str(b), "--model", model_dir, *extra, "--out", str(out) + "/"]) == 2
        _one_line_error(capsys, *words)
        assert not out.exists()
    # a model file for a detector that reads none (a forgotten --detector yunet) is not silently dropped
    assert cli_main(["predict", str(a), "--model", model_dir, "--detector", "none", "--detector-model",
                     str(not_onnx), "--out", str(tmp_path / "a.csv")]) == 0
    assert f"warning: --detector-model {not_onnx} is ignored" in capsys.readouterr().err


def test_one_input_with_outputs_named_as_folders_writes_into_them(model_dir, head_dir, tmp_path):
    """'--out results/' (as for several inputs) is not a file called 'results' (Path() drops the slash)."""
    clip = _video(tmp_path / "clip.avi", 2)
    target = tmp_path / "results"
    assert cli_main(["predict", str(clip), "--model", model_dir, "--detector", "none", "--head", head_dir,
                     "--out", str(target) + "/", "--plot", str(target) + "/", "--abaw-out", str(target) + "/"]) == 0
    assert sorted(p.name for p in target.iterdir()) == ["clip.abaw.txt", "clip.emotions.csv", "clip.emotions.png"]
    assert len(_rows(target / "clip.emotions.csv")) == 2


def test_options_that_need_another_are_warned_when_it_is_missing(model_dir, tmp_path, capsys):
    clip = _video(tmp_path / "clip.avi", 2)
    assert cli_main(["predict", str(clip), "--model", model_dir, "--detector", "none", "--au-thresholds", "0.3",
                     "--abaw-layout", "submission", "--out", str(tmp_path / "c.csv")]) == 0
    err = capsys.readouterr().err
    assert "warning: --au-thresholds is ignored without --head" in err
    assert "warning: --abaw-layout is ignored without --abaw-out" in err
    assert "AU1" not in _rows(tmp_path / "c.csv")[0]


def test_a_plot_named_other_than_png_is_refused_before_any_work(model_dir, tmp_path, capsys):
    clip = _video(tmp_path / "clip.avi", 2)
    for name in ("clip.pdf", "clip.jpg", "clip"):  # the plot is always PNG data
        assert cli_main(["predict", str(clip), "--model", model_dir, "--detector", "none",
                         "--out", str(tmp_path / "c.csv"), "--plot", str(tmp_path / name)]) == 2
        _one_line_error(capsys, str(tmp_path / name), ".png")
        assert not (tmp_path / name).exists() and not (tmp_path / "c.csv").exists()


def test_the_streamed_partial_csv_keeps_one_header_with_a_head(model_dir, head_dir, tmp_path):
    # a first frame without a face, then one with: the rows streamed before the face must have the AU columns too
    from skimage import data

    from hsemo_jax.predict import predict
    from hsemo_jax.predict.writer import CsvOutput

    frames = [np.zeros((512, 512, 3), np.uint8), data.astronaut()]
    out = CsvOutput(tmp_path / "p.csv")
    predict(frames, [model_dir], detector="haar", head=head_dir, on_rows=out.write_rows)
    with open(out.abort(), newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 3 and "p_AU1" in rows[0] and {len(r) for r in rows} == {len(rows[0])}
