"""BlazeFace against MediaPipe's own runtime, on real images (skimage's astronaut and cameraman,
frames of examples/astronaut.mp4, and compositions of several faces):

* the `.tflite` reader returns every constant tensor as LiteRT holds it;
* the Flax networks' raw outputs (regressors, classificators) equal LiteRT's on the same input
  within 1e-4 relative (float32 matmuls);
* `detect` (letterbox, decoding, weighted NMS, all jitted) gives the boxes, keypoints and scores
  of a numpy reference of MediaPipe's calculators applied to LiteRT's outputs, within 1 px;
* and the parts around them: anchors, batching, `max_faces`, coordinates, bad files and frames.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

import jax
from skimage import data

from hsemo_jax.convert import blazeface as convert_blazeface
from hsemo_jax.convert.tflite_reader import read_tflite
from hsemo_jax.errors import CheckpointError, InputError
from hsemo_jax.models import blazeface, detection, registry

litert = pytest.importorskip("ai_edge_litert.interpreter")

CLIP = Path(__file__).resolve().parents[1] / "examples" / "astronaut.mp4"
DETECTORS = tuple(registry.DETECTORS)
MAX_FACES = 8


def _side_by_side(*images, height=320):
    return np.concatenate([cv2.resize(i, (round(i.shape[1] * height / i.shape[0]), height),
                                      interpolation=cv2.INTER_AREA) for i in images], axis=1)


def _clip_frames(indices=(0, 20, 40)) -> np.ndarray:
    cap, frames, i = cv2.VideoCapture(str(CLIP)), [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i in indices:
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        i += 1
    assert len(frames) == len(indices), f"{CLIP}: could not decode frames {indices}"
    return np.stack(frames)


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    """Batches (N, H, W, 3) uint8 RGB of real photos: square, tall and wide, 1 to 4 faces."""
    astronaut = data.astronaut()
    camera = np.repeat(data.camera()[..., None], 3, axis=-1)  # grayscale portrait
    face = astronaut[0:320, 100:380]
    return {
        "portraits": np.stack([astronaut, camera]),  # 512 x 512
        "clip": _clip_frames(),  # 240 x 320: wide, letterboxed top and bottom
        "quad": np.concatenate([_side_by_side(face, face[:, ::-1]),
                                _side_by_side(face[:, ::-1], face)])[None],  # 640 x 560: tall, four faces
    }


@pytest.fixture(scope="module", params=DETECTORS)
def model(request):
    return convert_blazeface.load_blazeface(request.param)


def _litert(variant: blazeface.Variant, x: np.ndarray):
    """LiteRT's (regressors (N, A, 16), classificators (N, A, 1)) for inputs x (N, S, S, 3)."""
    it = litert.Interpreter(model_path=str(variant.weights_path))
    it.allocate_tensors()
    regs, clss = [], []
    for frame in x:
        it.set_tensor(it.get_input_details()[0]["index"], frame[None])
        it.invoke()
        outs = [it.get_tensor(o["index"]) for o in it.get_output_details()]
        regs.append(next(o for o in outs if o.shape[-1] == 16)[0])
        clss.append(next(o for o in outs if o.shape[-1] == 1)[0])
    return np.stack(regs), np.stack(clss)


@pytest.fixture(scope="module")
def runs(model, images):
    """Per image batch: our input tensor, raw outputs and detections (one jitted program), and
    LiteRT's raw outputs on that input."""
    variant = blazeface.VARIANTS[model.variant]

    def ours(frames):
        x, scale, offset = detection.letterbox(frames, variant.input_size)
        raw = model(x)
        return x, raw, detection.postprocess(*raw, variant, scale, offset, max_faces=MAX_FACES)

    out = {}
    with jax.default_matmul_precision("float32"):
        for name, frames in images.items():
            x, raw, dets = jax.tree.map(np.asarray, jax.jit(ours)(frames))
            out[name] = (frames, x, raw, dets, _litert(variant, x))
    return variant, out


# ------------------------------------------------------------------------------------------------
# a numpy reference of MediaPipe's calculators (face_detection.pbtxt), one detection at a time
# ------------------------------------------------------------------------------------------------
def _reference_anchors(v: blazeface.Variant) -> list[tuple[float, float]]:
    """SsdAnchorsCalculator::GenerateAnchors with fixed_anchor_size, aspect_ratios [1.0]."""
    anchors, layer = [], 0
    while layer < len(v.strides):
        last, per_cell = layer, 0
        while last < len(v.strides) and v.strides[last] == v.strides[layer]:
            per_cell += 1 + (v.interpolated_scale_aspect_ratio > 0)
            last += 1
        fm = math.ceil(v.input_size / v.strides[layer])
        for y in range(fm):
            for x in range(fm):
                anchors += [((x + 0.5) / fm, (y + 0.5) / fm)] * per_cell
        layer = last
    return anchors


def _reference_detections(reg, cls, v: blazeface.Variant):
    """TensorsToDetectionsCalculator (reverse_output_order, sigmoid, clipping 100):
    [(score, [xmin, ymin, xmax, ymax], [(x, y) * 6])] in the model input's normalized coordinates."""
    s, out = v.input_size, []
    for (ax, ay), r, c in zip(_reference_anchors(v), reg.astype(np.float64), cls[:, 0].astype(np.float64)):
        score = 1.0 / (1.0 + math.exp(-min(max(c, -100.0), 100.0)))
        if score < v.min_score:
            continue
        xc, yc, w, h = r[0] / s + ax, r[1] / s + ay, r[2] / s, r[3] / s
        box = [xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2]
        if box[2] - box[0] < 0 or box[3] - box[1] < 0:
            continue
        out.append((score, box, [(r[4 + 2 * k] / s + ax, r[5 + 2 * k] / s + ay) for k in range(6)]))
    return out


def _overlap(a, b) -> float:
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference_weighted_nms(dets, threshold=0.3):
    """NonMaxSuppressionCalculator::WeightedNonMaxSuppression."""
    remained = sorted(range(len(dets)), key=lambda i: -dets[i][0])
    out = []
    while remained:
        score, box, kps = dets[remained[0]]
        candidates = [i for i in remained if _overlap(dets[i][1], box) > threshold]
        rest = [i for i in remained if _overlap(dets[i][1], box) <= threshold]
        if candidates:
            total = sum(dets[i][0] for i in candidates)
            box = [sum(dets[i][0] * dets[i][1][c] for i in candidates) / total for c in range(4)]
            kps = [tuple(sum(dets[i][0] * dets[i][2][k][c] for i in candidates) / total for c in range(2))
                   for k in range(6)]
        out.append((score, box, kps))
        if len(rest) == len(remained):
            break
        remained = rest
    return out


def _reference(reg, cls, v: blazeface.Variant, frame_hw):
    """Per frame: scores (F,), boxes (F, 4) and keypoints (F, 6, 2) in frame pixels (the
    letterbox undone: DetectionProjectionCalculator)."""
    h, w = frame_hw
    scale = v.input_size / max(h, w)
    ox, oy = (v.input_size - w * scale) / 2, (v.input_size - h * scale) / 2
    px = lambda x, y: ((x * v.input_size - ox) / scale, (y * v.input_size - oy) / scale)  # noqa: E731
    faces = _reference_weighted_nms(_reference_detections(reg, cls, v))
    scores = np.array([f[0] for f in faces])
    boxes = np.array([[*px(*b[:2]), *px(*b[2:])] for _, b, _ in faces]).reshape(-1, 4)
    kps = np.array([[px(*k) for k in f[2]] for f in faces]).reshape(-1, 6, 2)
    return scores, boxes, kps


# ------------------------------------------------------------------------------------------------
# parity
# ------------------------------------------------------------------------------------------------
def test_reader_returns_every_constant_as_litert_holds_it(model):
    path = blazeface.VARIANTS[model.variant].weights_path
    graph = read_tflite(path)
    it = litert.Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    constants = [(i, t) for i, t in enumerate(graph.tensors) if t.data is not None]
    assert sum(t.type == "FLOAT16" for _, t in constants) > 50  # the weights are float16
    for i, t in constants:
        ref = it.get_tensor(i)
        assert t.shape == ref.shape and t.data.dtype == ref.dtype and np.array_equal(t.data, ref), t.name
    # a float16 weight comes out as float32 through its DEQUANTIZE
    conv = next(op for op in graph.operators if op.op == "CONV_2D")
    kernel = graph.constant(conv.inputs[1])
    assert kernel.dtype == np.float32 and graph.tensors[conv.inputs[1]].data is None
    assert np.array_equal(kernel, graph.tensors[graph.producer(conv.inputs[1]).inputs[0]].data.astype(np.float32))


def test_raw_outputs_match_litert(runs):
    _, out = runs
    worst = 0.0
    for name, (_, _, (reg, cls), _, (ref_reg, ref_cls)) in out.items():
        assert reg.shape == ref_reg.shape and cls.shape == ref_cls.shape
        for got, want, what in ((reg, ref_reg, "regressors"), (cls, ref_cls, "classificators")):
            scale = float(np.abs(want).max())
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale, err_msg=f"{name} {what}")
            worst = max(worst, float(np.abs(got - want).max()) / scale)
    print(f"max |ours - litert| / max |litert| = {worst:.2e}")


def test_detections_match_mediapipe_semantics_on_litert_outputs(runs):
    variant, out = runs
    found, worst = 0, 0.0
    for name, (frames, _, _, dets, (ref_reg, ref_cls)) in out.items():
        for i in range(len(frames)):
            scores, boxes, kps = _reference(ref_reg[i], ref_cls[i], variant, frames.shape[1:3])
            n = min(len(scores), MAX_FACES)
            valid = dets.valid[i]
            assert valid.sum() == n and valid[:n].all(), f"{name}[{i}]: {valid.sum()} faces, reference {len(scores)}"
            np.testing.assert_allclose(dets.scores[i, :n], scores[:n], atol=1e-5, err_msg=name)
            assert np.abs(dets.boxes[i, :n] - boxes[:n]).max(initial=0) <= 1.0, f"{name}[{i}] boxes"
            assert np.abs(dets.keypoints[i, :n] - kps[:n]).max(initial=0) <= 1.0, f"{name}[{i}] keypoints"
            assert not dets.boxes[i, n:].any() and not dets.scores[i, n:].any()
            found += n
            worst = max(worst, float(np.abs(dets.boxes[i, :n] - boxes[:n]).max(initial=0)))
    # a face in every frame, all four in the quad
    assert all(dets.valid.any(axis=1).all() for _, _, _, dets, _ in out.values())
    assert out["quad"][3].valid.sum() == 4
    print(f"{found} faces; max box difference {worst:.4f} px")


# ------------------------------------------------------------------------------------------------
# the parts
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DETECTORS)
def test_anchors_are_mediapipes(name):
    v = blazeface.VARIANTS[registry.get_detector(name).variant]
    anchors = detection.ssd_anchors(v)
    assert anchors.shape == ({128: 896, 192: 2304}[v.input_size], 2)
    np.testing.assert_allclose(anchors, np.array(_reference_anchors(v)), atol=1e-7)


@pytest.mark.parametrize("max_faces", [2, 32])
@pytest.mark.parametrize("degenerate", [False, True])
def test_weighted_nms_is_mediapipes_on_crowded_detections(max_faces, degenerate):
    """Many overlapping detections in clusters (some not candidates); with `degenerate`, the best
    one has zero area, which MediaPipe outputs alone and then stops."""
    rng = np.random.default_rng(7)
    n = 120
    centres = rng.uniform(0.2, 0.8, (6, 2))[rng.integers(0, 6, n)] + rng.normal(0, 0.03, (n, 2))
    half = rng.uniform(0.04, 0.1, (n, 1))
    boxes = np.concatenate([centres - half, centres + half], axis=1).astype(np.float32)
    kps = (centres[:, None] + rng.normal(0, 0.02, (n, 6, 2))).astype(np.float32)
    scores = rng.uniform(0.5, 1.0, n).astype(np.float32)
    candidate = rng.uniform(size=n) < 0.8
    if degenerate:
        best = int(np.argmax(np.where(candidate, scores, 0)))
        boxes[best, 2:] = boxes[best, :2]
    got = jax.tree.map(np.asarray, jax.jit(detection.weighted_nms, static_argnums=4)(
        boxes, kps, scores, candidate, max_faces))
    idx = np.flatnonzero(candidate)
    full = _reference_weighted_nms([(float(scores[i]), boxes[i].astype(np.float64).tolist(),
                                     kps[i].astype(np.float64).tolist()) for i in idx])
    assert len(full) == 1 if degenerate else 2 < len(full) < 32  # both truncated and not
    want = full[:max_faces]
    k = len(want)
    assert got[3].sum() == k
    assert got[3][:k].all() and not got[0][k:].any()
    np.testing.assert_allclose(got[2][:k], [w[0] for w in want], rtol=1e-6)
    np.testing.assert_allclose(got[0][:k], [w[1] for w in want], atol=1e-5)
    np.testing.assert_allclose(got[1][:k], [w[2] for w in want], atol=1e-5)


def test_letterbox_places_the_frame_where_the_mapping_says():
    """input pixel = frame pixel * scale + offset (what `detect` inverts); the border is black."""
    frame = np.zeros((1, 300, 500, 3), np.uint8)
    frame[0, 100:200, 50:150] = 255
    x, scale, (ox, oy) = detection.letterbox(frame, 128)
    x = np.asarray(x[0, ..., 0])
    assert scale == 128 / 500 and (ox, oy) == (0, (128 - 300 * scale) / 2)
    ys, xs = np.nonzero(x > -1)  # the white square and its partly lit edges
    w = (x[ys, xs] + 1) / 2
    np.testing.assert_allclose([np.average(xs + 0.5, weights=w), np.average(ys + 0.5, weights=w)],
                               [100 * scale + ox, 150 * scale + oy], atol=0.01)
    assert (x[: int(oy)] == -1).all() and (x[-int(oy):] == -1).all()


def test_a_moved_face_is_found_moved(model):
    """The astronaut moved right in a black 512 x 768 frame, by a whole number of the model's
    coarsest cells (so that its input moves exactly), is found as far right, and its keypoints
    lie inside its box."""
    shift = {"short_range": 192, "full_range": 256}[model.variant]  # 32 and 64 input px
    astronaut = data.astronaut()
    frames = np.zeros((2, 512, 768, 3), np.uint8)
    frames[0, :, :512], frames[1, :, shift:shift + 512] = astronaut, astronaut
    dets = jax.tree.map(np.asarray, jax.jit(lambda f: detection.detect(model, f, max_faces=2, pyramid=False))(frames))
    assert dets.valid[:, 0].all()
    np.testing.assert_allclose(dets.boxes[1, 0] - dets.boxes[0, 0], [shift, 0, shift, 0], atol=1.0)
    x1, y1, x2, y2 = dets.boxes[0, 0]
    assert 150 < x1 < x2 < 300 and 50 < y1 < y2 < 200  # the astronaut's face
    k = dets.keypoints[0, 0, :4]  # eyes, nose, mouth
    assert ((k[:, 0] > x1) & (k[:, 0] < x2) & (k[:, 1] > y1) & (k[:, 1] < y2)).all()


def test_max_faces_keeps_the_best(model, runs):
    """With room for 2 of the quad's 4 faces, the 2 best come out, as they do with room for 8."""
    _, out = runs
    frames, _, _, full, _ = out["quad"]
    with jax.default_matmul_precision("float32"):
        two = jax.tree.map(np.asarray, jax.jit(lambda f: detection.detect(model, f, max_faces=2, pyramid=False))(frames))
    assert two.boxes.shape == (1, 2, 4) and two.keypoints.shape == (1, 2, 6, 2) and two.valid.all()
    np.testing.assert_allclose(two.boxes, full.boxes[:, :2], atol=1e-3)
    np.testing.assert_allclose(two.scores, full.scores[:, :2], atol=1e-6)
    assert (np.diff(full.scores[0, :4]) <= 0).all() and full.scores[0, 3] > 0


def test_pyramid_views_cover_the_frame_at_two_scales():
    for h, w in ((720, 1280), (360, 640), (512, 512), (480, 640), (1280, 720), (240, 320), (100, 2000)):
        for variant in blazeface.VARIANTS.values():
            (s0, hw0), (s1, hw1) = detection.pyramid_views(h, w, 224, variant.max_stride)
            assert s1 == s0 / detection.COARSER
            assert s0 * min(h, w) == pytest.approx(224) or s0 * max(h, w) == pytest.approx(224 * detection.MAX_ASPECT)
            for s, (ih, iw) in ((s0, hw0), (s1, hw1)):  # the whole frame fits, padded by less than a stride
                assert ih % variant.max_stride == 0 and iw % variant.max_stride == 0
                assert 0 <= ih - h * s < variant.max_stride + 0.5 and 0 <= iw - w * s < variant.max_stride + 0.5
    assert detection.pyramid_views(720, 1280, 224, 32) == [(224 / 720, (224, 416)), (224 / 720 / 3, (96, 160))]


def _wall_with_face(scale: float, x: int, y: int, *, close: bool = False) -> np.ndarray:
    """1280 x 720, a plain wall with the astronaut's head (its face ~90 px wide at scale 1) at x,
    y; `close`: her face alone (160 px high at scale 1)."""
    import cv2

    head = data.astronaut()[40:200, 160:310] if close else data.astronaut()[0:320, 100:380]
    head = cv2.resize(head, None, fx=scale, fy=scale,
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    frame = np.empty((720, 1280, 3), np.uint8)
    frame[:] = np.linspace(70, 140, 1280, dtype=np.uint8)[None, :, None]
    frame[y:y + head.shape[0], x:x + head.shape[1]] = head
    return frame


def test_the_pyramid_finds_small_faces_and_faces_as_large_as_the_frame_once():
    """Full range on 720p: a ~45 px face, missed by MediaPipe's letterbox, is found by the
    pyramid; so is a face as high as the frame, which the finer view sees larger than the
    network's input and the coarser one at a size it knows: one detection, where the letterbox
    puts it."""
    model = convert_blazeface.load_blazeface("blazeface_full_range")
    frames = np.stack([_wall_with_face(0.5, 200, 300), _wall_with_face(0.5, 600, 300),
                       _wall_with_face(4.4, 300, 8, close=True)])
    run = lambda f, pyramid: jax.tree.map(  # noqa: E731
        np.asarray, jax.jit(lambda f: detection.detect(model, f, max_faces=4, pyramid=pyramid))(f))
    whole, pyramid = run(frames, False), run(frames, True)
    assert whole.valid.sum(axis=1).tolist() == [0, 0, 1]
    assert pyramid.valid.sum(axis=1).tolist() == [1, 1, 1]
    for i, (cx, cy) in enumerate(((200 + 70, 300 + 60), (600 + 70, 300 + 60))):  # the face's centre
        x1, y1, x2, y2 = pyramid.boxes[i, 0]
        assert x1 < cx < x2 and y1 < cy < y2 and 30 < x2 - x1 < 70, pyramid.boxes[i, 0]
    width = whole.boxes[2, 0, 2] - whole.boxes[2, 0, 0]
    assert width > 400
    np.testing.assert_allclose(pyramid.boxes[2, 0], whole.boxes[2, 0], atol=0.1 * width)


def test_a_larger_detect_size_finds_smaller_faces():
    """`predict --detect-size` (`make_detector(..., detect_size=)`): a ~30 px face in a 720p frame,
    too small for full range's default views, is found where the finer view is twice as large."""
    from hsemo_jax.predict.detect import make_detector

    frame = _wall_with_face(0.33, 600, 300)
    assert len(make_detector("blazeface_full_range")(frame)) == 0
    (x1, y1, x2, y2), = make_detector("blazeface_full_range", detect_size=448)(frame)
    assert x1 < 600 + 46 < x2 and y1 < 300 + 40 < y2 and 15 < x2 - x1 < 45


# scikit-image's pictures without a face (its "coins" are Greek coins with heads in profile)
FACE_FREE = ("brick", "coffee", "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page",
             "rocket", "horse", "logo", "text", "colorwheel", "retina", "cell", "clock", "checkerboard")


def test_the_pyramid_finds_no_face_where_there_is_none():
    """Full range's default views and threshold on 17 face-free pictures, each resized to 640x480
    (one batch, one compilation): no detection (its highest score on them is 0.38, against the
    threshold 0.5; at their own sizes 0.44)."""
    model = convert_blazeface.load_blazeface("blazeface_full_range")
    frames = []
    for name in FACE_FREE:
        img = getattr(data, name)()
        img = img.astype(np.uint8) * 255 if img.dtype == bool else img
        img = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]
        frames.append(cv2.resize(np.ascontiguousarray(img), (640, 480), interpolation=cv2.INTER_AREA))
    valid = np.asarray(jax.jit(lambda f: detection.detect(model, f, max_faces=1).valid)(np.stack(frames)))
    assert not [name for name, v in zip(FACE_FREE, valid[:, 0]) if v]


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def test_files_that_are_not_blazeface_models_are_refused(tmp_path):
    short = registry.DETECTORS["blazeface"]
    path = blazeface.VARIANTS[short.variant].weights_path
    text = tmp_path / "notes.tflite"
    text.write_text("not a model")
    with pytest.raises(CheckpointError, match="notes.tflite: not a TensorFlow Lite model"):
        convert_blazeface.load_blazeface(text)
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(path.read_bytes()[:4096])
    with pytest.raises(CheckpointError, match="cut.tflite: corrupt TensorFlow Lite model"):
        read_tflite(cut)
    with pytest.raises(InputError, match="no such file, and not a detector name"):
        convert_blazeface.load_blazeface(tmp_path / "missing.tflite")

    graph = read_tflite(path)
    other = dataclasses.replace(graph, outputs=graph.outputs[:1])
    with pytest.raises(CheckpointError, match="not a BlazeFace model"):
        convert_blazeface._variant_of(other)
    with pytest.raises(CheckpointError, match="convolutions; BlazeFace full_range has"):
        convert_blazeface.load_weights(blazeface.build("full_range"), graph)
    # a layer given another layer's weights: refused at that layer, naming it
    convs = [op for op in graph.operators if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    bad = dataclasses.replace(convs[2], inputs=(convs[2].inputs[0], *convs[4].inputs[1:]))
    tampered = dataclasses.replace(graph, operators=tuple(bad if op is convs[2] else op for op in graph.operators))
    with pytest.raises(CheckpointError, match=r"convolution 2 .*expected the HWIO kernel"):
        convert_blazeface.load_weights(blazeface.build("short_range"), tampered)


def test_detect_refuses_frames_it_cannot_use(model):
    for frames in (np.zeros((64, 64, 3), np.uint8), np.zeros((1, 64, 64, 4), np.uint8),
                   np.zeros((1, 64, 64, 3), np.float32)):
        with pytest.raises(InputError, match=r"expected uint8 RGB frames \(N, H, W, 3\)"):
            detection.detect(model, frames)


def test_predict_can_use_blazeface(images):
    """`predict --detector blazeface`: predict's detector interface (RGB frame -> boxes in pixels)."""
    import argparse

    from hsemo_jax.commands import predict as predict_command
    from hsemo_jax.predict.detect import make_detector

    parser = argparse.ArgumentParser()
    predict_command.add_arguments(parser)
    assert parser.parse_args(["clip.mp4", "--detector", "blazeface"]).detector == "blazeface"
    boxes = make_detector("blazeface")(images["quad"][0])  # 640 x 560, a face in each quarter
    assert boxes.shape == (4, 4) and boxes.dtype == np.float32
    quarters = {tuple(c) for c in ((boxes[:, :2] + boxes[:, 2:]) / 2 // [280, 320]).astype(int)}
    assert quarters == {(0, 0), (0, 1), (1, 0), (1, 1)}
