"""The accelerator path, proven on CPU: every backbone's inference forward, one train step per
backbone (bfloat16 compute; float32 on one by default, the rest `-m slow`) and the bfloat16 distillation student's, BlazeFace's and
MTCNN's face detection, the predict device program, `smooth`, `search_au_thresholds` and the sweep
cross-lower for GPU and TPU with `jax.export`; the exported modules hold no CPU kernel call
(`hsemo_*`) and no host callback, and nothing asked for the CPU kernels (`ops.dispatch.cpu_kernels`
is where every kernel form starts).
On CPU, `jax.export` of the inference forward works too: it keeps the XLA forms."""
import re

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from hsemo_jax.models import registry
from hsemo_jax.ops import dispatch

ACCELERATORS = ("cuda", "tpu")
ARCHS = registry.BACKBONES


@pytest.fixture
def no_kernels(monkeypatch):
    """Fail if anything asks for the CPU kernels' package (which builds them)."""
    def refuse():
        raise AssertionError("the CPU kernels were asked for while exporting")

    monkeypatch.setattr(dispatch, "cpu_kernels", refuse)


def _spec(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype) if hasattr(a, "dtype") else a, tree)


def _custom_calls(text: str) -> set[str]:
    return set(re.findall(r"custom_call @([\w.$-]+)", text)) | set(re.findall(r'call_target_name = "([^"]+)"', text))


def _export(fn, *args, platforms=ACCELERATORS, **static):
    exported = jax.export.export(fn, platforms=platforms)(*_spec(args), **static)
    targets = _custom_calls(exported.mlir_module())
    assert not {t for t in targets if t.startswith("hsemo")}, f"a CPU kernel call in the exported module: {targets}"
    assert not {t for t in targets if "callback" in t}, f"a host callback in the exported module: {targets}"
    return exported


def _inputs(arch: str, batch: int = 2):
    size = registry.get_arch(arch).input_size
    return np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("arch", ARCHS)
def test_inference_forward_exports_for_gpu_and_tpu(arch, no_kernels):
    model = registry.build(arch, 10, seed=0)
    graphdef, state = nnx.split(model)
    exported = _export(jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)), state, _inputs(arch))
    assert exported.platforms == ACCELERATORS and exported.out_avals[0].shape == (2, 10)


@pytest.mark.parametrize("detector", tuple(registry.DETECTORS))
@pytest.mark.parametrize("pyramid", (True, False))
def test_face_detection_exports_for_gpu_and_tpu(detector, pyramid, no_kernels):
    """BlazeFace's whole `detect` (the pyramid's views or MediaPipe's letterbox, network, decoding,
    weighted NMS) on uint8 frames."""
    from hsemo_jax.models import blazeface, detection

    model = blazeface.build(registry.get_detector(detector).variant)
    graphdef, state = nnx.split(model)
    frames = np.zeros((2, 240, 320, 3), np.uint8)
    exported = _export(jax.jit(lambda state, f: detection.detect(nnx.merge(graphdef, state), f, max_faces=4,
                                                                               pyramid=pyramid)),
                       state, frames)
    boxes, keypoints, scores, valid = exported.out_avals
    assert boxes.shape == (2, 4, 4) and keypoints.shape == (2, 4, 6, 2) and valid.shape == (2, 4)


def test_mtcnn_detect_exports_for_gpu_and_tpu(no_kernels):
    from hsemo_jax.models.mtcnn import MTCNN
    from hsemo_jax.models.mtcnn_cascade import detect

    graphdef, state = nnx.split(MTCNN())
    frames = np.zeros((2, 120, 160, 3), np.uint8)
    exported = _export(jax.jit(lambda state, x: detect(nnx.merge(graphdef, state), x)), state, frames)
    assert exported.out_avals[0].shape == (2, 32, 4)


# bfloat16 compute (the accelerator setting) for every backbone but B2 (B0's blocks at other widths)
# and timm's efficientnet_b0 (tf_efficientnet_b0's step but for symmetric padding, whose forward
# its inference export above covers, and whose backward MobileFaceNet's bf16 step has);
# float32 for the quickest one (the same step, other dtypes): the other cases are marked slow (about
# 2.5 min together on 2 cores).
FLOAT32_FAST = "mobilefacenet"
SAME_CODE_AS_TF_B0 = ("tf_efficientnet_b2", "efficientnet_b0")  # slow: tf_efficientnet_b0-bfloat16 covers them
TRAIN_STEP_CASES = [
    (a, "bfloat16") if a not in SAME_CODE_AS_TF_B0 else pytest.param(a, "bfloat16", marks=pytest.mark.slow)
    for a in ARCHS
] + [(a, "float32") if a == FLOAT32_FAST else pytest.param(a, "float32", marks=pytest.mark.slow) for a in ARCHS]


@pytest.mark.parametrize("arch,dtype", TRAIN_STEP_CASES)
def test_train_step_exports_for_gpu_and_tpu(arch, dtype, no_kernels):
    """In float32 and with bfloat16 compute (`train.compute_dtype`; fp32 master weights)."""
    from hsemo_jax import optim
    from hsemo_jax.train.loop import Trainer
    from hsemo_jax.train.objectives import BackboneObjective

    a = registry.get_arch(arch)
    objective = BackboneObjective(a.mean, a.std, attention_weight=0.1 if a.family == "ddamfn" else 0.0,
                                  compute_dtype=dtype)
    trainer = Trainer(registry.build(arch, 10, seed=0), objective, optim.make_optimizer("adam", 1e-4),
                      compute_dtype=dtype)
    n, s = 2, a.input_size
    batch = {"images": np.zeros((n, s, s, 3), np.uint8), "expr": np.zeros(n, np.int32),
             "expr_mask": np.ones(n, bool), "va": np.zeros((n, 2), np.float32), "va_mask": np.ones(n, bool)}
    exported = _export(jax.jit(trainer._train_step), trainer.state, batch)
    state, metrics = exported.out_tree.unflatten(exported.out_avals)
    assert {"loss", "grad_norm"} <= set(metrics)
    assert {p.dtype for p in jax.tree.leaves(state["params"])} == {jnp.dtype(jnp.float32)}  # fp32 masters
    assert ("bf16>" in exported.mlir_module()) == (dtype == "bfloat16")  # tensor<...xbf16> types


def test_bf16_distill_student_step_exports_for_gpu_and_tpu(no_kernels):
    """The distillation student's step (`hsemo-jax distill`, bfloat16 compute: the student and its
    frozen teacher in bf16), on the tiny test backbone: cheap, and the same code path as any."""
    from hsemo_jax import optim
    from hsemo_jax.distill.objective import STREAMS, DistillObjective
    from hsemo_jax.models.heads import DistillModel
    from hsemo_jax.train.loop import Trainer

    student = DistillModel("tiny_cnn", 7, 20, hidden=16, seed=1)
    student.attach_teacher(DistillModel("tiny_cnn", 7, 20, hidden=16, seed=0))
    trainer = Trainer(student, DistillObjective("student", compute_dtype="bfloat16"),
                      optim.make_optimizer("adam", 1e-4), compute_dtype="bfloat16")
    n, s = 2, 16
    batch = {}
    for name in STREAMS:
        batch.update({f"{name}.images": np.zeros((n, s, s, 3), np.uint8), f"{name}.expr": np.zeros(n, np.int32),
                      f"{name}.expr_mask": np.ones(n, bool), f"{name}.va": np.zeros((n, 2), np.float32),
                      f"{name}.va_mask": np.ones(n, bool)})
    exported = _export(jax.jit(trainer._train_step), trainer.state, batch)
    state, metrics = exported.out_tree.unflatten(exported.out_avals)
    assert {"loss", "loss_expr", "loss_va"} <= set(metrics)
    assert {p.dtype for p in jax.tree.leaves((state["params"], state["stats"]))} == {jnp.dtype(jnp.float32)}
    assert "bf16>" in exported.mlir_module()


def _capture(monkeypatch, module, name):
    """Record the calls of module.name (a jitted function); returns (the function, its calls)."""
    fn, calls = getattr(module, name), []

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return fn(*args, **kwargs)

    monkeypatch.setattr(module, name, record)
    return fn, calls


def _frames(n_videos: int = 3, length: int = 40):
    rng = np.random.default_rng(0)
    video_ids = np.repeat(np.arange(n_videos), length)
    frames = np.tile(np.arange(1, length + 1), n_videos)
    return rng, video_ids, frames


def test_smooth_exports_for_gpu_and_tpu(monkeypatch):
    from hsemo_jax.postprocess import smooth, smoothing

    fn, calls = _capture(monkeypatch, smoothing, "_apply_filter_jit")
    rng, video_ids, frames = _frames()
    for method, compat in (("gaussian", None), ("box", "hsemotion")):
        smooth(rng.uniform(0, 1, (len(frames), 8)).astype(np.float32), video_ids, frames, method=method,
               sigma=3.0, k=5, compat=compat)
    assert len(calls) == 2
    with monkeypatch.context() as m:
        m.setattr(dispatch, "cpu_kernels", lambda: pytest.fail("the CPU kernels were asked for"))
        for args, static in calls:
            _export(fn, *args, **static)


def test_au_threshold_search_exports_for_gpu_and_tpu(monkeypatch):
    from hsemo_jax.postprocess import search_au_thresholds, thresholds

    factory, made = thresholds._counts_fn, []

    def counts_fn(devices):
        mesh, fn = factory(devices)
        made.append(fn)
        return mesh, fn

    monkeypatch.setattr(thresholds, "_counts_fn", counts_fn)
    fn, calls = None, []
    rng = np.random.default_rng(0)
    probs, labels = rng.uniform(0, 1, (64, 12)).astype(np.float32), rng.integers(0, 2, (64, 12))
    search_au_thresholds(probs, labels)
    fn = made[0]
    n = len(jax.devices())
    args = (probs[: 64 // n * n], labels[: 64 // n * n].astype(np.int32), np.ones(64 // n * n, bool),
            np.linspace(0.1, 0.9, 9, dtype=np.float32))
    with monkeypatch.context() as m:
        m.setattr(dispatch, "cpu_kernels", lambda: pytest.fail("the CPU kernels were asked for"))
        _export(fn, *args)


def test_sweep_exports_for_gpu_and_tpu(monkeypatch):
    from hsemo_jax.postprocess import sweeping

    fn, calls = _capture(monkeypatch, sweeping, "_sweep_core")
    rng, video_ids, frames = _frames()
    n = len(frames)
    truth = {"EXPR": rng.integers(0, 8, n), "VA": rng.uniform(-1, 1, (n, 2)), "AU": rng.integers(0, 2, (n, 12))}
    pred = {"EXPR": rng.dirichlet(np.ones(8), n), "VA": rng.uniform(-1, 1, (n, 2)), "AU": rng.uniform(0, 1, (n, 12))}
    sweeping.sweep(truth, pred, video_ids, frames, grid=sweeping.SweepGrid(sigmas=(1.0, 3.0), ks=(3, 5)))
    (args, static), = calls
    with monkeypatch.context() as m:
        m.setattr(dispatch, "cpu_kernels", lambda: pytest.fail("the CPU kernels were asked for"))
        _export(fn, *args, **static)


@pytest.mark.parametrize("arch", ["tf_efficientnet_b0", "mobilevitv2_150"])
def test_inference_forward_exports_for_cpu_with_the_xla_forms(arch, monkeypatch, calibrate):
    """`jax.export` on CPU: the module keeps the XLA forms (no custom call without compatibility
    guarantees) and runs to the live model's values (which use the kernels). The batch norms are
    calibrated: at initialization B0's scores are the same for both inputs to the last bit."""
    model = calibrate(registry.build(arch, 10, seed=0), arch)
    graphdef, state = nnx.split(model)
    weights, tree = jax.tree.flatten(state)  # a list of arrays: what a serialized artifact takes
    x = _inputs(arch)
    forward = jax.jit(lambda weights, x: nnx.merge(graphdef, jax.tree.unflatten(tree, weights))(x))
    with monkeypatch.context() as m:
        m.setattr(dispatch, "cpu_kernels", lambda: pytest.fail("the CPU kernels were asked for"))
        exported = _export(forward, weights, x, platforms=("cpu",))
    restored = jax.export.deserialize(exported.serialize())
    assert any(t.startswith("hsemo") for t in _custom_calls(forward.lower(weights, x).as_text()))
    with jax.default_matmul_precision("float32"):
        got, want = restored.call(weights, x), forward(weights, x)
    assert np.ptp(np.asarray(want), axis=0).max() > 1e-2 * float(jnp.abs(want).max())  # depend on the input
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


def test_device_program_exports_for_gpu_and_tpu(no_kernels):
    """`predict`'s whole device program (BlazeFace, face choice, crop and resize, two blended
    backbones, softmax) on uint8 frames: gathers and float32 sums only, no callback."""
    from hsemo_jax.checkpoint import ModelInfo
    from hsemo_jax.models import blazeface
    from hsemo_jax.predict import device

    backbones = []
    for seed in (0, 1):
        m = registry.build("mobilefacenet", 10, seed=seed)
        m.info = ModelInfo.for_arch("mobilefacenet", 10)
        backbones.append(device.Backbone.of(m, with_va=True))
    program = device.make_program(blazeface.build("short_range"), backbones, (0.25, 0.75), max_faces=3,
                                  with_embedding=True)
    exported = _export(program, np.zeros((2, 240, 320, 3), np.uint8), 4)
    shapes = {k: v.shape for k, v in zip(sorted(["boxes", "det_scores", "valid", "probs", "found", "va", "embedding",
                                                 "scores", "extent"]), exported.out_avals)}
    assert shapes["boxes"] == (2, 3, 4) and shapes["probs"] == (2, 3, 8) and shapes["va"] == (2, 3, 2)
    assert shapes["embedding"] == (2, 3, 512) and shapes["found"] == () and shapes["extent"] == (2,)
