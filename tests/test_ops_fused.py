"""The fused CPU depthwise kernels (ops/fused.py), with and without the expansion
convolution inside, equal the same arithmetic in XLA ops, are what eval-mode EfficientNet runs on
CPU, and fall back cleanly when they cannot be built."""
import contextlib

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from hsemo_jax import ops
from hsemo_jax.models import registry
from hsemo_jax.ops import cpu_kernels as ck
from hsemo_jax.ops import fused as fd
from hsemo_jax.ops.conv import depthwise_kernel_applies

pytestmark = pytest.mark.skipif(ck._compiler() is None, reason="no C++ compiler to build the kernel")
TARGET = "hsemo_fused_depthwise"

CASES = [  # (n, h, w, c, k, stride, padding)
    (2, 9, 9, 16, 3, 1, 1),
    (3, 10, 7, 32, 3, 2, "SAME"),  # TF same: pads (0, 1) on even sizes
    (1, 11, 13, 48, 5, 2, "SAME"),
    (2, 7, 7, 16, 5, 1, "SAME"),
    (1, 30, 5, 16, 5, 1, 2),  # one image, one channel block: one unit
    (2, 6, 6, 112, 5, 1, "SAME"),  # few images: 7 channel blocks split unevenly over threads
]


def _inputs(n, h, w, c, k, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    return (f(n, h, w, c) * 2, f(k, k, 1, c) * 0.3, (f(c) * 0.3 + 1, f(c) * 0.2), (f(c) * 0.3 + 1, f(c) * 0.2))


def _run(x, kern, stride, padding, out_aff, in_aff, act, *, kernel: bool):
    """(y, sums, lowered text) of the jitted op, with the kernel allowed or not."""
    with contextlib.nullcontext() if kernel else ops.xla_forms():
        fn = jax.jit(lambda x, k, oa, ia: fd.depthwise_bn_act(x, k, stride, padding, oa, in_affine=ia, act=act))
        text = fn.lower(x, kern, out_aff, in_aff).as_text()
        y, s = fn(x, kern, out_aff, in_aff)
    return np.asarray(y), np.asarray(s), text


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("in_act,act", [(True, True), (False, True), (False, False)])
def test_kernel_equals_xla_form(case, in_act, act):
    n, h, w, c, k, stride, padding = case
    x, kern, out_aff, in_aff = _inputs(n, h, w, c, k)
    in_aff = in_aff if in_act else None
    with jax.default_matmul_precision("float32"):
        y1, s1, text = _run(x, kern, stride, padding, out_aff, in_aff, act, kernel=True)
        y0, s0, ref_text = _run(x, kern, stride, padding, out_aff, in_aff, act, kernel=False)
    assert TARGET in text and TARGET not in ref_text
    assert y1.shape == y0.shape and s1.shape == (n, c)
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5 * np.abs(y0).max())
    np.testing.assert_allclose(s1, s0, rtol=1e-5, atol=1e-5 * np.abs(s0).max())


def test_gradients_and_vmap_follow_the_xla_form():
    x, kern, out_aff, in_aff = _inputs(2, 8, 8, 16, 3)

    def loss(x, kern, sc):
        y, s = fd.depthwise_bn_act(x, kern, 1, 1, (sc, out_aff[1]), in_affine=in_aff)
        return (y ** 2).sum() + s.sum()

    assert depthwise_kernel_applies(x, kern[:, :, 0], (1, 1))
    g1 = jax.grad(loss, argnums=(0, 1, 2))(x, kern, out_aff[0])
    with ops.xla_forms():
        g0 = jax.grad(loss, argnums=(0, 1, 2))(x, kern, out_aff[0])
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    batched = jax.vmap(lambda x: fd.depthwise_bn_act(x, kern, 1, 1, out_aff)[0])(x[:, None])
    np.testing.assert_allclose(batched[:, 0], fd.depthwise_bn_act(x, kern, 1, 1, out_aff)[0], rtol=1e-6)


EXPAND_CASES = [  # (n, h, cin, c, k, stride)
    (1, 24, 16, 96, 3, 2),  # one image: channel blocks split over threads, 3 of 6 in odd halves
    (2, 14, 24, 144, 5, 2),  # 144: 4.5 panels of 32
    (9, 7, 8, 48, 3, 1),  # enough images for one unit each
    (1, 9, 20, 16, 5, 1),  # one block, one unit
]


@pytest.mark.parametrize("case", EXPAND_CASES)
def test_expansion_kernel_equals_xla_form(case):
    n, h, cin, c, k, stride = case
    x, kern, out_aff, in_aff = _inputs(n, h, h, c, k)
    xin = jnp.asarray(np.random.default_rng(1).standard_normal((n, h, h, cin)).astype(np.float32))
    w = jnp.asarray(np.random.default_rng(2).standard_normal((cin, c)).astype(np.float32) / np.sqrt(cin))
    pads = ops.explicit_padding("SAME", (h, h), (k, k), (stride, stride))
    static = ((stride, stride), pads, True)
    args = (xin, w, *in_aff, kern[:, :, 0], *out_aff)
    assert ck.available()
    with jax.default_matmul_precision("float32"):
        kernel = jax.jit(lambda *a: fd._expand_kernel(*a, *static))
        assert "hsemo_expand_depthwise" in kernel.lower(*args).as_text()
        y1, s1 = kernel(*args)
        y0, s0 = jax.jit(lambda *a: fd._expand_reference(*a, *static))(*args)
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5 * np.abs(y0).max())
    np.testing.assert_allclose(s1, s0, rtol=1e-5, atol=1e-5 * np.abs(s0).max())


def test_efficientnet_block_with_fused_expansion_equals_the_layers(monkeypatch):
    m = registry.build("tf_efficientnet_b0", 10, seed=0)
    m.eval()
    block = m.blocks[1][0]  # 16 -> 96 channels, 3x3 stride 2
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 20, 20, 16)).astype(np.float32))
    loss = lambda x: (block(x) ** 2).sum()  # noqa: E731
    with jax.default_matmul_precision("float32"):  # jitted, each traced once (eager runs op by op)
        forward = jax.jit(lambda x: block(x)).lower(x)
        assert "hsemo_expand_depthwise" in forward.as_text()
        y1, g1 = forward.compile()(x), jax.jit(jax.grad(loss))(x)
        monkeypatch.setattr(fd, "_expansion_fuses", lambda *a: False)  # the expansion as its own GEMM
        forward = jax.jit(lambda x: block(x)).lower(x)
        assert "hsemo_expand_depthwise" not in forward.as_text()
        y0, g0 = forward.compile()(x), jax.jit(jax.grad(loss))(x)
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5 * np.abs(y0).max())
    np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-5 * np.abs(g0).max())


@pytest.mark.parametrize("kernel", [True, False])
def test_projection_composed_into_the_next_expansion_equals_both(kernel):
    """MobileViT's first block's projection (1x1 conv + BN, read by the next block alone) goes into
    the next block's expansion in eval mode: one 1x1 convolution instead of two, the same output."""
    m = registry.build("mobilevitv2_150", 10, seed=0)
    m.eval()
    first, second = m.stages[0][0], m.stages[1][0]
    assert first.projection_composes(second) and not second.projection_composes(m.stages[1][1])
    rng = np.random.default_rng(0)
    for bn in (first.conv3_1x1.bn, second.conv1_1x1.bn):  # trained-like statistics
        for name, lo, hi in (("scale", 0.5, 1.5), ("bias", -0.3, 0.3), ("mean", -0.3, 0.3), ("var", 0.5, 2.0)):
            getattr(bn, name)[...] = jnp.asarray(rng.uniform(lo, hi, bn.mean.shape).astype(np.float32))
    x = jnp.asarray(rng.standard_normal((2, 32, 32, 48)).astype(np.float32))
    with contextlib.nullcontext() if kernel else ops.xla_forms():
        composed = jax.jit(lambda x: second(first.middle(x), first.conv3_1x1))
        text = composed.lower(x).as_text()
        with jax.default_matmul_precision("float32"):
            y1, y0 = composed(x), jax.jit(lambda x: second(first(x)))(x)
    assert ("hsemo_expand_depthwise" in text) == kernel
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5 * np.abs(y0).max())


@pytest.mark.parametrize("arch,eval_calls,expand_calls,train_calls", [
    # eval: one per block, B0's first five inverted residuals (expansion weights <= 64 KB) with
    # their expansion inside; training: the 15 inverted residuals
    ("tf_efficientnet_b0", 11, 5, 15),
    # the bottleneck blocks (the four at 112 and 56 pixels with their expansion) and the three
    # MobileViT blocks' depthwise ConvNormActs
    ("mobilevitv2_150", 5, 4, 6),
])
def test_models_run_the_kernel_in_eval_and_training(arch, eval_calls, expand_calls, train_calls):
    m = registry.build(arch, 10, seed=0)
    x = np.zeros((2, 224, 224, 3), np.float32)  # the models' resolution: which expansions fuse depends on it

    def lowered():
        graphdef, state = nnx.split(m)
        return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)).lower(state, x).as_text()

    m.eval()
    text = lowered()
    assert (text.count(TARGET), text.count("hsemo_expand_depthwise")) == (eval_calls, expand_calls)
    m.train()  # depthwise(silu(bn1(.))) on batch statistics
    text = lowered()
    assert (text.count(TARGET), text.count("hsemo_expand_depthwise")) == (train_calls, 0)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_efficientnet_blocks_keep_bfloat16(mode):
    """With bfloat16 weights and activations (the trainer's `compute_dtype`) a block computes in
    bfloat16: the batch norms' float32 scales are cast, not lifting activations to float32."""
    m = registry.build("tf_efficientnet_b0", 10, seed=0)
    getattr(m, mode)()
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)
    p16 = jax.tree.map(lambda v: v.astype(jnp.bfloat16), params)

    def block(params, rest):
        rest = jax.tree.map(lambda v: v, rest)  # Variables of this trace level (BatchNorm updates them)
        return nnx.merge(graphdef, params, rest).blocks[1][0](jnp.zeros((2, 32, 32, 16), jnp.bfloat16))

    assert jax.eval_shape(block, p16, rest).dtype == jnp.bfloat16
