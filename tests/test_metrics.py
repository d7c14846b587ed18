"""hsemo_jax.metrics against scikit-learn, numpy and the notebook's formulas."""
import numpy as np
import pytest
from scipy.stats import entropy
from sklearn.metrics import cohen_kappa_score, f1_score

from hsemo_jax import metrics
from hsemo_jax.errors import InputError


def ccc_score(x, y):
    """mtl7#c3 CCC_score (population std)."""
    vx, vy = x - np.mean(x), y - np.mean(y)
    rho = np.sum(vx * vy) / (np.sqrt(np.sum(vx ** 2)) * np.sqrt(np.sum(vy ** 2)))
    return 2 * rho * np.std(x) * np.std(y) / (np.std(x) ** 2 + np.std(y) ** 2 + (np.mean(x) - np.mean(y)) ** 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ccc_matches_notebook(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=500)
    y = 0.6 * x + rng.normal(size=500) * 0.5 + 0.3
    assert metrics.ccc(x, y) == pytest.approx(ccc_score(x, y), rel=1e-5)
    xy = np.stack([x, -x], 1)
    yy = np.stack([y, y], 1)
    np.testing.assert_allclose(metrics.ccc(xy, yy), [ccc_score(x, y), ccc_score(-x, y)], rtol=1e-5)
    m = rng.random(500) < 0.5
    assert metrics.ccc(x, y, mask=m) == pytest.approx(ccc_score(x[m], y[m]), rel=1e-5)


def test_ccc_edge_cases():
    x = np.linspace(-1, 1, 10)
    assert metrics.ccc(x, x) == pytest.approx(1.0)
    assert metrics.ccc(x, -x) == pytest.approx(-1.0)
    assert metrics.ccc(x, np.zeros(10)) == 0.0  # constant prediction: 0 (CCC_score would be NaN)
    assert metrics.ccc([0.5], [0.2]) == 0.0  # a single frame: both variances 0, means differ
    assert np.isnan(metrics.ccc([0.5, 0.5], [0.5, 0.5]))


@pytest.mark.parametrize("seed", range(4))
def test_macro_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.integers(0, 8, n)
    y[y == 3] = 4  # class 3 absent from the truth
    p = rng.integers(0, 8, n)
    p[p == 5] = 6  # class 5 absent from the predictions
    p[p == 1] = 0
    y[y == 1] = 0  # class 1 absent from both: must not count with the default
    assert metrics.macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
    assert metrics.macro_f1(y, p, labels="all") == pytest.approx(
        f1_score(y, p, labels=list(range(8)), average="macro", zero_division=0), abs=1e-12)
    assert metrics.macro_f1(y, p, labels=[0, 2, 7]) == pytest.approx(
        f1_score(y, p, labels=[0, 2, 7], average="macro", zero_division=0), abs=1e-12)
    # scores in, argmax taken; masked rows ignored, even when their label is the missing code
    scores = rng.random((n, 8)).astype(np.float32)
    y_missing = y.copy()
    mask = rng.random(n) < 0.7
    y_missing[~mask] = -1
    ref = f1_score(y[mask], scores.argmax(1)[mask], average="macro")
    assert metrics.macro_f1(y_missing, scores, mask=mask) == pytest.approx(ref, abs=1e-12)


def test_macro_f1_single_class_and_accuracy():
    y = np.array([2, 2, 2])
    assert metrics.macro_f1(y, y) == 1.0
    assert metrics.macro_f1(y, np.array([2, 2, 5])) == pytest.approx(f1_score(y, [2, 2, 5], average="macro"))
    assert metrics.accuracy(y, np.array([2, 1, 2])) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_au_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((400, 12)) < 0.3).astype(int)
    y[:, 7] = 0  # an AU never active: F1 = 0 (zero_division=0)
    p = np.clip(y * 0.4 + rng.random((400, 12)) * 0.7, 0, 1).astype(np.float32)
    y_missing = y.copy()
    y_missing[::9] = -1
    valid = y_missing.min(1) >= 0
    thr = np.linspace(0.3, 0.7, 12)
    got = metrics.au_f1(y_missing, p, thr)
    ref = [f1_score(y[valid, i], (p[valid, i] >= np.float32(thr[i])) * 1, zero_division=0) for i in range(12)]
    np.testing.assert_allclose(got, ref, atol=1e-12)
    got5 = metrics.au_f1(y_missing, p)
    ref5 = [f1_score(y[valid, i], (p[valid, i] >= 0.5) * 1, zero_division=0) for i in range(12)]
    np.testing.assert_allclose(got5, ref5, atol=1e-12)


def test_abaw_mtl_with_missing_codes():
    rng = np.random.default_rng(3)
    n = 200
    va_t = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    va_t[::7] = -5
    va_t[3, 1] = -5  # one missing dimension invalidates the row
    va_p = (va_t * 0.5 + rng.normal(size=(n, 2)) * 0.2).astype(np.float32)
    ex_t = rng.integers(0, 8, n)
    ex_t[::3] = -1
    ex_p = rng.random((n, 8)).astype(np.float32)
    au_t = (rng.random((n, 12)) < 0.4).astype(int)
    au_t[::5] = -1
    au_p = rng.random((n, 12)).astype(np.float32)
    res = metrics.abaw_mtl(va_true=va_t, va_pred=va_p, expr_true=ex_t, expr_pred=ex_p, au_true=au_t, au_probs=au_p)
    mv = (va_t[:, 0] > -5) & (va_t[:, 1] > -5)
    cv, ca = ccc_score(va_t[mv, 0], va_p[mv, 0]), ccc_score(va_t[mv, 1], va_p[mv, 1])
    me = ex_t > -1
    fe = f1_score(ex_t[me], ex_p.argmax(1)[me], average="macro")
    ma = au_t.min(1) >= 0
    fa = np.mean([f1_score(au_t[ma, i], (au_p[ma, i] >= 0.5) * 1) for i in range(12)])
    assert res["CCC_V"] == pytest.approx(cv, rel=1e-5) and res["CCC_A"] == pytest.approx(ca, rel=1e-5)
    assert res["P_VA"] == pytest.approx(0.5 * (cv + ca), rel=1e-5)
    assert res["P_EXPR"] == pytest.approx(fe, abs=1e-12)
    assert res["P_AU"] == pytest.approx(fa, abs=1e-12)
    assert res["P_MTL"] == pytest.approx(res["P_VA"] + res["P_EXPR"] + res["P_AU"])
    assert (res["n_VA"], res["n_EXPR"], res["n_AU"]) == (mv.sum(), me.sum(), ma.sum())
    only_expr = metrics.abaw_mtl(expr_true=ex_t, expr_pred=ex_p)
    assert set(only_expr) == {"P_EXPR", "EXPR_accuracy", "n_EXPR"}


def test_kl_and_kappa():
    rng = np.random.default_rng(4)
    prior = np.array([14445, 24915, 10780, 10637, 10535, 10112, 8878], float)
    lab = rng.integers(0, 7, 1000)
    q = np.bincount(lab, minlength=7) / 1000
    assert metrics.kl_divergence(prior, lab) == pytest.approx(entropy(prior / prior.sum(), q), rel=1e-9)
    assert metrics.kl_divergence(prior, lab[lab != 2]) == np.inf  # a class never predicted
    a = rng.integers(0, 8, 500)
    b = np.where(rng.random(500) < 0.6, a, rng.integers(0, 8, 500))
    a[a == 4] = 3  # class 4 absent from a
    assert metrics.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert metrics.cohen_kappa(a, b, 8) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert np.isnan(metrics.cohen_kappa([1, 1, 1], [1, 1, 1]))


def test_bad_inputs_name_the_problem():
    with pytest.raises(InputError, match="length mismatch"):
        metrics.macro_f1([0, 1, 2], [0, 1])
    with pytest.raises(InputError, match=r"y_true row 1: label 9 out of range"):
        metrics.macro_f1([0, 9, 2], [0, 1, 2])
    with pytest.raises(InputError, match=r"y_pred row 2: non-finite value nan"):
        metrics.macro_f1([0, 1, 1], np.array([[1.0, 0], [0, 1], [np.nan, 0]]), num_classes=2)
    with pytest.raises(InputError, match="y_pred row 1: non-finite value inf"):
        metrics.ccc([0.1, 0.2], [0.1, np.inf])
    with pytest.raises(InputError, match="no rows"):
        metrics.ccc([], [])
    with pytest.raises(InputError, match="label 2 out of range"):
        metrics.au_f1(np.full((3, 12), 2), np.zeros((3, 12)))
    with pytest.raises(InputError, match="no frame with all AU labels"):
        metrics.au_f1(np.full((3, 12), -1), np.zeros((3, 12)))
    with pytest.raises(InputError, match="thresholds: expected a number or 12 numbers"):
        metrics.au_f1(np.zeros((3, 12), int), np.zeros((3, 12)), thresholds=[0.5] * 11)
    with pytest.raises(InputError, match="no valid frames"):
        metrics.macro_f1([-1, -1], [0, 1], mask=[False, False])
