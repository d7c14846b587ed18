"""`hsemo-jax predict` end to end on real faces (the bundled astronaut clip, LFW crops)."""
import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from hsemo_jax.cli import main as cli_main
from hsemo_jax.errors import InputError
from hsemo_jax.labels import AU_NAMES, HSE_CLASSES_8
from hsemo_jax.predict import predict

CLIP = Path(__file__).resolve().parents[1] / "examples" / "astronaut.mp4"


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_video_to_csv_and_plot(model_dir, tmp_path, capsys):
    out, png = tmp_path / "a.csv", tmp_path / "a.png"
    assert cli_main(["predict", str(CLIP), "--model", model_dir, "--smooth", "gaussian", "--batch-size", "8",
                     "--out", str(out), "--plot", str(png)]) == 0
    rows = _read_csv(out)
    frames = {int(r["frame"]) for r in rows}
    assert frames == set(range(48))  # every frame has a row, with or without a face
    faces = [r for r in rows if r["track_id"] != ""]
    assert len({int(r["frame"]) for r in faces}) >= 40  # the astronaut is found in most frames
    p = np.array([[float(r[f"p_{c}"]) for c in HSE_CLASSES_8] for r in faces])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert all(r["expression"] in HSE_CLASSES_8 and r["compound"] for r in faces)
    assert all(-10 < float(r["valence"]) < 10 for r in faces)
    assert not (tmp_path / "a.csv.partial").exists()
    assert png.stat().st_size > 10_000
    summary = capsys.readouterr().out
    assert "48 frame(s)" in summary and "without a face" in summary


def test_folder_of_crops_reports_corrupt_files(model_dir, tmp_path):
    from skimage import data

    folder = tmp_path / "cropped_aligned"
    folder.mkdir()
    for i, face in enumerate(data.lfw_subset()[:5], start=1):
        rgb = np.repeat((face * 255).astype(np.uint8)[..., None], 3, axis=-1)
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), cv2.resize(rgb, (112, 112)))
    (folder / "00009.jpg").write_bytes(b"not a jpeg")
    table = predict(str(folder), [model_dir], detector="none", batch_size=4)
    assert list(table["frame"]) == [1, 2, 3, 4, 5]  # ABAW frame numbers from the file names
    assert table.has_face.all() and [s.source for s in table.skipped] == [str(folder / "00009.jpg")]
    # for the plot: the model as given, and the folder as the frames' sequence (a timeline, not stills)
    from hsemo_jax.predict.plot import layout

    assert table.models == (model_dir,) and set(table.sequences) == {str(folder)}
    assert not layout(table).still
    # blending a model with itself changes nothing
    twice = predict(str(folder), [model_dir, model_dir], weights=[0.3, 0.7], detector="none", batch_size=4)
    np.testing.assert_allclose(twice["p_Anger"], table["p_Anger"], rtol=1e-5)



def test_progress_counts_unreadable_files_as_done(model_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), np.zeros((112, 112, 3), np.uint8))
    (folder / "b.jpg").write_bytes(b"")  # counted in the total, then skipped
    predict(str(folder), [model_dir], detector="none", progress=True)
    err = capsys.readouterr().err
    assert "skipped" in err and "2/2 frames (100%)" in err, err


def test_a_model_with_valence_arousal_blends_with_one_without(model_dir, tmp_path):
    # the blend has the expressions of both and no valence/arousal; each model's expression scores are
    # its own first 8 outputs (the 10-output model's last two are not expressions)
    from hsemo_jax.checkpoint import ModelInfo, save_model
    from hsemo_jax.models import registry

    plain = tmp_path / "mbf8"
    save_model(registry.build("mobilefacenet", 8, seed=1), ModelInfo.for_arch("mobilefacenet", 8), plain)
    frame = cv2.cvtColor(cv2.VideoCapture(str(CLIP)).read()[1], cv2.COLOR_BGR2RGB)
    face = frame[30:120, 70:160]
    names = [f"p_{c}" for c in HSE_CLASSES_8]
    alone = [np.array([predict(face, [m], detector="none")[c][0] for c in names]) for m in (model_dir, str(plain))]
    blend = predict(face, [model_dir, str(plain)], weights=[0.25, 0.75], detector="none")
    assert "valence" not in blend.columns
    np.testing.assert_allclose([blend[c][0] for c in names], 0.25 * alone[0] + 0.75 * alone[1], rtol=1e-5)
    # the device program takes each model's expression count from Backbone.of (compiling a two-model
    # program here would cost ~30 s): the 10-output model's 8, not its 10, in a blend without VA
    from hsemo_jax import load_model
    from hsemo_jax.predict import device

    assert [device.Backbone.of(load_model(m), with_va=False).num_classes for m in (model_dir, plain)] == [8, 8]


def test_a_frame_with_more_faces_than_the_device_program_keeps_is_warned(model_dir, capsys):
    from skimage import data

    tile = cv2.resize(data.astronaut()[40:220, 140:300], (80, 80))
    group = np.concatenate([np.concatenate([tile] * 4, axis=1)] * 3, axis=0)  # 12 faces
    table = predict(group, [model_dir])
    assert table.has_face.sum() == 8  # the device program's limit
    assert "warning: 1 frame(s) reached the 8 faces per frame" in capsys.readouterr().err

def test_bad_inputs_name_the_file(model_dir, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 1000)
    out = tmp_path / "o.csv"
    assert cli_main(["predict", str(bad), "--model", model_dir, "--out", str(out)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "o.csv.partial").exists()
    with pytest.raises(InputError, match="no such file"):
        predict(str(tmp_path / "missing.mp4"), [model_dir])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        predict(str(tmp_path / "empty"), [model_dir])
    with pytest.raises(InputError, match="weights"):
        predict(str(CLIP), [model_dir, model_dir], weights=[0.5, 0.6])
    # the Python API reads one video; a glob of videos (which the command runs one by one) is named as such
    with pytest.raises(InputError, match=r"matches 1 video\(s\).*one video at a time"):
        predict(str(CLIP.parent / "*.mp4"), [model_dir])
    with pytest.raises(InputError, match=r"holds 1 video\(s\) \(astronaut.mp4, ...\).*quoted glob"):
        predict(str(CLIP.parent), [model_dir])  # a folder of videos, not of images


def test_interrupted_run_keeps_previous_output(model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o.csv"
    out.write_text("previous results\n")
    from hsemo_jax.predict import track

    calls = {"n": 0}
    real = track.IoUTracker.update

    def interrupt_after_10_frames(self, boxes, frame):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return real(self, boxes, frame)

    # tracking runs in the detection thread: its Ctrl-C must reach the caller all the same
    monkeypatch.setattr(track.IoUTracker, "update", interrupt_after_10_frames)
    assert cli_main(["predict", str(CLIP), "--model", model_dir, "--batch-size", "4", "--out", str(out)]) == 130
    assert out.read_text() == "previous results\n"
    assert "interrupted" in capsys.readouterr().err
    partial = _read_csv(tmp_path / "o.csv.partial")
    assert 0 < len(partial) and {int(r["frame"]) for r in partial} <= set(range(10))


def test_tracker_keeps_ids_across_motion_and_gaps():
    from hsemo_jax.predict.track import IoUTracker

    tr = IoUTracker(min_iou=0.3, max_gap=2)
    a = np.array([[10, 10, 50, 50], [100, 100, 150, 150]], np.float32)
    assert list(tr.update(a, 0)) == [0, 1]
    assert list(tr.update(a[::-1] + 3, 1)) == [1, 0]  # order of detections does not matter
    assert list(tr.update(np.zeros((0, 4), np.float32), 2)) == []
    assert list(tr.update(a[:1] + 6, 3)) == [0]  # one-frame gap: same track
    assert list(tr.update(a[:1] + 6, 9)) == [2]  # gap longer than max_gap: new track


def test_crop_truncates_and_clamps_like_the_original():
    from hsemo_jax.predict.detect import crop

    img = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    np.testing.assert_array_equal(crop(img, [2.9, 3.7, 10.2, 12.9]), img[3:12, 2:10])
    assert crop(img, [-5, -5, 8, 8]).shape == (8, 8, 3)
    assert crop(img, [40, 40, 50, 50]) is None


def test_threaded_map_keeps_order_and_reraises():
    from hsemo_jax.predict.video import threaded_map

    assert list(threaded_map(lambda x: x * x, range(50), queue_size=3)) == [x * x for x in range(50)]

    def boom(x):
        if x == 7:
            raise InputError("frame 7 is bad")
        return x

    out = []
    with pytest.raises(InputError, match="frame 7"):
        for v in threaded_map(boom, range(20)):
            out.append(v)
    assert out == list(range(7))


def test_multitask_head_adds_action_units(model_dir, tmp_path):
    from hsemo_jax.labels import AU_NAMES
    from hsemo_jax.models.heads import MTLHead, save_head

    head_dir = tmp_path / "head"
    save_head(MTLHead(512 + 10, seed=3), head_dir)
    table = predict(str(CLIP), [model_dir], head=str(head_dir), au_thresholds=[0.5], batch_size=8)
    face = table.has_face
    p = np.stack([table[f"p_{a}"][face] for a in AU_NAMES], axis=1)
    assert p.shape[1] == 12 and ((p > 0) & (p < 1)).all()
    np.testing.assert_array_equal(np.stack([table[a][face] for a in AU_NAMES], axis=1), (p >= 0.5).astype(int))
    assert (table["AU1"][~face] == -1).all()
    save_head(MTLHead(1280 + 10, seed=3), tmp_path / "enet_head")
    with pytest.raises(InputError, match="1290 inputs"):
        predict(str(CLIP), [model_dir], head=str(tmp_path / "enet_head"))


def test_detection_on_a_shrunk_frame_finds_the_full_resolution_box():
    """The default detect width (960) maps boxes back to full resolution: on a 1280x720 frame the
    astronaut's face box matches full-resolution detection within a few percent of its size."""
    from skimage import data

    from hsemo_jax.predict.detect import DETECT_WIDTH, HaarDetector

    frame = np.full((720, 1280, 3), 90, np.uint8)
    frame[200:712, 600:1112] = data.astronaut()[:512, :512]
    full = HaarDetector(max_width=0)(frame)
    small = HaarDetector(max_width=DETECT_WIDTH)(frame)
    assert len(full) == len(small) == 1
    size = full[0, 2] - full[0, 0]
    assert np.abs(small - full).max() < 0.08 * size
    assert 600 <= small[0, 0] and small[0, 2] <= 1112  # in full-frame pixels


def _no_decoding(monkeypatch):
    """Any frame decoded fails the test: these errors must come before the work."""
    from hsemo_jax.predict.video import FrameSource

    def decode(self):
        pytest.fail("a frame was decoded")
        yield

    monkeypatch.setattr(FrameSource, "__iter__", decode)


@pytest.mark.parametrize("extra, words", [
    (["--batch-size", "0"], "batch size"),
    (["--smooth", "gaussian", "--sigma", "-1"], "sigma"),
    (["--smooth", "gaussian", "--k", "-2"], "k "),
    (["--smooth", "box", "--k", "-2"], "k "),
    (["--detect-width", "-5"], "detect width"),
    (["--detect-size", "8"], "detect size"),
    (["--detect-every", "0"], "detect every"),
    (["--au-thresholds", "1.5"], "thresholds"),
    (["--plot", "{tmp}/p.pdf"], ".png"),  # (an existing folder as --out now gets the CSV inside)
    (["--out", "{file}/o.csv"], "{file}"),
    (["--plot", "{file}/p.png"], "{file}"),
])
def test_arguments_and_outputs_are_checked_before_any_frame(model_dir, tmp_path, capsys, monkeypatch, extra, words):
    _no_decoding(monkeypatch)
    (tmp_path / "file").write_text("in the way\n")
    fill = lambda s: s.format(tmp=tmp_path, file=tmp_path / "file")  # noqa: E731
    out = tmp_path / "o.csv"
    assert cli_main(["predict", str(CLIP), "--model", model_dir, "--out", str(out), *map(fill, extra)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and fill(words) in err, err
    assert not out.exists() and not (tmp_path / "o.csv.partial").exists()


def test_a_read_only_output_folder_is_refused_before_any_frame(model_dir, tmp_path, capsys, monkeypatch):
    import errno
    import os

    _no_decoding(monkeypatch)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root: the mode bits bind nobody; refuse as the kernel would
        real_open = os.open

        def refuse(path, *args, **kwargs):
            if Path(path).parent == ro:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse)
    for flag in ("--out", "--plot"):
        args = ["--out", str(tmp_path / "o.csv")] if flag == "--plot" else []
        assert cli_main(["predict", str(CLIP), "--model", model_dir, *args, flag, str(ro / "x")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and str(ro) in err, err
    assert not list(ro.iterdir()) and not list(tmp_path.glob("o.csv*"))


def _truncated_video(path, frames=60):
    """An MJPG AVI cut in the middle: OpenCV opens it and decodes about half of the frames its
    header declares, while FFmpeg prints what it finds on file descriptor 2."""
    rng = np.random.default_rng(0)
    full = path.with_name("full_" + path.name)
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 25, (112, 112))
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
    writer.release()
    data = full.read_bytes()
    path.write_bytes(data[:len(data) // 2 + 777])
    return path


def test_a_video_that_ends_early_is_reported_and_decoder_chatter_summarised(model_dir, tmp_path, capfd):
    video = _truncated_video(tmp_path / "cut.avi")
    out = tmp_path / "cut.csv"
    assert cli_main(["predict", str(video), "--model", model_dir, "--detector", "none", "--out", str(out)]) == 0
    frames = {int(r["frame"]) for r in _read_csv(out)}
    assert 10 < len(frames) < 50
    err = capfd.readouterr().err
    assert f"{video}: decoded {len(frames)} of the 60 frames its header declares" in err, err
    assert err.count("[mjpeg @") <= 1 and "message line(s) from the video/image decoders" in err, err
    ours = [line for line in err.strip().splitlines() if not line.startswith("predict: ")]  # not the progress lines
    assert len(ours) == 2, err  # the two warnings, no raw decoder output


def test_decoder_chatter_of_a_damaged_image_is_summarised_once(model_dir, tmp_path, capfd):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
        (folder / name).write_bytes((folder / name).read_bytes()[:1500])  # libjpeg: premature end
    table = predict(str(folder), [model_dir], detector="none", batch_size=4)
    assert len(table) == 3
    err = capfd.readouterr().err
    assert "3 message line(s) from the video/image decoders" in err and err.count("JPEG") == 1, err


def test_unrelated_images_never_share_a_track_id(model_dir, tmp_path):
    """Photos of a folder are separate pictures: each face its own track. Numbered frames of one
    ABAW video folder are one sequence; two such folders (one glob) are two."""
    crops = [np.full((112, 112, 3), 40 * i, np.uint8) for i in range(1, 4)]
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, img in zip(("beach.jpg", "party.jpg", "office.jpg"), crops):
        cv2.imwrite(str(photos / name), img)
    table = predict(str(photos), [model_dir], detector="none", batch_size=4)
    assert sorted(table["track_id"]) == [0, 1, 2]
    for video in ("v1", "v2"):
        (tmp_path / "aligned" / video).mkdir(parents=True)
        for i, img in enumerate(crops, start=1):
            cv2.imwrite(str(tmp_path / "aligned" / video / f"{i:05d}.jpg"), img)
    table = predict(str(tmp_path / "aligned" / "*" / "*.jpg"), [model_dir], detector="none", batch_size=4)
    tracks = {Path(s).parent.name: set() for s in table["source"]}
    for s, t in zip(table["source"], table["track_id"]):
        tracks[Path(s).parent.name].add(int(t))
    assert len(tracks["v1"]) == len(tracks["v2"]) == 1 and tracks["v1"] != tracks["v2"]


def test_smoothing_follows_a_track_across_the_files_of_a_frame_folder():
    """An ABAW frame folder has one source file per frame: a track is the folder's, not the file's,
    so `--smooth` must smooth across files (it did nothing there when tracks were grouped by file)."""
    from hsemo_jax.labels import HSE_CLASSES_8
    from hsemo_jax.predict.pipeline import _smooth_tracks, rows_to_table

    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        p = rng.random(len(HSE_CLASSES_8))
        rows.append({"source": f"clip/{i + 1:05d}.jpg", "sequence": "clip", "frame": i, "time": None,
                     "track_id": 0, "box": np.array([0, 0, 10, 10.0]), "probs": p / p.sum(),
                     "va": rng.uniform(-1, 1, 2), "au": None})
    table = rows_to_table(rows, HSE_CLASSES_8, True, [])
    raw = table["valence"].copy()
    _smooth_tracks(table, "box", None, 2)
    want = np.array([raw[max(0, i - 2):i + 3].mean() for i in range(12)])
    np.testing.assert_allclose(table["valence"], want, rtol=1e-6)
