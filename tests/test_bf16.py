"""bf16 compute (`train.compute_dtype = "bfloat16"`) for every backbone: from one initial state,
three train steps in bfloat16 and in float32 give the same losses within bfloat16 tolerances and
update the weights in the same directions; the master weights and the batch-norm running
statistics stay float32; the bf16 step convolves in bfloat16 (its jaxpr); bf16 inference (eval
mode) agrees with float32.

Tolerances. bfloat16 keeps 8 significant bits, so each rounding is off by up to 2^-9 = 0.2%.
A randomly initialized backbone amplifies any such perturbation layer after layer (measured on
MobileFaceNet, 8 images: the 512-d embedding is off by ~10% relative in bf16, and by ~4.5% in
float32 with only the weights perturbed by 2^-9), and the losses average much of that away:
  - loss_expr (class-weighted CE): rtol 3%. Observed on the six backbones, 3 steps each:
    <= 1.4% (MobileFaceNet), mostly < 0.5%.
  - loss_va (1 - CCC over the batch, in [0, 2]): atol 0.1. At initialization a backbone gives
    every image nearly the same valence/arousal, so the CCC is a ratio of tiny covariances that
    any rounding moves: observed <= 0.03, and float32 runs with weights perturbed by 2^-9 moved
    it by up to 0.02 as well.
  - loss_attention (DDAMFN): rtol 2%; observed <= 0.2%.
  - each weight's move over the three steps (Adam: about lr x the gradient's sign per step) in the
    same direction for > 80% of the weights; observed 89-97%; unrelated gradients give 50%.
  - eval-mode scores, on the clip's faces, within 25% of their spread over the faces (the largest
    max - min of a score): the scores of another image would be off by about the spread. The
    model's batch norms are first calibrated on those faces (conftest's `calibrate`): at
    initialization every input got the same scores (MobileFaceNet's 8 spanned 7.6e-5, 1/60 of
    the former tolerance of 5% of the largest score), so the comparison could not fail.
    Calibrated, bf16 is off by 5.5% of the spread (MobileFaceNet), 10.2% (tf B0), 8.7% (B0),
    10.9% (B2), 7.0% (DDAMFN), 5.3% (MobileViT); the float32 model with only its weights scaled
    by 1 +- 2^-9 (one bfloat16 rounding) moves them by 2.5-4.1% of it: the random network's
    sensitivity, not an error (on noise images, which the statistics do not fit, DDAMFN's
    float32 scores move by more than their spread under that perturbation). Block by block
    (96 px, calibrated, error norm over the outputs' deviation from their batch mean), bf16's
    error grows at a steady 2.0x (tf B0) and 2.2-2.4x (B2) that of a random-sign 2^-9 weight
    perturbation, with no block jumping: B2 is off more only because it is deeper (scores 0.67
    against B0's 0.25 of their deviation).
A dtype error shows up as a failure to trace, a float32 convolution, or far larger differences.

Sizes: 96 px for EfficientNet and MobileViT (a 3x3 map at stride 32, and at stride 32 MobileViT's
bilinear resize to an even size, as at 224), 112 px for MobileFaceNet and DDAMFN (their 7x7 global
depthwise convolution and attention heads); a small learning rate keeps the three steps'
differences at the forward's. Compiling two train steps per backbone is most of the time (minutes
on two cores): the backbones but one are marked slow (`-m "not slow"` skips them).
"""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from hsemo_jax.models import registry
from hsemo_jax import optim
from hsemo_jax.train.loop import Trainer
from hsemo_jax.train.objectives import BackboneObjective
from data_fixtures import clip_images
from train_fixtures import conv_dtypes, float_dtypes, one_device_mesh

LR = 1e-5
TOLERANCES = {"loss_expr": {"rtol": 3e-2}, "loss_va": {"atol": 1e-1}, "loss_attention": {"rtol": 2e-2}}
SAME_DIRECTION = 0.8
EVAL_ATOL = 0.25  # of the scores' spread over the inputs
SIZES = {"tf_efficientnet_b0": 96, "efficientnet_b0": 96, "tf_efficientnet_b2": 96, "mobilefacenet": 112,
         "ddamfn": 112, "mobilevitv2_150": 96}
FAST = "mobilefacenet"  # the quickest to compile; the others are marked slow
ARCHS = [a if a == FAST else pytest.param(a, marks=pytest.mark.slow) for a in SIZES]
BATCH, STEPS = 8, 3


def _trainer(model, arch: str, dtype: str) -> Trainer:
    a = registry.get_arch(arch)
    objective = BackboneObjective(a.mean, a.std, attention_weight=0.1 if a.family == "ddamfn" else 0.0,
                                  compute_dtype=dtype)
    return Trainer(model, objective, optim.make_optimizer("adam", LR), mesh=one_device_mesh(),
                   compute_dtype=dtype, seed=1)


def _batches(arch: str):
    rng = np.random.default_rng(0)
    s = SIZES[arch]
    for _ in range(STEPS):
        yield {"images": rng.integers(0, 256, (BATCH, s, s, 3), dtype=np.uint8),
               "expr": rng.integers(0, 8, BATCH).astype(np.int32), "expr_mask": np.ones(BATCH, bool),
               "va": rng.uniform(-1, 1, (BATCH, 2)).astype(np.float32), "va_mask": np.ones(BATCH, bool)}


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_training_matches_float32(arch, calibrate):
    model = calibrate(registry.build(arch, 10, seed=0), arch, SIZES[arch])  # eval outputs depend on the input
    t32, t16 = _trainer(model, arch, "float32"), _trainer(model, arch, "bfloat16")
    initial = t32.host_state()["params"]
    jax.tree.map(np.testing.assert_array_equal, t16.host_state()["params"], initial)
    batches = list(_batches(arch))

    assert conv_dtypes(t16, batches[0]) == {("bfloat16", "bfloat16")}  # activations and weights
    assert conv_dtypes(t32, batches[0]) == {("float32", "float32")}

    m32 = [{k: float(v) for k, v in t32.step(b).items()} for b in batches]
    m16 = [{k: float(v) for k, v in t16.step(b).items()} for b in batches]
    assert all(np.isfinite(list(m.values())).all() for m in m16), m16
    for key, tol in TOLERANCES.items():
        if key in m32[0]:
            np.testing.assert_allclose([m[key] for m in m16], [m[key] for m in m32], **tol, err_msg=key)
    assert [m["loss"] for m in m16] != [m["loss"] for m in m32]  # really computed in bfloat16

    state = t16.host_state()
    assert float_dtypes(state["params"]) == {"float32"}
    assert float_dtypes(state["stats"]) == {"float32"}
    assert int(state["step"]) == STEPS
    # the updates (fp32 masters, so steps of lr are kept) go the same way: the gradients agree
    flat = lambda tree: np.concatenate([np.ravel(a) for a in jax.tree.leaves(tree)])  # noqa: E731
    d16, d32 = flat(state["params"]) - flat(initial), flat(t32.host_state()["params"]) - flat(initial)
    moved = (d16 != 0) & (d32 != 0)
    assert moved.mean() > 0.9
    same = np.mean(np.sign(d16[moved]) == np.sign(d32[moved]))
    assert same > SAME_DIRECTION, same

    # inference (eval mode, running statistics) in bfloat16 on the float32 run's state, on faces
    t16.state = jax.device_put(t32.state)
    x = {"images": clip_images(SIZES[arch])}
    s32, s16 = (np.asarray(t._predict(t.state, x)["scores"]) for t in (t32, t16))
    spread = float(np.ptp(s32, axis=0).max())
    assert spread > 0.1 * float(np.abs(s32).max())  # the scores depend on the face
    np.testing.assert_allclose(s16, s32, atol=EVAL_ATOL * spread)


# B2 is B0's blocks at other widths and depths: slow, tf_efficientnet_b0's case covers its code
SAME_CODE_AS_TF_B0 = "tf_efficientnet_b2"


@pytest.mark.parametrize("arch", [a if a != SAME_CODE_AS_TF_B0 else pytest.param(a, marks=pytest.mark.slow)
                                  for a in SIZES])
def test_bf16_forward_keeps_bf16_activations_and_fp32_statistics(arch):
    """Traced only (no compile): with the trainer's bfloat16 params, the forward in train and in
    eval mode returns bfloat16 scores, and the batch norms' updated running statistics are
    float32 as computed (before the trainer stores them)."""
    model = registry.build(arch, 10, seed=0)
    x = jnp.zeros((2, SIZES[arch], SIZES[arch], 3), jnp.bfloat16)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        p16 = jax.tree.map(lambda v: v.astype(jnp.bfloat16), params)

        def forward(params, rest):
            rest = jax.tree.map(lambda v: v, rest)  # Variables of this trace level (BatchNorm updates them)
            m = nnx.merge(graphdef, params, rest)
            return m(x), nnx.split(m, nnx.Param, ...)[2]

        scores, stats = jax.eval_shape(forward, p16, rest)
        assert scores.dtype == jnp.bfloat16, mode
        assert float_dtypes(stats) == {"float32"}, mode
