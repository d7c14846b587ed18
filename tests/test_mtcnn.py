"""MTCNN (`hsemo_jax.models.mtcnn`, `.mtcnn_cascade`) equals facenet-pytorch's, the detector
HSEmotion's examples use: the three nets' raw outputs within 1e-4 relative on the same inputs, and
`MTCNN.detect`'s boxes within 1 px on real images; its ops against torch / torchvision; its weights
fetched by name from a local HTTP server (never the internet).

facenet-pytorch 2.6.0 pins torch < 2.3, which the test extra's torch cannot satisfy, so it is not in
the extra: the README's test command installs it with `pip install --no-deps facenet-pytorch==2.6.0`
(its code needs only torch, torchvision, numpy, Pillow and requests). Its wheel also carries the
weights, `facenet_pytorch/data/{pnet,rnet,onet}.pt`.
"""
import hashlib
import os
import shutil

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import jax
import jax.numpy as jnp
from flax import nnx

from hsemo_jax import hub
from hsemo_jax.convert import export_torch_state
from hsemo_jax.convert.mtcnn import NETS, read_mtcnn
from hsemo_jax.errors import CheckpointError, InputError
from hsemo_jax.models import registry
from hsemo_jax.models.mtcnn import MTCNN
from hsemo_jax.models.mtcnn_cascade import CascadeConfig, make_detect, pyramid
from hsemo_jax.ops.nms import nms, top_valid
from hsemo_jax.ops.pool import max_pool2d
from hsemo_jax.ops.resample import area_resize, integral_image
from hsemo_jax.predict.detect import make_detector

from test_hub import FileServer

VIDEO = os.path.join(os.path.dirname(__file__), "..", "examples", "astronaut.mp4")
RTOL = 1e-4  # max |jax - torch| <= RTOL * max |torch|, per output


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
    """The cascade's weights are compile-time constants, so each `make_detect` compiles anew: a
    cache for this module lets `make_detector("mtcnn", ...)` read back the program that `detect_fn`
    compiled for the same weights and frame size (test time only)."""
    from jax_fixtures import compilation_cache

    with compilation_cache(tmp_path_factory.mktemp("xla_cache")):
        yield


@pytest.fixture(scope="module")
def facenet():
    return pytest.importorskip("facenet_pytorch", reason="pip install --no-deps facenet-pytorch==2.6.0")


@pytest.fixture(scope="module")
def weights_dir(facenet):
    return os.path.join(os.path.dirname(facenet.__file__), "data")


@pytest.fixture(scope="module")
def model(weights_dir):
    return read_mtcnn({n: os.path.join(weights_dir, f"{n}.pt") for n in NETS})


@pytest.fixture(scope="module")
def reference(facenet):
    return facenet.MTCNN(keep_all=True)


@pytest.fixture(scope="module")
def detect_fn(model):
    return make_detect(model)


# ------------------------------------------------------------------------------------- images


def _astronaut():
    from skimage import data

    return data.astronaut()


def _lfw_grid():
    """20 faces of scikit-image's LFW subset (25x25, grey), 100 px each, in a 4 x 5 grid."""
    import skimage.data

    lfw = np.load(os.path.join(os.path.dirname(skimage.data.__file__), "lfw_subset.npy"))
    tiles = [cv2.resize((lfw[i] * 255).astype(np.uint8), (100, 100), interpolation=cv2.INTER_CUBIC)
             for i in range(20)]
    return np.concatenate([np.concatenate(tiles[r * 5:(r + 1) * 5], axis=1) for r in range(4)], axis=0)


def _video_frames(n=1):
    cap = cv2.VideoCapture(VIDEO)
    frames = []
    for _ in range(n):
        ok, bgr = cap.read()
        assert ok, VIDEO
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def _image(name):
    """(what detect gets, what facenet-pytorch gets: the same pixels as uint8 RGB)."""
    if name == "astronaut":
        return _astronaut(), _astronaut()
    if name == "grey":
        grey = cv2.cvtColor(_astronaut(), cv2.COLOR_RGB2GRAY)
        return grey, np.repeat(grey[..., None], 3, axis=-1)
    if name == "rgba":
        rgb = _astronaut()
        return np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1), rgb
    if name == "lfw_grid":
        grid = _lfw_grid()
        return grid, np.repeat(grid[..., None], 3, axis=-1)
    if name == "video":
        frame = _video_frames()[0]
        return frame, frame
    raise KeyError(name)


# ---------------------------------------------------------------------------------------- ops


@pytest.mark.parametrize("window,stride", [(2, 2), (3, 2)])
@pytest.mark.parametrize("hw", [(9, 9), (10, 11), (22, 23)])
def test_max_pool_is_torch_ceil_mode(window, stride, hw):
    x = np.random.default_rng(0).standard_normal((2, 5, *hw)).astype(np.float32)
    ref = F.max_pool2d(torch.from_numpy(x), window, stride, ceil_mode=True).numpy()
    out = np.asarray(max_pool2d(jnp.asarray(x.transpose(0, 2, 3, 1)), window, stride, ceil_mode=True))
    np.testing.assert_array_equal(out.transpose(0, 3, 1, 2), ref)


@pytest.mark.parametrize("region,size", [((0, 0, 37, 53), (20, 31)), ((3, 5, 30, 40), (24, 24)),
                                         ((10, 20, 17, 27), (24, 24)), ((0, 0, 37, 53), (48, 48))])
def test_area_resize_is_torch_interpolate_area(region, size):
    """Shrinking and enlarging (bins of 1-2 pixels); torch as facenet-pytorch calls it: channels-last floats."""
    img = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    y0, x0, y1, x1 = region
    t = torch.as_tensor(img).unsqueeze(0).permute(0, 3, 1, 2).float()[:, :, y0:y1, x0:x1]
    ref = F.interpolate(t, size=size, mode="area")[0].permute(1, 2, 0).numpy()
    out = np.asarray(area_resize(integral_image(jnp.asarray(img[None]))[0], jnp.array(region), size))
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=0)


def test_area_resize_of_an_empty_region_is_zeros():
    ii = integral_image(jnp.ones((1, 8, 8, 3), jnp.uint8))[0]
    assert not np.asarray(area_resize(ii, jnp.array([5, 5, 5, 9]), (4, 4))).any()
    assert not np.asarray(area_resize(ii, jnp.array([9, 9, 12, 12]), (4, 4))).any()  # outside: clamped


def _random_boxes(rng, k):
    xy = rng.uniform(0, 100, (k, 2))
    wh = rng.uniform(5, 40, (k, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32), rng.uniform(0, 1, k).astype(np.float32)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_is_torchvision_nms(threshold):
    from torchvision.ops import nms as tv_nms

    rng = np.random.default_rng(2)
    boxes, scores = _random_boxes(rng, 300)
    valid = rng.uniform(size=300) < 0.8
    keep = np.asarray(nms(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid), threshold))
    ref = np.flatnonzero(valid)[tv_nms(torch.from_numpy(boxes[valid]), torch.from_numpy(scores[valid]),
                                       threshold).numpy()]
    assert set(np.flatnonzero(keep)) == set(ref) and len(ref) < valid.sum()


def test_nms_min_overlap_is_mtcnn_nms(facenet):
    from facenet_pytorch.models.utils.detect_face import nms_numpy

    boxes, scores = _random_boxes(np.random.default_rng(3), 200)
    keep = np.asarray(nms(jnp.asarray(boxes), jnp.asarray(scores), jnp.ones(200, bool), 0.7,
                          overlap="min", inclusive=True))
    ref = nms_numpy(boxes, scores, 0.7, "Min")
    assert set(np.flatnonzero(keep)) == set(ref) and len(ref) < 200


def test_top_valid_orders_and_pads():
    scores = jnp.array([0.1, 0.9, 0.5, 0.7])
    idx, ok = top_valid(scores, jnp.array([True, True, False, True]), 6)
    assert np.asarray(idx)[:3].tolist() == [1, 3, 0] and np.asarray(ok).tolist() == [True] * 3 + [False] * 3


# ------------------------------------------------------------------------------------ the nets


def _assert_close(out, ref, what):
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.shape == ref.shape, what
    err = np.abs(out - ref).max()
    assert err <= RTOL * np.abs(ref).max(), f"{what}: max |diff| {err:.3g}, max |ref| {np.abs(ref).max():.3g}"


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _crops(size, n=12):
    """Normalized area-resampled crops of the astronaut (as facenet-pytorch feeds RNet/ONet) and noise."""
    img = torch.as_tensor(_astronaut()).unsqueeze(0).permute(0, 3, 1, 2).float()
    rng = np.random.default_rng(4)
    crops = []
    for _ in range(n):
        y, x = rng.integers(0, 400, 2)
        s = int(rng.integers(20, 110))
        crops.append(F.interpolate(img[:, :, y:y + s, x:x + s], size=(size, size), mode="area"))
    real = ((torch.cat(crops) - 127.5) * 0.0078125).permute(0, 2, 3, 1).numpy()
    noise = rng.uniform(-1, 1, (4, size, size, 3)).astype(np.float32)
    return np.concatenate([real, noise])


def test_nets_equal_facenet_pytorch(model, reference):
    img = torch.as_tensor(_astronaut()).unsqueeze(0).permute(0, 3, 1, 2).float()
    level = ((F.interpolate(img, size=(155, 155), mode="area") - 127.5) * 0.0078125).permute(0, 2, 3, 1).numpy()
    run = nnx.jit(lambda net, x: net(x))  # one program per net and shape (eager runs op by op)
    with jax.default_matmul_precision("float32"):
        for x in (level, np.ascontiguousarray(level[:, :12, :17])):  # a pyramid level, and PNet's smallest height
            reg, prob = reference.pnet(_nchw(x))
            out = run(model.pnet, jnp.asarray(x))
            _assert_close(np.asarray(out[0]).transpose(0, 3, 1, 2), reg, "pnet regression")
            _assert_close(np.asarray(out[1]).transpose(0, 3, 1, 2), prob, "pnet probability")
        x = _crops(24)
        for o, r, what in zip(run(model.rnet, jnp.asarray(x)), reference.rnet(_nchw(x)), ("regression", "probability")):
            _assert_close(o, r, f"rnet {what}")
        x = _crops(48)
        for o, r, what in zip(run(model.onet, jnp.asarray(x)), reference.onet(_nchw(x)),
                              ("regression", "landmarks", "probability")):
            _assert_close(o, r, f"onet {what}")


# ------------------------------------------------------------------------------- the cascade


@pytest.mark.parametrize("name,faces", [("astronaut", 1), ("grey", 1), ("rgba", 1), ("lfw_grid", 20), ("video", 1)])
def test_detect_equals_facenet_pytorch(detect_fn, reference, name, faces):
    ours, theirs = _image(name)
    got = detect_fn(ours)
    boxes, probs, points = reference.detect(theirs, landmarks=True)
    n = int(got.valid.sum())
    assert n == len(boxes) == faces and got.valid[:n].all() and not got.capped
    np.testing.assert_allclose(got.boxes[:n], boxes.astype(np.float32), atol=1.0, rtol=0)  # largest first, as theirs
    np.testing.assert_allclose(got.landmarks[:n], points.astype(np.float32), atol=1.0, rtol=0)
    np.testing.assert_allclose(got.scores[:n], probs.astype(np.float32), atol=1e-4, rtol=0)


def test_batch_equals_frame_by_frame(detect_fn):
    frames = _video_frames(3)[::2]
    batch = detect_fn(np.stack(frames))
    assert batch.boxes.shape == (2, CascadeConfig().max_faces, 4) and batch.landmarks.shape[-2:] == (5, 2)
    for i, frame in enumerate(frames):
        one = detect_fn(frame)
        assert one.valid.sum() == 1
        for b, o in zip(batch, one):
            np.testing.assert_allclose(b[i], o, atol=1e-4)


def test_caps_are_reported_and_bound_the_outputs(model):
    frame = _video_frames()[0]
    tight = make_detect(model, CascadeConfig(level_candidates=4, rnet_candidates=8, onet_candidates=2, max_faces=1))
    got = tight(frame)
    assert got.capped and got.boxes.shape == (1, 4) and got.valid.sum() <= 1


@pytest.mark.parametrize("bad", [dict(factor=1.0), dict(min_face_size=0), dict(max_faces=0), dict(thresholds=(0.6,))])
def test_bad_configs_are_input_errors(bad):
    with pytest.raises(InputError, match="MTCNN: expected"):
        CascadeConfig(**bad)


def test_pyramid_and_tiny_frames(detect_fn):
    assert [lvl[1:] for lvl in pyramid(240, 320, CascadeConfig())][:2] == [(145, 193), (103, 137)]
    assert pyramid(19, 400, CascadeConfig()) == ()
    got = detect_fn(np.zeros((19, 400, 3), np.uint8))
    assert got.boxes.shape == (CascadeConfig().max_faces, 4) and not got.valid.any()


def test_bad_frames_are_input_errors(detect_fn):
    frame = _video_frames()[0]
    got16 = detect_fn(frame.astype(np.uint16) << 8 | 0x7F)  # 16-bit: the top 8 bits
    np.testing.assert_array_equal(got16.boxes, detect_fn(frame).boxes)
    for bad, match in [(frame.astype(np.float32), "uint8"), (frame[..., :2], "C = 1, 3 or 4"),
                       (np.zeros((0, 5, 3), np.uint8), "empty"), (frame[0, 0], "shape")]:
        with pytest.raises(InputError, match=match):
            detect_fn(bad)


# ----------------------------------------------------------------------- weights and fetching


def test_published_pins_are_the_wheels_files(weights_dir):
    for n in NETS:
        with open(os.path.join(weights_dir, f"{n}.pt"), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == registry.PUBLISHED_FILES[f"mtcnn/{n}.pt"].sha256, n


def _legacy_weights(tmp_path, seed=3):
    """MTCNN state dicts in facenet-pytorch's file format (legacy torch.save), random weights."""
    model = MTCNN(seed=seed)
    files = {}
    for n in NETS:
        sd = {k: torch.from_numpy(v.copy()) for k, v in export_torch_state(getattr(model, n), "mtcnn").items()}
        files[n] = tmp_path / f"{n}.pt"
        torch.save(sd, files[n], _use_new_zipfile_serialization=False)
    return model, files


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HSEMO_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HSEMO_JAX_BASE_URL", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A local server with random MTCNN weights as mtcnn/{pnet,rnet,onet}.pt, pinned to them."""
    model, files = _legacy_weights(tmp_path)
    server = FileServer()
    for n, path in files.items():
        data = path.read_bytes()
        server.files[f"/models/mtcnn/{n}.pt"] = [data]
        monkeypatch.setitem(registry.PUBLISHED_FILES, f"mtcnn/{n}.pt",
                            registry.PublishedFile("http://unused.invalid/", hashlib.sha256(data).hexdigest()))
    yield model, files, server
    server.stop()


def _same_weights(a, b):
    for (pa, va), (pb, vb) in zip(nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b))):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(va[...]), np.asarray(vb[...]), err_msg=str(pa))


def test_fetch_by_name_once_then_offline(cache, served):
    model, _, server = served
    _same_weights(hub.load_mtcnn(base_url=server.url, progress=False), model)
    assert sorted(server.hits) == sorted(f"/models/mtcnn/{n}.pt" for n in NETS)
    server.stop()
    _same_weights(hub.load_mtcnn(base_url=server.url, progress=False), model)  # from the cache
    assert len(server.hits) == 3


def test_a_file_that_is_not_the_pinned_one_is_refused_and_kept(cache, served, tmp_path):
    _, _, server = served
    placed = cache / "downloads" / "mtcnn" / "pnet.pt"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"not pnet")
    with pytest.raises(CheckpointError, match=r"pnet\.pt: not the published mtcnn/pnet\.pt.*left as it is"):
        hub.load_mtcnn(base_url=server.url, progress=False)
    assert placed.read_bytes() == b"not pnet"

    placed.unlink()
    server.files["/models/mtcnn/pnet.pt"] = [b"served, but not the pinned file"]
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        hub.load_mtcnn(base_url=server.url, progress=False)
    assert not placed.exists() and not list(placed.parent.glob("*.part"))


def test_offline_says_where_to_place_the_files(cache, served):
    _, _, server = served
    server.stop()
    with pytest.raises(InputError, match=r"cannot download mtcnn/pnet\.pt .* place it at .*mtcnn.pnet\.pt, "
                                         r"or pass a directory with pnet\.pt"):
        hub.load_mtcnn(base_url=server.url, progress=False, timeout=5)
    assert not (cache / "downloads" / "mtcnn").exists() or not list((cache / "downloads" / "mtcnn").iterdir())


def test_weights_from_a_directory(cache, tmp_path):
    model, files = _legacy_weights(tmp_path, seed=5)
    _same_weights(hub.load_mtcnn(tmp_path), model)
    files["onet"].unlink()
    with pytest.raises(InputError, match=r"missing onet\.pt"):
        hub.load_mtcnn(tmp_path)
    shutil.copy(files["pnet"], files["onet"])  # the wrong net's file: named with its shapes
    with pytest.raises(CheckpointError, match=r"(?s)onet\.pt.*conv1\.weight"):
        hub.load_mtcnn(tmp_path)


def test_predict_detector_mtcnn(weights_dir, reference):
    detector = make_detector("mtcnn", weights_dir, max_width=0)
    frame = _video_frames()[0]
    boxes = detector(frame)
    np.testing.assert_allclose(boxes, reference.detect(frame)[0].astype(np.float32), atol=1.0, rtol=0)
    with pytest.raises(InputError, match="pnet.pt"):
        make_detector("mtcnn", os.path.dirname(VIDEO))
