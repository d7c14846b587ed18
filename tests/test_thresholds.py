"""AU threshold search: the notebook's sklearn loop, and 1 vs 8 (fake CPU) devices."""
import math

import jax
import numpy as np
import pytest
from sklearn.metrics import f1_score

from hsemo_jax.errors import InputError
from hsemo_jax.postprocess import DEFAULT_GRID, search_au_thresholds


def f1_score_max(gt, pred, thresh):
    """mtl7#c30 f1_score_max_for_AU_one_class for every AU (F1 part), thresholds compared in float32."""
    thr, best = [], []
    for a in range(gt.shape[1]):
        f1 = [f1_score(gt[:, a], (pred[:, a] >= np.float32(t)) * 1, zero_division=0) for t in thresh]
        m = max(f1)
        if m < 0 or math.isnan(m):
            thr.append(0.0), best.append(0.0)
        else:
            thr.append(thresh[int(np.argmax(f1))]), best.append(m)
    return np.array(thr), np.array(best)


def au_data(seed, n=517):
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 12))
    labels = (latent + rng.normal(size=(n, 12)) * 0.7 > 0.8).astype(int)
    probs = (1 / (1 + np.exp(-(latent - 0.5)))).astype(np.float32)
    labels[:, 5] = 0  # an AU that never occurs: F1 0 everywhere -> first threshold
    return probs, labels


def test_matches_notebook_loop_default_and_fine_grid():
    probs, labels = au_data(0)
    labels_missing = labels.copy()
    labels_missing[::11] = -1  # rows with missing AUs are skipped
    keep = labels_missing.min(1) >= 0
    thr, f1 = search_au_thresholds(probs, labels_missing)
    ref_t, ref_f = f1_score_max(labels[keep], probs[keep], DEFAULT_GRID)
    np.testing.assert_array_equal(thr, ref_t)
    np.testing.assert_allclose(f1, ref_f, atol=1e-12)
    assert thr[5] == DEFAULT_GRID[0] and f1[5] == 0.0
    assert DEFAULT_GRID[2] == 0.30000000000000004  # the notebook's float values are kept
    grid = np.linspace(0.01, 0.99, 99)
    cols = [0, 5]  # any number of AUs; two keep the sklearn reference quick
    thr, f1 = search_au_thresholds(probs[:, cols], labels[:, cols], grid)
    ref_t, ref_f = f1_score_max(labels[:, cols], probs[:, cols], grid)
    np.testing.assert_array_equal(thr, ref_t)
    np.testing.assert_allclose(f1, ref_f, atol=1e-12)


def test_ties_go_to_the_lowest_threshold():
    probs = np.array([[0.05], [0.95], [0.95], [0.05]], np.float32).repeat(12, 1)
    labels = np.array([[0], [1], [1], [0]]).repeat(12, 1)
    thr, f1 = search_au_thresholds(probs, labels)
    assert (thr == 0.1).all() and (f1 == 1.0).all()


def test_one_device_equals_eight_devices():
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py should provide 8 fake CPU devices"
    probs, labels = au_data(1, n=1003)  # not a multiple of 8: padded and masked
    grid = np.linspace(0.01, 0.99, 99)
    t1, f1 = search_au_thresholds(probs, labels, grid, devices=devices[:1])
    t8, f8 = search_au_thresholds(probs, labels, grid, devices=devices)
    np.testing.assert_array_equal(t1, t8)
    np.testing.assert_array_equal(f1, f8)


def test_bad_input():
    probs, labels = au_data(2, n=20)
    with pytest.raises(InputError, match="length mismatch"):
        search_au_thresholds(probs[:10], labels)
    bad = probs.copy()
    bad[4, 3] = np.nan
    with pytest.raises(InputError, match=r"probs row 4: non-finite value nan"):
        search_au_thresholds(bad, labels)
    lab = labels.copy()
    lab[7, 0] = 2
    with pytest.raises(InputError, match=r"labels row 7: label 2 out of range"):
        search_au_thresholds(probs, lab)
    with pytest.raises(InputError, match="grid"):
        search_au_thresholds(probs, labels, grid=[])
