"""Training losses, head and optimizer vs numpy transcriptions of their formulas (spec §1c, §3.3-3.4)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hsemo_jax.models.heads import MTLHead
from hsemo_jax import optim
from hsemo_jax.train import losses

RNG = np.random.default_rng(0)
N, C, K = 12, 8, 12


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_weighted_ce_keras(logits, y, mask, w, eps=0.0):
    """Keras: per-sample w_y * CE(smoothed onehot, softmax), mean over the valid rows."""
    total, n = 0.0, 0
    for i in range(len(y)):
        if not mask[i]:
            continue
        t = np.full(logits.shape[1], eps / logits.shape[1])
        t[y[i]] += 1 - eps
        total += w[y[i]] * -(t * np_log_softmax(logits[i].astype(np.float64))).sum()
        n += 1
    return total / max(n, 1)


def np_ccc(x, y):
    mx, my = x.mean(), y.mean()
    return 2 * ((x - mx) * (y - my)).mean() / (x.var() + y.var() + (mx - my) ** 2 + 1e-7)


def np_weighted_bce(logits, y, mask, w0, w1):
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    p = np.clip(p, 1e-7, 1 - 1e-7)
    bce = -(y * np.log(p + 1e-7) + (1 - y) * np.log(1 - p + 1e-7))
    w = w0 ** (1 - y) * w1 ** y
    return (w * bce)[mask].mean()


def test_class_and_au_weights_match_spec_formulas():
    counts = np.array([23976, 4555, 3168, 3122, 18135, 7609, 5228, 24852])  # spec §3.4
    labels = np.repeat(np.arange(8), counts)
    w = losses.class_weights(labels, 8)
    np.testing.assert_allclose(w, [1.037, 5.456, 7.845, 7.960, 1.370, 3.266, 4.754, 1.000], atol=1e-3)
    au = (RNG.random((50, K)) < np.linspace(0.05, 0.7, K)).astype(np.float32)
    mask = RNG.random(50) < 0.8
    w0, w1 = losses.au_weights(au, mask)
    a = au[mask]
    np.testing.assert_allclose(w0, len(a) / (2 * (1 - a).sum(0)), rtol=1e-6)
    np.testing.assert_allclose(w1, len(a) / (2 * a.sum(0)), rtol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_weighted_ce_batch_normalization_is_keras(eps):
    logits = RNG.standard_normal((N, C)).astype(np.float32) * 3
    y = RNG.integers(0, C, N)
    mask = RNG.random(N) < 0.7
    w = RNG.uniform(0.5, 5, C).astype(np.float32)
    got = jax.jit(lambda *a: losses.weighted_cross_entropy(*a, label_smoothing=eps))(logits, y, mask, w)
    np.testing.assert_allclose(float(got), np_weighted_ce_keras(logits, y, mask, w, eps), rtol=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_weighted_ce_weight_normalization_is_torch(eps):
    torch = pytest.importorskip("torch")
    logits = RNG.standard_normal((N, C)).astype(np.float32) * 3
    y = RNG.integers(0, C, N)
    mask = RNG.random(N) < 0.7
    w = RNG.uniform(0.5, 5, C).astype(np.float32)
    got = jax.jit(lambda *a: losses.weighted_cross_entropy(*a, label_smoothing=eps, normalize="weight"))(
        logits, y, mask, w)
    want = torch.nn.functional.cross_entropy(torch.from_numpy(logits[mask]), torch.from_numpy(y[mask]),
                                             weight=torch.from_numpy(w), label_smoothing=eps)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def test_ccc_loss_uses_population_stats_on_valid_rows():
    pred = RNG.standard_normal((N, 2)).astype(np.float32)
    true = (0.6 * pred + 0.3 * RNG.standard_normal((N, 2))).astype(np.float32)
    mask = RNG.random(N) < 0.75
    got = float(jax.jit(losses.ccc_loss)(pred, true, mask))
    want = 1 - 0.5 * (np_ccc(pred[mask, 0], true[mask, 0]) + np_ccc(pred[mask, 1], true[mask, 1]))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert float(losses.ccc_loss(pred, true, np.zeros(N, bool))) == 0.0


def test_weighted_bce_is_keras_clipped_bce():
    logits = (RNG.standard_normal((N, K)) * 2).astype(np.float32)
    y = (RNG.random((N, K)) < 0.3).astype(np.float32)
    mask = RNG.random(N) < 0.7
    mask[0] = True
    logits[0, 0], y[0, 0] = -40.0, 1.0  # p = 4e-18 is clipped to 1e-7: BCE log(2e-7), not log(1e-7)
    w0, w1 = RNG.uniform(0.5, 1.5, K).astype(np.float32), RNG.uniform(1, 20, K).astype(np.float32)
    got = float(jax.jit(losses.weighted_bce)(logits, y, mask, w0, w1))
    np.testing.assert_allclose(got, np_weighted_bce(logits, y, mask, w0, w1), rtol=1e-5)


def test_l2_and_attention_loss():
    ws = [RNG.standard_normal((5, 3)).astype(np.float32), RNG.standard_normal((10, 2)).astype(np.float32)]
    np.testing.assert_allclose(float(losses.l2_penalty(ws)), sum((w.astype(np.float64) ** 2).sum() for w in ws) / 512,
                               rtol=1e-6)
    maps = [RNG.random((2, 7, 7, 4)).astype(np.float32) for _ in range(3)]
    pairs = [(0, 1), (0, 2), (1, 2)]
    want = 3 / (sum(((maps[i] - maps[j]) ** 2).mean() for i, j in pairs) + np.finfo(float).eps)
    np.testing.assert_allclose(float(jax.jit(losses.attention_loss)(maps)), want, rtol=1e-5)
    assert float(losses.attention_loss(maps[:1])) == 0.0


def _fd_check(f, x, h=1e-6, rtol=1e-5):
    """jax.grad(f)(x) vs central differences, in float64 (all perturbations in one vmapped call)."""
    g = np.asarray(jax.jit(jax.grad(f))(x))
    eye = np.eye(x.size).reshape((x.size,) + x.shape) * h
    vals = np.asarray(jax.jit(jax.vmap(f))(np.concatenate([x + eye, x - eye])))
    fd = ((vals[:x.size] - vals[x.size:]) / (2 * h)).reshape(x.shape)
    np.testing.assert_allclose(g, fd, rtol=rtol, atol=1e-8)


def test_gradients_match_finite_differences():
    with jax.enable_x64(True):
        n = 6
        logits = RNG.standard_normal((n, 4))
        y = np.array([0, 1, 2, 3, 1, 0])
        mask = np.array([1, 1, 0, 1, 1, 1], bool)
        w = np.array([1.0, 2.0, 3.0, 0.5])
        _fd_check(lambda z: losses.weighted_cross_entropy(z, y, mask, w, label_smoothing=0.1), logits)
        _fd_check(lambda z: losses.weighted_cross_entropy(z, y, mask, w, normalize="weight"), logits)
        va_true = RNG.uniform(-1, 1, (n, 2))
        _fd_check(lambda p: losses.ccc_loss(p, va_true, mask), RNG.uniform(-1, 1, (n, 2)))
        au = (RNG.random((n, 3)) < 0.5).astype(np.float64)
        _fd_check(lambda z: losses.weighted_bce(z, au, mask, np.array([0.6, 0.7, 0.8]), np.array([2.0, 3.0, 1.5])),
                  RNG.standard_normal((n, 3)))
        m1 = RNG.random((2, 2, 2, 3))
        _fd_check(lambda a: losses.attention_loss([a, m1]), RNG.random((2, 2, 2, 3)), rtol=1e-4)


def test_head_layout_and_parameter_counts():
    head = MTLHead(1290)
    counts = {t: sum(v.size for v in jax.tree.leaves(nnx.state(getattr(head, t), nnx.Param)))
              for t in ("expr", "va", "au")}
    assert counts == {"expr": 10328, "va": 22, "au": 165248 + 1548}  # spec §3.3 summaries
    k = np.asarray(head.expr.dense.kernel[...])
    limit = np.sqrt(6 / (1290 + 8))  # glorot uniform
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.9 * limit
    assert not np.asarray(head.expr.dense.bias[...]).any()

    small = MTLHead(30, seed=1)
    graph, state = nnx.split(small)
    predict = jax.jit(lambda st, x: nnx.merge(graph, st).predict(x))
    x = RNG.standard_normal((4, 30)).astype(np.float32)
    out = jax.tree.map(np.asarray, predict(state, x))
    va_w, va_b = np.asarray(small.va.dense.kernel[...]), np.asarray(small.va.dense.bias[...])
    np.testing.assert_allclose(out["va"], np.tanh(x[:, -10:] @ va_w + va_b), rtol=1e-5, atol=1e-6)
    x2 = x.copy()
    x2[:, :-10] += 1.0  # VA sees only the last 10 inputs; EXPR and AU see all
    out2 = jax.tree.map(np.asarray, predict(state, x2))
    np.testing.assert_array_equal(out2["va"], out["va"])
    assert np.abs(out2["expr"] - out["expr"]).max() > 1e-4 and np.abs(out2["au"] - out["au"]).max() > 1e-4
    ew, eb = np.asarray(small.expr.dense.kernel[...]), np.asarray(small.expr.dense.bias[...])
    np.testing.assert_allclose(out["expr"], np.exp(np_log_softmax(x @ ew + eb)), rtol=1e-5, atol=1e-7)
    h1, h2 = small.au.hidden, small.au.out
    hid = np.maximum(x @ np.asarray(h1.kernel[...]) + np.asarray(h1.bias[...]), 0)
    au_logits = hid @ np.asarray(h2.kernel[...]) + np.asarray(h2.bias[...])
    np.testing.assert_allclose(out["au"], 1 / (1 + np.exp(-au_logits)), rtol=1e-5, atol=1e-7)


def test_keras_adam_matches_tf_formula():
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-7
    tx = optim.make_optimizer("keras_adam", lr, b1=b1, b2=b2, eps=eps)
    theta = RNG.standard_normal(5).astype(np.float32)
    grads = [RNG.standard_normal(5).astype(np.float32) * 1e-3 for _ in range(4)]
    state = tx.init(jnp.asarray(theta))
    p = jnp.asarray(theta)
    update = jax.jit(tx.update)
    for g in grads:
        u, state = update(jnp.asarray(g), state, p)
        p = p + u
    m = v = np.zeros(5)
    t64 = theta.astype(np.float64)
    for t, g in enumerate(grads, 1):  # keras/optimizers/adam.py (TF 2.13)
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        m = m + (g - m) * (1 - b1)
        v = v + (g.astype(np.float64) ** 2 - v) * (1 - b2)
        t64 = t64 - (m * alpha) / (np.sqrt(v) + eps)
    np.testing.assert_allclose(np.asarray(p), t64, rtol=1e-5)


def test_schedules_follow_the_recipes():
    exp = optim.make_schedule("exponential", 1e-4, total_updates=100, updates_per_epoch=10, gamma=0.6)
    np.testing.assert_allclose([float(exp(s)) for s in (0, 9, 10, 25)], [1e-4, 1e-4, 6e-5, 3.6e-5], rtol=1e-6)
    warm = optim.make_schedule("warmup_cosine", 1.0, total_updates=10, warmup_updates=2)
    np.testing.assert_allclose([float(warm(s)) for s in (0, 1, 2, 10)], [0.0, 0.5, 1.0, 0.0], atol=1e-6)
    assert float(optim.make_schedule("constant", 3e-3, total_updates=5)(4)) == 3e-3
