"""TFDS builders without TensorFlow: official-format fixtures round-trip field by field; bad
input is reported (file:line, image names) and failed builds leave nothing behind."""
import json
import sys

import cv2
import numpy as np
import pytest

import data_fixtures as F
from data_pipelines.build import build_dataset, open_dataset, read_report
from hsemo_jax import labels
from hsemo_jax.errors import InputError
from hsemo_jax.labels import HSE_CLASSES_8


def _build(name, manual, out, **kw):
    return build_dataset(name, manual, out, progress=False, workers=2, **kw)


def _rows(src):
    return [src[i] for i in range(len(src))]


def _nothing_left(out):
    return not out.exists()  # not even an empty --data-dir


@pytest.fixture(scope="module")
def affectnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("affectnet")
    images = F.make_affectnet(root / "manual")
    (res,) = _build("affectnet", root / "manual", root / "out")
    return root, images, res


def test_tfds_builds_and_reads_without_tensorflow(affectnet):
    # TensorFlow is not installed here: the build above and these reads must not need it.
    import grain

    _, _, res = affectnet
    src = open_dataset(res.path, "train")
    assert [r["label"] for r in grain.MapDataset.source(src)] == [4, 1, 5, 0]
    assert sorted(p.name for p in res.path.glob("*.array_record*")) == [
        "affectnet-train.array_record-00000-of-00001", "affectnet-validation.array_record-00000-of-00001"]
    assert "tensorflow" not in sys.modules


def test_affectnet_official_fields_round_trip(affectnet):
    root, images, res = affectnet
    assert res.path == root / "out" / "affectnet" / "1.0.0"
    src = open_dataset(res.path)
    kept = {s: [r for r in rows if r[5] < 8] for s, rows in
            (("train", F.AFFECTNET_TRAIN), ("validation", F.AFFECTNET_VAL))}
    for split, rows in kept.items():
        got = _rows(src[split])
        assert [g["name"].decode() for g in got] == [r[0] for r in rows]  # file order kept
        for g, (f, x, y, w, h, code, v, a) in zip(got, rows):
            crop = images[f][y:y + h, x:x + w]
            assert g["image"] == cv2.imencode(".jpg", crop)[1].tobytes()  # HSE crop, cv2 JPEG q95
            assert g["expression"] == code
            assert HSE_CLASSES_8[g["label"]] == ("Neutral", "Happiness", "Sadness", "Surprise", "Fear",
                                                 "Disgust", "Anger", "Contempt")[code]
            np.testing.assert_array_equal(g["va"], np.float32([v, a]))
            assert g["va_mask"]
            np.testing.assert_array_equal(g["face_box"], [x, y, w, h])
            assert g["landmarks_mask"]
            lm = np.array([float(t) for t in F.landmarks_text(x, y).split(";")], np.float32).reshape(68, 2)
            np.testing.assert_allclose(g["landmarks"] + np.float32([x, y]), lm, atol=1e-4)
    report = read_report(res.path)
    assert report["train"]["written"] == 4 and report["train"]["skipped"] == 1
    assert report["train"]["reasons"] == {"expression code 9 (Uncertain)": {"count": 1, "names": ["12/b3.jpg"]}}
    assert report["validation"]["reasons"]["expression code 10 (No-Face)"]["names"] == ["7/c1.jpg"]


def test_affectnet_label_mapping_matches_spec():
    # AffectNet codes -> HSE alphabetical indices, and HSE -> Aff-Wild2 (AFFECTNET2MTL)
    assert labels.AFFECTNET_CODE_TO_HSE.tolist() == [5, 4, 6, 7, 3, 2, 0, 1]
    assert labels.HSE_TO_AFFWILD.tolist() == [5, 0, 2, 3, 4, 6, 7, 1]
    assert labels.AFFWILD_TO_HSE.tolist() == [1, 7, 2, 3, 4, 0, 5, 6]


def test_affectnet_headerless_validation_and_null_box(tmp_path):
    F.make_affectnet(tmp_path / "m", header_val=False)
    with open(tmp_path / "m" / "training.csv", "a") as f:
        f.write("12/b3.jpg,NULL,NULL,40,40,,1,0.1,0.1\n")
    (res,) = _build("affectnet", tmp_path / "m", tmp_path / "o")
    assert res.report["validation"]["written"] == 1
    assert res.report["train"]["reasons"]["face box is NULL"]["count"] == 1


def test_affectnet_missing_and_corrupt_images_skip_or_error(tmp_path):
    F.make_affectnet(tmp_path / "m")
    imgs = tmp_path / "m" / "Manually_Annotated_Images"
    (imgs / "689" / "a1.jpg").unlink()
    data = (imgs / "12" / "b2.jpg").read_bytes()
    (imgs / "12" / "b2.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (imgs / "12" / "b4.jpg").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match=r"689/a1\.jpg: missing image"):
        _build("affectnet", tmp_path / "m", tmp_path / "o", on_bad_image="error")
    assert _nothing_left(tmp_path / "o")  # no partial dataset, no temporary folder
    (res,) = _build("affectnet", tmp_path / "m", tmp_path / "o")
    reasons = res.report["train"]["reasons"]
    assert reasons["missing image"]["names"] == ["689/a1.jpg"]
    assert reasons["corrupt image (truncated JPEG)"]["names"] == ["12/b2.jpg"]
    assert reasons["corrupt image (cannot decode)"]["names"] == ["12/b4.jpg"]
    assert res.report["train"]["written"] == 1
    assert [r["name"] for r in _rows(open_dataset(res.path, "train"))] == [b"689/a0.jpg"]


@pytest.mark.parametrize("bad, match", [
    ("689/a9.jpg,10,20,60,70,,1,0.5", r"training\.csv:7: expected 9 comma-separated fields, got 8"),
    ("689/a9.jpg,10,20,sixty,70,,1,0.5,0.5", r"training\.csv:7: face_width must be an integer, got 'sixty'"),
    ("689/a9.jpg,10,20,60,70,,12,0.5,0.5", r"training\.csv:7: expression must be one of 0\.\.10, got 12"),
    ("689/a9.jpg,10,20,60,70,1;2;3,1,0.5,0.5", r"training\.csv:7: facial_landmarks must have 136 values"),
])
def test_affectnet_malformed_line_names_file_line_and_text(tmp_path, bad, match):
    F.make_affectnet(tmp_path / "m")
    with open(tmp_path / "m" / "training.csv", "a") as f:
        f.write(bad + "\n")
    with pytest.raises(InputError, match=match) as e:
        _build("affectnet", tmp_path / "m", tmp_path / "o")
    assert repr(bad) in str(e.value)
    assert _nothing_left(tmp_path / "o")


def test_affectnet_folder_layout(tmp_path):
    m = tmp_path / "m"
    files = {("train", "Happiness", "x.jpg"): 4, ("train", "3", "y.png"): 7, ("val", "anger", "z.jpg"): 0}
    for i, ((split, cls, fn), _) in enumerate(files.items()):
        p = m / split / cls / fn
        p.parent.mkdir(parents=True)
        p.write_bytes(cv2.imencode(p.suffix, F.crop(i, 40))[1].tobytes())
    (res,) = _build("affectnet", m, tmp_path / "o")
    src = open_dataset(res.path)
    got = {(s, r["name"].decode()): r for s in src for r in _rows(src[s])}
    for (split, cls, fn), label in files.items():
        r = got[("train" if split == "train" else "validation", f"{cls}/{fn}")]
        assert r["label"] == label
        assert r["image"] == (m / split / cls / fn).read_bytes()  # stored as is
        assert not r["va_mask"] and not r["landmarks_mask"]
        np.testing.assert_array_equal(r["face_box"], [0, 0, 40, 40])
    (m / "train" / "Smiling").mkdir()
    with pytest.raises(InputError, match="unknown class folder 'Smiling'"):
        _build("affectnet", m, tmp_path / "o2")


def test_s_aff_wild2_fields_and_masks_round_trip(tmp_path):
    lines = F.make_s_aff_wild2(tmp_path / "m")
    (tmp_path / "m" / "test_set_examples").mkdir()
    (tmp_path / "m" / "test_set_examples" / "MTL.txt").write_text(
        "image,valence,arousal,expression,aus\nv2/00009.jpg,\nvideo1/00002.jpg,\n")
    (res,) = _build("s_aff_wild2", tmp_path / "m", tmp_path / "o")
    src = open_dataset(res.path)
    seen = 0
    for split in ("train", "validation"):
        for r in _rows(src[split]):
            f = lines[r["name"].decode()].split(",")
            video, frame = f[0].rsplit("/", 1)
            assert r["video"].decode() == video and r["frame"] == int(frame[:-4])
            assert r["image"] == (tmp_path / "m" / "cropped_aligned" / f[0]).read_bytes()
            np.testing.assert_array_equal(r["va"], np.float32(f[1:3]))
            np.testing.assert_array_equal(r["va_mask"], np.float32(f[1:3]) >= -1)
            assert r["expression"] == int(f[3]) and r["expression_mask"] == (int(f[3]) >= 0)
            np.testing.assert_array_equal(r["aus"], np.int32(f[4:]))
            np.testing.assert_array_equal(r["au_mask"], np.int32(f[4:]) >= 0)
            seen += 1
    assert seen == len(lines) == 7
    assert any(not r["va_mask"].any() for r in _rows(src["train"]))  # missing codes present
    test = _rows(src["test"])
    assert [r["name"] for r in test] == [b"v2/00009.jpg", b"video1/00002.jpg"]
    assert not any(r["expression_mask"] or r["va_mask"].any() or r["au_mask"].any() for r in test)


@pytest.mark.parametrize("bad, match", [
    ("video1/00004.jpg,0.1,0.2,3", "expected 16 comma-separated fields, got 4"),
    ("video1/00004.jpg,0.1,0.2,9," + ",".join(["0"] * 12), "expression must be one of -1..7, got 9"),
    ("video1/00004.jpg,1.5,0.2,1," + ",".join(["0"] * 12), "valence must be in"),
    ("video1/00004.jpg,0.1,0.2,1," + ",".join(["0"] * 11 + ["2"]), "AU26 must be one of -1, 0, 1, got 2"),
    ("video1/frame4.jpg,0.1,0.2,1," + ",".join(["0"] * 12), "image must be <video>/<frame number>.jpg"),
])
def test_s_aff_wild2_malformed_line(tmp_path, bad, match):
    F.make_s_aff_wild2(tmp_path / "m")
    p = tmp_path / "m" / "validation_set_annotations.txt"
    p.write_text(p.read_text() + bad + "\n")
    with pytest.raises(InputError, match=match) as e:
        _build("s_aff_wild2", tmp_path / "m", tmp_path / "o")
    assert "validation_set_annotations.txt:4: " in str(e.value) and repr(bad) in str(e.value)
    assert _nothing_left(tmp_path / "o")


def test_aff_wild2_per_video_configs(tmp_path):
    values = F.make_aff_wild2(tmp_path / "m")
    results = {r.name: r for r in _build("aff_wild2", tmp_path / "m", tmp_path / "o")}
    assert sorted(results) == ["aff_wild2/au", "aff_wild2/expr", "aff_wild2/va"]
    for task, field in (("expr", "expression"), ("va", "va"), ("au", "aus")):
        src = open_dataset(results[f"aff_wild2/{task}"].path)
        assert sorted(src) == sorted(values[task])
        for split, videos in values[task].items():
            got = _rows(src[split])
            expect = [(v, i + 1, val) for v, vals in videos.items() for i, val in enumerate(vals)
                      if not (v == "vidA" and i + 1 == 2)]  # frame 2 of vidA has no crop
            assert [(r["video"].decode(), int(r["frame"])) for r in got] == [e[:2] for e in expect]
            for r, (video, frame, val) in zip(got, expect):
                assert r["name"].decode() == f"{video}/{frame:05d}.jpg"
                got_v = np.asarray(r[field])
                np.testing.assert_array_equal(got_v, np.asarray(val, got_v.dtype))
                mask = {"expression": "expression_mask", "va": "va_mask", "aus": "au_mask"}[field]
                np.testing.assert_array_equal(r[mask], np.asarray(val) >= (-1 if task == "va" else 0))
                others = [m for m in ("expression_mask", "va_mask", "au_mask") if m != mask]
                assert not any(np.any(r[m]) for m in others)
        reasons = results[f"aff_wild2/{task}"].report["train"]["reasons"]
        assert reasons == {"frame has no cropped image": {"count": 1, "names": ["vidA/00002.jpg"]}}


def test_aff_wild2_missing_video_folder_and_bad_header(tmp_path):
    F.make_aff_wild2(tmp_path / "m")
    ann = tmp_path / "m" / "6th ABAW Annotations" / "EXPR_Recognition_Challenge" / "Train_Set"
    (ann / "ghost.txt").write_text("Neutral,Anger\n1\n2\n")
    (res,) = _build("aff_wild2/expr", tmp_path / "m", tmp_path / "o")
    assert res.report["train"]["reasons"]["video folder missing from cropped_aligned"] == {
        "count": 2, "names": ["ghost"]}
    with pytest.raises(InputError, match="ghost: video folder missing"):
        _build("aff_wild2/expr", tmp_path / "m", tmp_path / "o2", on_bad_image="error")
    (ann / "ghost.txt").write_text("3\n1\n2\n")
    with pytest.raises(InputError, match=r"ghost\.txt:1: line 1 must be the header"):
        _build("aff_wild2/expr", tmp_path / "m", tmp_path / "o3")
    assert _nothing_left(tmp_path / "o3")


def test_c_expr_frames_round_trip(tmp_path):
    frames1 = F.make_video(tmp_path / "m" / "clip1.avi", 5)
    frames2 = F.make_video(tmp_path / "m" / "sub" / "clip2.avi", 3)
    (tmp_path / "m" / "broken.mp4").write_bytes(b"\x00" * 100)
    (res,) = _build("c_expr", tmp_path / "m", tmp_path / "o")
    got = _rows(open_dataset(res.path, "test"))
    assert [(r["video"].decode(), int(r["frame"])) for r in got] == (
        [("clip1", i) for i in range(1, 6)] + [("sub/clip2", i) for i in range(1, 4)])
    for r, fr in zip(got, frames1 + frames2):
        np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(r["image"], np.uint8), cv2.IMREAD_COLOR), fr)
        assert r["fps"] == pytest.approx(10.0)
    assert r["name"] == b"sub/clip2/00003"
    assert res.report["test"]["skipped"] == 1
    assert list(res.report["test"]["reasons"].values())[0]["names"] == ["broken"]


def test_existing_build_needs_overwrite(affectnet, tmp_path):
    root, _, res = affectnet
    with pytest.raises(InputError, match="already exists"):
        _build("affectnet", root / "manual", root / "out")
    info = json.loads((res.path / "dataset_info.json").read_text())
    assert {s["name"] for s in info["splits"]} == {"train", "validation"}
