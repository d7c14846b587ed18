"""The device program of `predict` (`hsemo_jax.predict.device`) against the exact host path, on the
bundled astronaut clip; progress lines; numpy frames in."""
import io
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsemo_jax.errors import InputError
from hsemo_jax.predict import predict
from hsemo_jax.predict.device import crop_boxes, crop_resize, crop_resize_faces
from hsemo_jax.predict.progress import Progress

CLIP = Path(__file__).resolve().parents[1] / "examples" / "astronaut.mp4"


def _frames(n):
    cap = cv2.VideoCapture(str(CLIP))
    frames = []
    for _ in range(n):
        ok, bgr = cap.read()
        assert ok
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames)


def test_device_resize_is_pillows():
    """Shrinking, enlarging (by 64 -> 112 the float32 weights it had put 10% of the values one
    level off), a box that leaves the frame (clamped as the host crop is), and a tall crop
    (Pillow's vertical-first order at 112 px): Pillow's bits."""
    from PIL import Image

    rgb = _frames(1)[0]
    resize = jax.jit(crop_resize, static_argnums=2)
    for box in [(100.7, 50.2, 300.9, 230.1), (10, 10, 60, 50), (81.2, 38.1, 145.7, 102.6), (-5.5, -3, 400, 350),
                (150, 5, 190, 235)]:
        corners, nonempty = crop_boxes(jnp.array(box, jnp.float32), *rgb.shape[:2])
        assert bool(nonempty)
        x1, y1, x2, y2 = (int(v) for v in np.asarray(corners))
        expected = (max(int(box[0]), 0), max(int(box[1]), 0), min(int(box[2]), 320), min(int(box[3]), 240))
        assert (x1, y1, x2, y2) == expected
        for size in (112, 224):
            pil = np.asarray(Image.fromarray(rgb[y1:y2, x1:x2]).resize((size, size), Image.BILINEAR))
            np.testing.assert_array_equal(np.asarray(resize(rgb, corners, size)), pil, err_msg=f"{box} {size}")
    _, nonempty = crop_boxes(jnp.array([[5, 5, 5.9, 40], [330, 0, 400, 10]], jnp.float32), 240, 320)
    assert not np.asarray(nonempty).any()


@pytest.mark.parametrize("size", (112, 224))
def test_a_batch_of_faces_in_both_pass_orders_equals_each_face_alone(size):
    """`crop_resize_faces` runs the vertical-first order only when a face of the batch needs it,
    and reads 3 taps, not the window's 5 or 7, when no crop of the batch is larger than `size`:
    a batch mixing both orders and both tap counts gives each face the bits it gets alone (at 112
    px only the 50x40 face is at most `size`; at 224 all but the 40x230 one)."""
    frames = _frames(2)
    boxes = jnp.array([(100, 50, 300, 230), (150, 5, 190, 235), (10, 10, 60, 50), (20, 0, 60, 200)], jnp.float32)
    frame_of = jnp.array([0, 1, 1, 0], jnp.int32)
    batch = jax.jit(crop_resize_faces, static_argnums=(3, 4))(frames, frame_of, boxes, size, 256)
    alone = jax.jit(crop_resize, static_argnums=(2, 3))
    for i in range(len(boxes)):
        np.testing.assert_array_equal(np.asarray(batch[i]), np.asarray(alone(frames[int(frame_of[i])], boxes[i], size, 256)))


def test_a_window_around_the_crop_gives_the_same_bits():
    """The crop and resize read only a window of the frame around the face (the gathers' cost scales
    with it): the same bits as reading the whole frame, for crops inside, at an edge, at a corner."""
    rgb = np.ascontiguousarray(np.concatenate([_frames(1)[0]] * 2, axis=1))  # (240, 640, 3)
    whole = jax.jit(crop_resize, static_argnums=2)
    windowed = jax.jit(crop_resize, static_argnums=(2, 3))
    for box in [(100, 50, 300, 230), (600, 10, 640, 60), (0, 180, 90, 240), (3, 0, 131, 128)]:
        corners = jnp.array(box, jnp.float32)
        for size, window in ((224, 128), (112, 200), (224, 512)):
            if box[3] - box[1] > window or box[2] - box[0] > window:
                continue
            np.testing.assert_array_equal(np.asarray(windowed(rgb, corners, size, window)),
                                          np.asarray(whole(rgb, corners, size)), err_msg=f"{box} {window}")


def test_crops_larger_than_the_window_are_rerun_with_a_larger_one(model_dir, monkeypatch):
    """A 64 px first window: the astronaut's ~100 px crops do not fit, the batch is rerun with a
    window that holds them, and the results equal the whole-frame window's."""
    from hsemo_jax.predict import device

    frames = _frames(4)
    monkeypatch.setattr(device, "_HINTS", {})
    whole = predict(frames, [model_dir], batch_size=4)
    monkeypatch.setattr(device, "_HINTS", {})
    monkeypatch.setattr(device, "WINDOW", 64)
    small = predict(frames, [model_dir], batch_size=4)
    assert max(side for _, side in device._HINTS.values()) >= 128  # grew from 64
    assert whole.has_face.all()
    for c in ("x1", "y1", "x2", "y2", "p_Happiness", "valence"):
        np.testing.assert_array_equal(small[c], whole[c])


def test_device_path_matches_the_exact_host_path(model_dir, tmp_path):
    """Same faces, boxes, probabilities, valence/arousal and AU head outputs as the host path (the
    outputs depend on the face: the probabilities span more than 100 times the tolerance)."""
    from hsemo_jax.labels import AU_NAMES
    from hsemo_jax.models.heads import MTLHead, save_head

    save_head(MTLHead(512 + 10, seed=3), tmp_path / "head")
    kw = dict(batch_size=8, smooth="none", head=str(tmp_path / "head"))
    dev = predict(str(CLIP), [model_dir], **kw)
    host = predict(str(CLIP), [model_dir], exact_preprocess=True, **kw)
    assert list(dev["frame"]) == list(host["frame"]) == list(range(48))
    assert dev.has_face.all() and host.has_face.all()
    assert set(dev["track_id"]) == {0}  # one face, one track
    for c in ("x1", "y1", "x2", "y2"):
        np.testing.assert_allclose(dev[c], host[c], atol=1e-3)
    probs = [f"p_{c}" for c in dev.expression_names]
    assert max(np.ptp(dev[c]) for c in probs) > 0.01
    for c in probs + ["valence", "arousal"] + [f"p_{a}" for a in AU_NAMES]:
        np.testing.assert_allclose(dev[c], host[c], atol=1e-4)
    np.testing.assert_allclose(sum(dev[c] for c in probs), 1.0, atol=1e-5)


def test_the_budget_grows_with_the_faces_and_steps_down_when_they_fit_a_smaller_one(monkeypatch):
    from hsemo_jax.predict import device

    monkeypatch.setattr(device, "SHRINK_AFTER", 3)
    budget = device.Budget(8, 8)
    assert budget.steps == [8, 16, 32, 64] and budget.value == 8
    assert budget.after(9, 8) and budget.value == 16  # rerun with room for 9
    assert budget.after(33, 16) and budget.value == 64
    assert not budget.after(20, 64) and not budget.after(30, 64) and budget.value == 64
    assert not budget.after(40, 64) and budget.value == 64  # 40 needs 64: the count starts again
    for _ in range(2):
        assert not budget.after(32, 64) and budget.value == 64
    assert not budget.after(3, 64) and budget.value == 32  # three in a row that 32 holds
    # a batch dispatched with 64 before the step down, finding 40: no rerun, the budget grows back
    assert not budget.after(40, 64) and budget.value == 64
    assert device.Budget(8, 6).steps == [8, 16, 32, 48] and device.Budget(8, 6, per_frame=5).value == 48
    assert device.Budget(4, 8, per_frame=3).value == 16 and device.Budget(4, 1).steps == [4]
    one_step = device.Budget(4, 1)
    for _ in range(5):
        assert not one_step.after(0, 4) and one_step.value == 4


def test_more_faces_than_the_budget_and_numpy_frames(model_dir, monkeypatch):
    """Two faces per frame with a budget of one face per frame: the batch is rerun with room for
    all, and the budget steps back down after frames with one face; numpy frames give what the
    same frames give as a video."""
    from hsemo_jax.predict import device

    frames = _frames(3)
    half = frames[:, :, 40:200]  # the astronaut's face is within x 80..220 in the first frames
    double = np.ascontiguousarray(np.concatenate([half, half[:, :, ::-1]], axis=2))  # (3, 240, 320, 3), two faces
    monkeypatch.setattr(device, "_HINTS", {})
    one = predict(double, [model_dir], batch_size=1)
    assert [per_frame for per_frame, _ in device._HINTS.values()] == [2]
    single = np.concatenate([half, np.zeros_like(half)], axis=2)  # one face, the same shape
    monkeypatch.setattr(device, "SHRINK_AFTER", 2)
    stepped = predict(np.concatenate([double[:1], single]), [model_dir], batch_size=1)
    assert [per_frame for per_frame, _ in device._HINTS.values()] == [1]  # two frames of one face
    assert list(np.bincount(stepped["frame"])) == [2, 1, 1, 1]
    np.testing.assert_array_equal(stepped["p_Anger"][:2], one["p_Anger"][:2])
    many = predict(double, [model_dir], batch_size=8)  # compiled shapes are shared by the tests
    assert (np.bincount(one["frame"]) == 2).all() and len(set(one["track_id"])) == 2
    np.testing.assert_allclose(one["x1"], many["x1"], atol=1e-3)  # batches of 1 and 8 round differently
    for c in ("p_Anger", "valence"):
        np.testing.assert_allclose(one[c], many[c], atol=1e-5)
    video = predict(str(CLIP), [model_dir], batch_size=8)
    arrays = predict(_frames(48), [model_dir], batch_size=8)
    assert list(arrays["source"][:1]) == ["<array>"] and np.isnan(arrays["time"]).all()
    np.testing.assert_allclose(arrays["p_Happiness"], video["p_Happiness"], atol=1e-6)
    single = predict(frames[0], [model_dir], batch_size=8)
    assert list(single["frame"]) == [0] and single.has_face.all()
    with pytest.raises(InputError, match="uint8"):
        predict(frames.astype(np.float32), [model_dir])
    with pytest.raises(InputError, match="shape"):
        predict(np.zeros((4, 5), np.uint8)[None, None], [model_dir])


def test_a_batch_split_over_devices_equals_one_device(model_dir):
    """With several devices each runs the program on its frames with its share of the budget;
    `found` is the budget the fullest device needs (here all faces are on the first device's
    frames), and the outputs are one device's."""
    from hsemo_jax.models.blazeface import build
    from hsemo_jax.predict import device
    from hsemo_jax.predict.pipeline import load_models

    half = _frames(2)[:, :, 40:200]
    two_faces = np.concatenate([half, half[:, :, ::-1]], axis=2)
    frames = np.concatenate([two_faces, np.zeros_like(two_faces)])  # faces only in frames 0 and 1
    backbones = [device.Backbone.of(m.module, True) for m in load_models([model_dir])]
    detector = device.load_detector("blazeface")
    one = device.make_program(detector, backbones, [1.0])
    two = device.make_program(detector, backbones, [1.0], devices=jax.local_devices()[:2])
    a, b = one(frames, 16, 256), two(frames, 16, 256)
    faces = int(a["found"])
    assert faces >= 4 and np.asarray(a["valid"]).sum() == np.asarray(b["valid"]).sum() == faces
    for k in ("valid", "boxes", "probs", "va"):
        np.testing.assert_allclose(np.asarray(b[k]), np.asarray(a[k]), atol=1e-5, err_msg=k)
    assert int(two(frames, 4, 256)["found"]) == 2 * faces  # all on device 0, whose budget was 2


def test_progress_lines_when_not_on_a_terminal(monkeypatch):
    out = io.StringIO()
    bar = Progress(40, file=out, desc="clip")
    for _ in range(40):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # every 10%
    assert lines[0].startswith("clip: 4/40 frames (10%), ") and "ETA" in lines[0]
    assert lines[-1].startswith("clip: 40/40 frames (100%)") and "ETA" not in lines[-1]
    quiet = io.StringIO()
    bar = Progress(40, file=quiet, enabled=False)
    bar.update(40)
    bar.close()
    assert quiet.getvalue() == ""
    unknown = io.StringIO()
    bar = Progress(None, file=unknown)
    bar.update(7)
    bar.close()
    assert unknown.getvalue().startswith("predict: 7 frames, ")


def test_command_line_defaults_to_the_device_path():
    import argparse

    from hsemo_jax.commands import predict as predict_command

    parser = argparse.ArgumentParser()
    predict_command.add_arguments(parser)
    args = parser.parse_args(["clip.mp4"])
    assert args.detector == "blazeface_full_range" and not args.exact_preprocess
    assert parser.parse_args(["clip.mp4", "--exact-preprocess"]).exact_preprocess
