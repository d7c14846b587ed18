"""The hand-written CPU kernels (ops/cpu_kernels): the 1x1-convolution GEMM, the
depthwise-convolution gradient and batch norm's training statistics and gradient equal their XLA
forms and are what CPU inference and training run; the library is built once, cached, and falls back cleanly when it cannot be built. (The
fused inference kernel: test_ops_fused.py.)"""
from pathlib import Path

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from hsemo_jax import ops
from hsemo_jax.models import conv_bn, layers, registry
from hsemo_jax.ops import cpu_kernels as ck

pytestmark = pytest.mark.skipif(ck._compiler() is None, reason="no C++ compiler to build the kernels")
GRAD = "hsemo_depthwise_grad"

GRAD_CASES = [  # (n, h, w, c, k, stride, padding)
    (2, 9, 9, 16, 3, 1, 1),
    (3, 10, 7, 32, 3, 2, "SAME"),  # TF same: pads (0, 1)
    (1, 11, 13, 48, 5, 2, "SAME"),
    (2, 7, 7, 16, 5, 1, "SAME"),
    (2, 7, 7, 32, 7, 1, 0),  # MobileFaceNet's global depthwise 7x7: one output
    (2, 12, 9, 16, 7, 2, 3),
    (5, 6, 6, 16, 3, 2, 1),  # more images than threads
    (1, 5, 6, 16, 3, 1, ((0, 2), (2, 1))),  # uneven padding: rows of dx no output reaches
]


def _grads(x, kern, g, stride, padding):
    """(dx, dkernel, lowered text) of the jitted VJP of a depthwise conv2d_shift."""
    c = x.shape[-1]
    fn = jax.jit(lambda x, k, g: jax.vjp(lambda x, k: ops.conv2d_shift(x, k, stride, padding, c), x, k)[1](g))
    return (*fn(x, kern, g), fn.lower(x, kern, g).as_text())


@pytest.mark.parametrize("case", GRAD_CASES)
def test_depthwise_grad_equals_shift_form(case):
    n, h, w, c, k, stride, padding = case
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
    kern = jnp.asarray(rng.standard_normal((k, k, 1, c)), jnp.float32)
    y = ops.conv2d_shift(x, kern, (stride, stride), padding, c)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    with jax.default_matmul_precision("float32"):
        dx1, dk1, text = _grads(x, kern, g, (stride, stride), padding)
        with ops.xla_forms():
            dx0, dk0, ref_text = _grads(x, kern, g, (stride, stride), padding)
    assert GRAD in text and GRAD not in ref_text
    np.testing.assert_allclose(dx1, dx0, rtol=1e-5, atol=1e-5 * np.abs(dx0).max())
    np.testing.assert_allclose(dk1, dk0, rtol=1e-5, atol=1e-5 * np.abs(dk0).max())


@pytest.mark.parametrize("case", GRAD_CASES[:4] + GRAD_CASES[6:])
def test_depthwise_silu_input_equals_xla_form(case):
    """depthwise(silu(h * s + b)): the fused forward and the gradient kernel that rebuilds the
    activation from h give what the XLA form gives, for h, the kernel, s and b."""
    n, h, w, c, k, stride, padding = case
    rng = np.random.default_rng(3)
    f32 = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    x, kern, sc, sh = f32(n, h, w, c) * 2, f32(k, k, 1, c), f32(c) * 0.3 + 1, f32(c) * 0.2

    def run():
        fn = lambda x, kern, sc, sh: ops.depthwise_silu_input(x, kern, stride, padding, (sc, sh))  # noqa: E731
        y, vjp = jax.vjp(fn, x, kern, sc, sh)
        return y, vjp(jnp.cos(y))

    with jax.default_matmul_precision("float32"):
        got, text = jax.jit(run)(), jax.jit(run).lower().as_text()
        with ops.xla_forms():
            want = jax.jit(run)()
    assert GRAD + "_silu" in text
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * np.abs(b).max())


def test_training_step_gradients_use_the_kernel():
    """B0's 16 depthwise convolutions take their gradients from the kernels (15 through the
    activation, `depthwise_silu_input`), and the gradients of a train-mode loss agree with the XLA
    forms'."""
    m = registry.build("tf_efficientnet_b0", 10, seed=0)
    m.train()
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 64, 3)), jnp.float32)

    def loss(params, rest, x):
        rest = jax.tree.map(lambda v: v, rest)  # Variables of this trace level (BatchNorm updates them)
        return jnp.sum(nnx.merge(graphdef, params, rest)(x) ** 2)

    with jax.default_matmul_precision("float32"):
        lowered = jax.jit(jax.grad(loss)).lower(params, rest, x)  # traced once: checked, then compiled
        text = lowered.as_text()
        assert text.count(f"@{GRAD}_silu(") == 15 and text.count(f"@{GRAD}(") == 1
        g1 = lowered.compile()(params, rest, x)
        with ops.xla_forms():
            g0 = jax.jit(jax.grad(loss))(params, rest, x)
    # tolerance on the scale of all gradients: the biases of batch norms followed by another one
    # have gradients of zero up to rounding; through 16 blocks the two forms' float32 roundings
    # differ by up to ~2e-5 of it
    scale = max(float(np.abs(b).max()) for b in jax.tree.leaves(g0))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5 * scale)


POINTWISE = "hsemo_pointwise"
POINTWISE_CASES = [  # (M, K, N)
    (1, 1, 1),
    (5, 3, 16),  # fewer rows than a register tile
    (13, 7, 24),  # a tile and one row; a panel of 24 valid columns
    (12, 16, 33),  # one column beyond a panel
    (25, 9, 56),  # a second panel of 24 valid columns (a vector and a half with AVX-512)
    (49, 1152, 320),  # B0's 7x7 stage: one row block, panels split over threads
    (5000, 16, 96),  # several row blocks
    (3, 200, 5),
]


@pytest.mark.parametrize("m,k,n", POINTWISE_CASES)
def test_pointwise_equals_matmul(m, k, n):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    assert ck.available()  # builds and registers the kernels
    fn = jax.jit(ck.pointwise)
    assert POINTWISE in fn.lower(x, w).as_text()
    want = x.astype(np.float64) @ w
    np.testing.assert_allclose(fn(x, w), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def _conv1x1_loss(x, k):
    return jnp.sum(ops.conv2d(x, k) ** 2)


def test_conv1x1_runs_the_kernel_where_no_gradient_is_taken():
    """Every 1x1 convolution of eval-mode B0 is the kernel; a differentiated one is the XLA form
    (the same values, and the gradient through the custom VJP)."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 5, 6, 40)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 1, 40, 24)), jnp.float32)
    forward = jax.jit(ops.conv2d)
    grad = jax.jit(jax.value_and_grad(_conv1x1_loss, argnums=(0, 1)))
    assert POINTWISE in forward.lower(x, k).as_text() and POINTWISE not in grad.lower(x, k).as_text()
    with jax.default_matmul_precision("float32"):
        y, (v, _) = forward(x, k), grad(x, k)
    want = np.einsum("nhwc,cd->nhwd", np.asarray(x, np.float64), k[0, 0])
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(v, np.sum(want ** 2), rtol=1e-5)

    m = registry.build("tf_efficientnet_b0", 10, seed=0)
    m.eval()
    convs = sum(isinstance(v, layers.Conv2d) and v.kernel.shape[:2] == (1, 1) and v.groups == 1
                for _, v in nnx.iter_graph(m))
    graphdef, state = nnx.split(m)
    x = np.zeros((1, 224, 224, 3), np.float32)
    text = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x).as_text()
    # the first five expansions run inside the depthwise kernel (tests/test_ops_fused.py);
    # the rest (expansions, SE convolutions, projections with their gate, the head) are the GEMM
    assert text.count("@hsemo_expand_depthwise(") == 5
    assert text.count(f"@{POINTWISE}(") == convs - 5 > 50
    assert text.count("@hsemo_conv_act(") == 1  # the stem, with its batch norm and SiLU


@pytest.mark.parametrize("n,h,w,c,d", [(1, 7, 7, 48, 40), (3, 5, 4, 24, 33), (2, 66, 66, 16, 20)])
def test_gated_pointwise_equals_gating_then_matmul(n, h, w, c, d):
    """conv1x1_fused(x, k, gate=gate) = conv1x1(x * gate), the gate per sample (row blocks never span
    two samples, and a sample of 66x66 rows spans two blocks); differentiated, the gradient in
    x, k and the gate is the XLA form's."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 1, c, d)), jnp.float32)
    gate = jnp.asarray(rng.uniform(0, 1, (n, c)), jnp.float32)
    gated = lambda x, k, gate: ops.conv1x1_fused(x, k, gate=gate)  # noqa: E731
    loss = lambda x, k, gate: jnp.sum(gated(x, k, gate) ** 2)  # noqa: E731
    forward = jax.jit(gated)
    assert f"@{POINTWISE}(" in forward.lower(x, k, gate).as_text()
    with jax.default_matmul_precision("float32"):
        y = forward(x, k, gate)
        want = np.einsum("nhwc,cd->nhwd", np.asarray(x, np.float64) * np.asarray(gate)[:, None, None], k[0, 0])
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        v1, g1 = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, k, gate)
        v0, g0 = jax.value_and_grad(lambda x, k, gate: jnp.sum(ops.conv2d(x * gate[:, None, None], k) ** 2),
                                    argnums=(0, 1, 2))(x, k, gate)
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


EPILOGUE_CASES = [  # (samples, rows per sample, K, N, gate, affine, act, residual)
    (1, 1, 48, 1152, False, True, "sigmoid", False),  # a squeeze-excite expansion (bias, sigmoid)
    (2, 49, 1152, 320, True, True, None, True),  # B0's projection: gate, batch norm, skip
    (1, 13, 7, 24, False, True, "silu", True),  # a panel of 24 valid columns: partial vectors
    (3, 70, 16, 33, True, False, None, True),  # one column beyond a panel; several row blocks
    (1, 5, 3, 20, False, False, "silu", False),
]


@pytest.mark.parametrize("s,rows,k,n,gated,affine,act,res", EPILOGUE_CASES)
def test_pointwise_epilogue_equals_float64(s, rows, k, n, gated, affine, act, res):
    """act(((x * gate) @ w) * scale + shift) + residual in one kernel pass equals the float64
    arithmetic, each part on or off; differentiated, the gradient is the XLA form's."""
    rng = np.random.default_rng(5)
    m = s * rows
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32) / np.sqrt(k)
    kw = dict(gate=rng.uniform(0, 1, (s, k)).astype(np.float32) if gated else None,
              scale=rng.uniform(0.5, 1.5, n).astype(np.float32) if affine else None,
              shift=rng.standard_normal(n).astype(np.float32) if affine else None,
              residual=rng.standard_normal((m, n)).astype(np.float32) if res else None)
    forward = jax.jit(lambda x, w: ops.pointwise(x, w, act=act, **kw))
    assert f"@{POINTWISE}(" in forward.lower(x, w).as_text()
    def plain(x, w, xp=jnp):
        if gated:
            x = (x.reshape(s, rows, k) * kw["gate"][:, None]).reshape(m, k)
        y = x @ w
        if affine:
            y = y * kw["scale"] + kw["shift"]
        y = {None: y, "silu": y / (1 + xp.exp(-y)), "sigmoid": 1 / (1 + xp.exp(-y))}[act]
        return y + kw["residual"] if res else y

    want = plain(np.float64(x), w, np)
    np.testing.assert_allclose(forward(x, w), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(ops.pointwise(x, w, act=act, **kw) ** 2), argnums=(0, 1)))
    assert POINTWISE not in grad.lower(x, w).as_text()
    with jax.default_matmul_precision("float32"):
        g1 = grad(x, w)
        g0 = jax.grad(lambda x, w: jnp.sum(plain(x, w) ** 2), argnums=(0, 1))(x, w)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_pointwise_kernel_rejects_mismatched_epilogue():
    """A scale of the wrong length is an error from the kernel, not a read past the buffer."""
    x, w = np.ones((4, 8), np.float32), np.ones((8, 16), np.float32)
    bad = np.ones(15, np.float32)
    with pytest.raises(Exception, match="do not agree"):
        jax.block_until_ready(jax.jit(lambda x, w: ck.pointwise(x, w, scale=bad, shift=bad))(x, w))


CONV_ACT_CASES = [  # (n, h, w, c, d, k, stride, padding, act, bias, bn, residual)
    (1, 16, 16, 3, 32, 3, 2, "SAME", "silu", False, True, False),  # EfficientNet's stem
    (2, 9, 11, 3, 48, 3, 2, 1, "silu", False, True, False),  # MobileViT's
    (1, 7, 6, 5, 24, 3, 1, 1, None, False, True, False),  # a panel of 24 columns
    (3, 5, 5, 40, 70, 1, 1, 0, None, False, True, False),  # MobileViT's 1x1 ConvNormActs
    (2, 6, 6, 32, 32, 1, 1, 0, None, False, True, True),  # a projection with its skip connection
    (2, 4, 3, 24, 40, 1, 1, 0, "silu", True, False, True),  # MobileViT's MLP: bias, SiLU, residual
    (1, 1, 1, 40, 8, 1, 1, 0, "sigmoid", True, False, False),  # a squeeze-excite expansion
]


@pytest.mark.parametrize("case", CONV_ACT_CASES)
def test_conv_bn_act_equals_the_layers(case):
    """conv_bn_act in eval mode (one kernel: HsemoConvAct for k > 1, the GEMM with its epilogue for
    1x1) equals the layers it stands for, values and gradients."""
    n, h, w, c, d, k, stride, padding, act, bias, with_bn, with_res = case
    rng = np.random.default_rng(5)
    conv = layers.Conv2d(c, d, k, stride=stride, padding=padding, bias=bias, rng=rng)
    bn = None
    if with_bn:
        bn = layers.BatchNorm(d)
        bn.mean[...] = jnp.asarray(rng.standard_normal(d), jnp.float32)
        bn.var[...] = jnp.asarray(rng.uniform(0.5, 2, d), jnp.float32)
        bn.scale[...] = jnp.asarray(rng.uniform(0.5, 2, d), jnp.float32)
        bn.use_running_average = True
    x = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
    oh, ow = -(-h // stride), -(-w // stride)
    res = jnp.asarray(rng.standard_normal((n, oh, ow, d)), jnp.float32) if with_res else None
    fused = lambda x: conv_bn.conv_bn_act(conv, bn, x, act=act, residual=res)  # noqa: E731
    assert ("hsemo_conv_act" if k > 1 else "@hsemo_pointwise(") in jax.jit(fused).lower(x).as_text()

    def plain(x):
        y = conv(x)
        y = ops.ACTIVATIONS[act](y if bn is None else bn(y))
        return y if res is None else y + res

    with jax.default_matmul_precision("float32"):
        y1, y0 = jax.jit(fused)(x), jax.jit(plain)(x)
        g1 = jax.grad(lambda x: jnp.sum(fused(x) ** 2))(x)
        g0 = jax.grad(lambda x: jnp.sum(plain(x) ** 2))(x)
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5 * np.abs(y0).max())
    np.testing.assert_allclose(g1, g0, rtol=1e-5, atol=1e-5 * np.abs(g0).max())


BN_SHAPES = [(4, 9, 9, 24), (64, 32), (3, 5, 5, 1280), (2, 17, 13, 40)]  # channels not all x16


def _plain_batch_norm(x, scale, bias, eps):
    m = x.reshape(-1, x.shape[-1]).mean(0)
    v = x.reshape(-1, x.shape[-1]).var(0)
    return (x - m) / jnp.sqrt(v + eps) * scale + bias, m, v


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_statistics_and_gradient(shape):
    """batch_norm_train (kernel and XLA forms) equals autodiff of the textbook formula, mean and
    variance included; the statistics agree with float64 on data with a large mean."""
    rng = np.random.default_rng(2)
    f32 = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    x, scale, bias = f32(*shape) * 3 + 50, f32(shape[-1]), f32(shape[-1])
    cot = (f32(*shape), f32(shape[-1]), f32(shape[-1]))

    def run(fn):
        out, vjp = jax.vjp(lambda *a: fn(*a, 1e-3), x, scale, bias)
        return out, vjp(cot)

    with jax.default_matmul_precision("float32"):
        want = jax.jit(lambda: run(_plain_batch_norm))()
        got = jax.jit(lambda: run(ops.batch_norm_train))()
        text = jax.jit(lambda: run(ops.batch_norm_train)).lower().as_text()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ck, "available", lambda: False)
            xla = jax.jit(lambda: run(ops.batch_norm_train))()
    assert "hsemo_channel_moments" in text and "hsemo_channel_grad_sums" in text
    for form in (got, xla):
        for a, b in zip(jax.tree.leaves(form), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * np.abs(b).max())
    x64 = np.asarray(x, np.float64).reshape(-1, shape[-1])
    np.testing.assert_allclose(got[0][1], x64.mean(0), rtol=1e-6)
    np.testing.assert_allclose(got[0][2], x64.var(0), rtol=1e-4)


def _fresh(monkeypatch, tmp_path, **env):
    monkeypatch.setenv("HSEMO_JAX_CACHE", str(tmp_path))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ck.available.cache_clear()
    monkeypatch.setattr(ck.jax.ffi, "register_ffi_target", lambda *a, **k: None)  # keep the loaded one


def test_off_switch_and_broken_compiler_fall_back(monkeypatch, tmp_path):
    try:
        _fresh(monkeypatch, tmp_path, HSEMO_JAX_FUSED_KERNELS="0")
        assert not ck.available()
        _fresh(monkeypatch, tmp_path, HSEMO_JAX_FUSED_KERNELS="1", CXX=str(tmp_path / "cxx"))
        (tmp_path / "cxx").write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo fake 1.0 && exit 0\n"
                                      "echo 'fatal: cannot compile' >&2; exit 1\n")
        (tmp_path / "cxx").chmod(0o755)
        with pytest.warns(RuntimeWarning, match="cannot compile"):
            assert not ck.available()
        assert not list((tmp_path / "kernels").glob("*.so"))  # nothing half-written is cached
    finally:
        monkeypatch.undo()
        ck.available.cache_clear()
    assert ck.available()


def test_kernels_only_for_x86_with_avx2(monkeypatch):
    monkeypatch.setattr(ck.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(ck, "_cpu_signature", lambda: "aarch64Features\t: fp asimd")
    assert not ck._cpu_supported()
    monkeypatch.setattr(ck.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(ck, "_cpu_signature", lambda: "x86_64flags\t: fpu sse4_2 avx")  # no AVX2
    assert not ck._cpu_supported()
    monkeypatch.setattr(ck, "_cpu_signature", lambda: "x86_64flags\t: fpu fma avx avx2")
    assert ck._cpu_supported()


def test_build_is_cached(monkeypatch, tmp_path):
    """The second build finds the first's library and runs no compiler. The compile itself (most of a
    minute on two cores) is stubbed here to write a placeholder library: the real one runs wherever
    the kernels are first built (ck.available(), the other tests of this file)."""
    monkeypatch.setenv("HSEMO_JAX_CACHE", str(tmp_path))
    real_run, compiles = ck.subprocess.run, []

    def run(cmd, *args, **kwargs):
        if "-o" not in cmd:  # `cxx --version`: part of the cache key, run for real
            return real_run(cmd, *args, **kwargs)
        compiles.append(cmd)
        Path(cmd[cmd.index("-o") + 1]).write_bytes(b"a placeholder library")
        return ck.subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(ck.subprocess, "run", run)
    first = ck._build(ck._compiler())
    mtime = first.stat().st_mtime_ns
    assert len(compiles) == 1 and first.read_bytes() == b"a placeholder library"
    assert ck._build(ck._compiler()) == first and first.stat().st_mtime_ns == mtime
    assert len(compiles) == 1  # no second compile
