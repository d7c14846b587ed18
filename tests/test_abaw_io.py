"""ABAW readers/writers: round trips, and bad input reported with file, line and value."""
import os

import numpy as np
import pytest

from hsemo_jax.errors import InputError
from hsemo_jax.postprocess import abaw_io

GT_HEADER = "image,Valence,Arousal,Expression,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def gt_lines():
    return [GT_HEADER,
            "video1/00001.jpg,0.5,-0.25,3,0,1,0,0,0,0,0,0,0,0,1,0",
            "video1/00002.jpg,-5,-5,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1",
            "video1/00004.jpg,-5,-5,7,0,0,0,0,0,0,0,0,0,0,0,0",
            "2-30-640x360/00001.jpg,0.1,0.2,0,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1"]


def test_read_labels(tmp_path):
    gt = abaw_io.read_mtl_labels(write(tmp_path / "gt.txt", gt_lines()))
    assert gt.videos.tolist() == ["video1"] * 3 + ["2-30-640x360"]
    assert gt.frames.tolist() == [1, 2, 4, 1] and gt.lines.tolist() == [2, 3, 4, 5]
    assert gt.expr.tolist() == [3, -1, 7, 0]
    np.testing.assert_allclose(gt.va[0], [0.5, -0.25])
    assert gt.any_valid.tolist() == [True, False, True, True]


@pytest.mark.parametrize("line,message", [
    ("video1/00001.jpg,0.5,0.1,3,0,1,0,0,0,0,0,0,0,0,1", "gt.txt:2: expected 16 comma-separated fields, got 15"),
    ("video1/frame1.jpg,0.5,0.1,3,0,1,0,0,0,0,0,0,0,0,1,0", "gt.txt:2: image 'video1/frame1.jpg' is not of the form"),
    ("video1/00001.jpg,nan,0.1,3,0,1,0,0,0,0,0,0,0,0,1,0", "gt.txt:2: valence 'nan' is not finite"),
    ("video1/00001.jpg,0.5,1.5,3,0,1,0,0,0,0,0,0,0,0,1,0", "gt.txt:2: arousal '1.5' outside"),
    ("video1/00001.jpg,0.5,0.1,8,0,1,0,0,0,0,0,0,0,0,1,0", r"gt.txt:2: expression '8' out of range \[-1, 7\]"),
    ("video1/00001.jpg,0.5,0.1,x,0,1,0,0,0,0,0,0,0,0,1,0", "gt.txt:2: expression 'x' is not a number"),
    ("video1/00001.jpg,0.5,0.1,3,0,2,0,0,0,0,0,0,0,0,1,0", r"gt.txt:2: AU2 '2' out of range \[-1, 1\]"),
])
def test_label_errors_name_file_line_value(tmp_path, line, message):
    with pytest.raises(InputError, match=message):
        abaw_io.read_mtl_labels(write(tmp_path / "gt.txt", [GT_HEADER, line]))


def test_label_file_level_errors(tmp_path):
    with pytest.raises(InputError, match="empty file"):
        abaw_io.read_mtl_labels(write(tmp_path / "e.txt", []))
    with pytest.raises(InputError, match="no data rows"):
        abaw_io.read_mtl_labels(write(tmp_path / "h.txt", [GT_HEADER]))
    lines = gt_lines() + ["video1/00002.jpg,0.5,0.1,3,0,1,0,0,0,0,0,0,0,0,1,0"]
    with pytest.raises(InputError, match=r"d.txt:6: image 'video1/00002.jpg' already listed on line 3"):
        abaw_io.read_mtl_labels(write(tmp_path / "d.txt", lines))


def test_predictions_roundtrip_both_layouts(tmp_path):
    rng = np.random.default_rng(0)
    images = ["v/00001.jpg", "v/00002.jpg", "w_left/00010.jpg"]
    va = rng.uniform(-1.2, 1.2, (3, 2)).astype(np.float32)
    p = rng.dirichlet(np.ones(8), 3).astype(np.float32)
    q = rng.random((3, 12)).astype(np.float32)
    path = str(tmp_path / "scores.txt")
    abaw_io.write_mtl_scores(path, images, va, p, q)
    r = abaw_io.read_mtl_predictions(path)
    assert r.kind == "scores" and r.images == images and r.videos.tolist() == ["v", "v", "w_left"]
    np.testing.assert_array_equal(r.va, va)  # float32 values survive the text round trip exactly
    np.testing.assert_array_equal(r.expr, p)
    np.testing.assert_array_equal(r.aus, q)
    sub = str(tmp_path / "sub.txt")
    abaw_io.write_mtl_submission(sub, images, va, p.argmax(1), (q >= 0.5).astype(int))
    text = open(sub).read().splitlines()
    assert text[0] == "image,valence,arousal,expression,aus" and text[1].count(",") == 15
    s = abaw_io.read_mtl_predictions(sub)
    assert s.kind == "submission" and s.expr_labels.tolist() == p.argmax(1).tolist()
    np.testing.assert_array_equal(s.aus, (q >= 0.5).astype(np.float32))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]  # no temp files left


def test_prediction_errors(tmp_path):
    header = abaw_io.SCORES_HEADER
    row = "v/00001.jpg," + ",".join(["0.1"] * 2 + ["0.125"] * 8 + ["0.1"] * 12)  # the 8 probabilities sum to 1
    with pytest.raises(InputError, match=r"p.txt:1: unknown header"):
        abaw_io.read_mtl_predictions(write(tmp_path / "p.txt", ["image,foo", row]))
    with pytest.raises(InputError, match=r"p.txt:3: AU26 probability '1.5' outside \[0, 1\]"):
        abaw_io.read_mtl_predictions(write(tmp_path / "p.txt", [header, row, row.replace("00001", "00002")[:-3] + "1.5"]))
    with pytest.raises(InputError, match=r"p.txt:2: valence 'inf' is not finite"):
        abaw_io.read_mtl_predictions(write(tmp_path / "p.txt", [header, row.replace(",0.1", ",inf", 1)]))
    with pytest.raises(InputError, match=r"s.txt:2: expression '9' out of range \[0, 7\]"):
        abaw_io.read_mtl_predictions(write(tmp_path / "s.txt", [abaw_io.SUBMISSION_HEADER,
                                                                 "v/00001.jpg,0.1,0.2,9" + ",0" * 12]))
    with pytest.raises(InputError, match="non-finite"):
        abaw_io.write_mtl_scores(str(tmp_path / "x.txt"), ["v/00001.jpg"], [[np.nan, 0]], np.zeros((1, 8)),
                                 np.zeros((1, 12)))
    with pytest.raises(InputError, match="length mismatch"):
        abaw_io.write_mtl_submission(str(tmp_path / "x.txt"), ["v/00001.jpg"], np.zeros((2, 2)), [0, 0],
                                     np.zeros((2, 12), int))
    assert not os.path.exists(tmp_path / "x.txt")


def test_align(tmp_path):
    gt = abaw_io.read_mtl_labels(write(tmp_path / "gt.txt", gt_lines()))
    images = ["video1/00001.jpg", "video1/00003.jpg", "video1/00004.jpg", "2-30-640x360/00001.jpg"]
    path = str(tmp_path / "p.txt")
    abaw_io.write_mtl_scores(path, images, np.zeros((4, 2)), np.full((4, 8), 0.125), np.zeros((4, 12)))
    al = abaw_io.align(abaw_io.read_mtl_predictions(path), gt)
    assert al.expr_true.tolist() == [3, -1, 7, 0]  # frame 3 has no ground truth: context only
    assert al.au_true[1].tolist() == [-1] * 12 and al.va_true[1].tolist() == [-5, -5]
    # unknown video
    abaw_io.write_mtl_scores(path, images + ["other/00001.jpg"], np.zeros((5, 2)), np.full((5, 8), 0.125),
                             np.zeros((5, 12)))
    with pytest.raises(InputError, match=r"p.txt:6: video 'other' is not in the ground truth"):
        abaw_io.align(abaw_io.read_mtl_predictions(path), gt)
    # a labelled ground-truth row without prediction
    abaw_io.write_mtl_scores(path, images[:3], np.zeros((3, 2)), np.full((3, 8), 0.125), np.zeros((3, 12)))
    pred = abaw_io.read_mtl_predictions(path)
    with pytest.raises(InputError, match=r"gt.txt:5: no prediction for labelled image '2-30-640x360/00001.jpg'"):
        abaw_io.align(pred, gt)
    assert abaw_io.align(pred, gt, allow_missing=True).n_missing == 1


def test_ce_submission_and_lists(tmp_path):
    images = [abaw_io.ce_image_name("vid", f) for f in (1, 2, 10)]
    assert images[2] == "vid/00010.jpg"
    path = str(tmp_path / "ce.txt")
    abaw_io.write_ce_submission(path, images, np.array([0, 6, 3]))
    lines = open(path).read().splitlines()
    assert lines[0].startswith("image_location,Fearfully_Surprised,Happily_Surprised") and lines[3] == "vid/00010.jpg,3"
    ce = abaw_io.read_ce_submission(path)
    assert ce.labels.tolist() == [0, 6, 3] and ce.frames.tolist() == [1, 2, 10]
    with pytest.raises(InputError, match=r"ce.txt:3: class '7' out of range \[0, 6\]"):
        abaw_io.read_ce_submission(write(tmp_path / "ce.txt", [lines[0], "vid/00001.jpg,1", "vid/00002.jpg,7"]))
    with pytest.raises(InputError, match="0..6"):
        abaw_io.write_ce_submission(path, images, np.array([0, 7, 3]))
    lst = abaw_io.read_image_list(write(tmp_path / "MTL.txt", ["image,valence,arousal,expression,aus",
                                                                 "video45_1/00001.jpg,", "video45_1/00008.jpg,"]))
    assert lst == ["video45_1/00001.jpg", "video45_1/00008.jpg"]


def test_task_files(tmp_path):
    f, v = abaw_io.read_task_file(write(tmp_path / "a.txt", ["Neutral,Anger", "0", "-1", "7"]), "EXPR")
    assert f.tolist() == [1, 2, 3] and v.tolist() == [0, -1, 7]
    f, v = abaw_io.read_task_file(write(tmp_path / "b.txt", ["valence,arousal", "0.1,0.2", "-5,-5"]), "VA")
    assert v.shape == (2, 2) and v[1, 0] == -5
    with pytest.raises(InputError, match=r"c.txt:3: expected 12 comma-separated fields, got 11"):
        abaw_io.read_task_file(write(tmp_path / "c.txt", ["AU1", ",".join(["0"] * 12), ",".join(["0"] * 11)]), "AU")
