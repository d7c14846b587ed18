"""`hsemo_jax.Recognizer` and `hsemo_jax.load_model` (no network: a random-weight model directory,
and a published name served from a file placed in the cache, as tests/test_hub.py does)."""
from pathlib import Path

import cv2
import numpy as np
import pytest

import hsemo_jax
from hsemo_jax.errors import InputError
from hsemo_jax.labels import HSE_CLASSES_8
from hsemo_jax.models import preprocess, registry
from hsemo_jax.predict import predict

CLIP = Path(__file__).resolve().parents[1] / "examples" / "astronaut.mp4"


def _faces():
    cap = cv2.VideoCapture(str(CLIP))
    ok, bgr = cap.read()
    cap.release()
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return [rgb[43:104, 85:146], rgb[30:120, 70:160], rgb]


def test_predict_emotions_as_hsemotion(model_dir):
    fer = hsemo_jax.Recognizer(model_dir, progress=False)
    assert fer.is_mtl and tuple(fer.class_names) == HSE_CLASSES_8
    faces = _faces()
    model = hsemo_jax.load_model(model_dir)
    raw = np.asarray(model(preprocess("mobilefacenet", faces)))  # the model on PIL-exact inputs
    assert np.ptp(raw, axis=0).max() > 0.1  # the scores depend on the face (1e4 x the tolerance)
    label, scores = fer.predict_emotions(faces[0])
    assert scores.shape == (10,) and label == HSE_CLASSES_8[int(np.argmax(raw[0, :8]))]
    np.testing.assert_allclose(scores, raw[0], rtol=1e-5, atol=1e-5)
    labels, scores = fer.predict_emotions(faces, logits=False)
    assert labels == [HSE_CLASSES_8[int(i)] for i in np.argmax(raw[:, :8], axis=1)]
    e = np.exp(raw[:, :8] - raw[:, :8].max(axis=1, keepdims=True))
    np.testing.assert_allclose(scores[:, :8], e / e.sum(axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(scores[:, 8:], raw[:, 8:], atol=1e-5)  # valence, arousal stay raw
    gray = cv2.cvtColor(faces[0], cv2.COLOR_RGB2GRAY)
    assert fer.predict_emotions(gray)[0] in HSE_CLASSES_8  # grayscale is converted
    with pytest.raises(InputError, match="uint8"):
        fer.predict_emotions(faces[0].astype(np.float32))
    with pytest.raises(InputError, match="no faces"):
        fer.predict_emotions([])


def test_predict_emotions_runs_any_number_of_faces_in_a_few_shapes(model_dir):
    """Each new number of faces compiled the model again (~1 s for B0): chunks of batch_size,
    padded to powers of two, give the same scores as each face alone."""
    fer = hsemo_jax.Recognizer(model_dir, progress=False, batch_size=4)
    shapes, forward = [], fer.models[0].forward
    fer.models[0].forward = lambda x: shapes.append(len(x)) or forward(x)
    faces = (_faces() * 3)[:7]
    alone = np.stack([fer.predict_emotions(f)[1] for f in faces[:3]])
    for n in (3, 5, 7):
        _, scores = fer.predict_emotions(faces[:n])
        assert scores.shape == (n, 10)
        np.testing.assert_allclose(scores[:3], alone, rtol=1e-5, atol=1e-5)
    assert set(shapes) == {1, 4}, shapes  # 3 -> 4; 5 -> 4 + 1; 7 -> 4 + 4


def test_predict_returns_the_csv_columns_as_a_dataframe(model_dir, capsys):
    import pandas as pd

    fer = hsemo_jax.Recognizer(model_dir, batch_size=8)
    df = fer.predict(str(CLIP))
    assert isinstance(df, pd.DataFrame) and len(df) == 48
    table = predict(str(CLIP), [model_dir], batch_size=8)
    assert list(df.columns) == table.names
    np.testing.assert_allclose(df["p_Happiness"].to_numpy(), table["p_Happiness"])
    assert {"frame", "time", "track_id", "x1", "valence", "arousal", "expression", "compound"} <= set(df.columns)
    assert "48/48 frames (100%)" in capsys.readouterr().err  # progress, not on a terminal
    quiet = hsemo_jax.Recognizer(model_dir, batch_size=8, progress=False).predict(_faces()[2])
    assert len(quiet) == 1 and quiet["track_id"][0] == 0 and "frames (" not in capsys.readouterr().err


def test_published_name_and_pt_file(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    from test_hub import NAME, _checkpoint_bytes, _pin

    root = tmp_path / "cache"
    monkeypatch.setenv("HSEMO_JAX_CACHE", str(root))
    monkeypatch.setenv("HSEMO_JAX_BASE_URL", "http://127.0.0.1:9/")  # nothing listens: no download
    data, _ = _checkpoint_bytes(registry.build("mobilefacenet", 10, seed=3))
    _pin(monkeypatch, data)
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / f"{NAME}.pt").write_bytes(data)
    model = hsemo_jax.load_model(NAME)
    assert model.info.arch == "mobilefacenet"
    pt = tmp_path / "mine.pt"
    pt.write_bytes(data)
    face = _faces()[0]
    by_name = hsemo_jax.Recognizer(NAME, progress=False).predict_emotions(face)
    by_file = hsemo_jax.Recognizer(str(pt), progress=False).predict_emotions(face)
    assert by_name[0] == by_file[0]
    np.testing.assert_allclose(by_name[1], by_file[1], atol=1e-6)
    with pytest.raises(InputError, match="unknown model"):
        hsemo_jax.load_model("no_such_model")


def test_predict_emotions_refuses_a_path_or_none_in_one_line_and_takes_a_pil_image(model_dir):
    from PIL import Image

    fer = hsemo_jax.Recognizer(model_dir, progress=False)
    face = _faces()[0]
    for wrong in (str(CLIP), CLIP, None):  # a path is not a face crop: predict() reads files
        with pytest.raises(InputError, match=r"predict_emotions: expected .*face.*predict\("):
            fer.predict_emotions(wrong)
    label, scores = fer.predict_emotions(Image.fromarray(face))
    np.testing.assert_array_equal(scores, fer.predict_emotions(face)[1])


def test_predict_takes_a_list_of_frames_of_different_sizes(model_dir):
    faces = _faces()  # three crops of different sizes
    df = hsemo_jax.Recognizer(model_dir, detector="none", progress=False).predict(faces)
    assert list(df["frame"]) == [0, 1, 2] and list(df["x2"]) == [f.shape[1] for f in faces]
    with pytest.raises(InputError, match=r"<array> frame 1: expected uint8"):
        hsemo_jax.Recognizer(model_dir, detector="none", progress=False).predict([faces[0], faces[1] * 1.0])
