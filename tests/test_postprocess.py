"""Packing, smoothing, blending, compound expressions and sweeps against plain-python loops."""
import math

import jax
import numpy as np
import pytest
from scipy.stats import hmean
from scipy.stats.mstats import gmean
from sklearn.metrics import f1_score

from hsemo_jax import metrics
from hsemo_jax.bench.postprocess import smooth_literal
from hsemo_jax.errors import InputError
from hsemo_jax.postprocess import (CEXPR_PRIOR, SweepGrid, aggregate_faces, blend, blend_tasks, compound_scores,
                                   interpolate_gaps, kl_to_prior, pack, pack_dense, smooth, sweep, video_tracks)


# ---------------------------------------------------------------------------------------------
# plain-python transcriptions
# the MTL notebook's smoothing loop (mtl7#c64), transcribed once, in the benchmark
notebook_gaussian = smooth_literal


def eq45(y, vids, frames, sigma, k, box=False):
    """Paper eqs. 4/5: weighted mean over the same video's frames with |dt| <= k."""
    out = np.zeros(y.shape, np.float64)
    for i in range(len(y)):
        num, den = 0.0, 0.0
        for j in range(len(y)):
            dt = frames[j] - frames[i]
            if vids[j] == vids[i] and abs(dt) <= k:
                w = 1.0 if box else math.exp(-dt * dt / (2 * sigma * sigma))
                num = num + w * y[j].astype(np.float64)
                den += w
        out[i] = num / den
    return out


def interpolate_video(frames, values, last):
    """aw6#c69 / ce7#c80 gap filling for one video: dense list for frames 1..last."""
    by_frame = dict(zip(frames, values))
    det = sorted(by_frame)
    dense = []
    for f in range(1, last + 1):
        if f in by_frame:
            dense.append(by_frame[f])
        elif f < det[0]:
            dense.append(by_frame[det[0]])
        elif f > det[-1]:
            dense.append(by_frame[det[-1]])
        else:
            p = max(d for d in det if d < f)
            n = min(d for d in det if d > f)
            w = 1 - (f - p) / (n - p)
            dense.append(w * by_frame[p] + (1 - w) * by_frame[n])
    return np.array(dense)


def aw6_box(y, vids, frames, delta):
    """Gap interpolation, then mean(y[max(i-delta,0):i+delta+1]) on the dense track; at the input rows."""
    out = np.zeros(y.shape, np.float64)
    for v in dict.fromkeys(vids):
        rows = [i for i in range(len(y)) if vids[i] == v]
        fr = [frames[i] for i in rows]
        dense = interpolate_video(fr, [y[i].astype(np.float64) for i in rows], max(fr))
        for i in rows:
            c = frames[i] - 1
            out[i] = dense[max(c - delta, 0): c + delta + 1].mean(axis=0)
    return out


def random_videos(rng, lengths, gap=0.3, channels=3):
    vids, frames = [], []
    for v, n in enumerate(lengths):
        f = np.cumsum(1 + (rng.random(n) < gap) * rng.integers(1, 5, n))
        vids += [f"vid{v}"] * n
        frames += f.tolist()
    return np.array(vids), np.array(frames), rng.random((len(vids), channels)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
def test_pack_roundtrip_and_layouts():
    rng = np.random.default_rng(0)
    vids, frames, y = random_videos(rng, [5, 1, 17, 9])
    perm = rng.permutation(len(vids))
    vids, frames, y = vids[perm], frames[perm], y[perm]
    for lanes in (None, 1, 3):
        lay = pack(vids, frames, lanes=lanes)
        packed = lay.pack_values(y)
        np.testing.assert_array_equal(lay.unpack(packed), y)
        for s, name in enumerate(lay.videos):  # each segment's frames are sorted and its own
            sel = lay.seg_bt == s
            assert sel.sum() == (vids == name).sum()
            np.testing.assert_array_equal(lay.frames_bt[sel], np.sort(frames[vids == name]))
    lay = pack(vids, frames)
    assert lay.shape[0] == 4 and lay.shape[1] >= 17 and lay.mask_bt.sum() == len(vids)
    dense = pack_dense(vids, frames, start=1)
    for s, name in enumerate(dense.videos):
        assert dense.lengths_s[s] == frames[vids == name].max()


def test_pack_errors():
    with pytest.raises(InputError, match=r"row 2: duplicate frame 3 of video 'a'"):
        pack(["a", "a", "a"], [1, 3, 3])
    with pytest.raises(InputError, match="length mismatch"):
        pack(["a", "a"], [1, 2, 3])
    with pytest.raises(InputError, match=r"frames row 1: label -4 out of range"):
        pack(["a", "a"], [1, -4])
    with pytest.raises(InputError, match="empty"):
        pack([], [])


def test_hsemotion_gaussian_equals_notebook_loop():
    rng = np.random.default_rng(1)
    vids, frames, y = random_videos(rng, [1, 6, 1, 25, 11])
    # a video that re-appears later in the file is a separate run for the notebook
    vids = np.concatenate([vids, ["vid1"] * 3])
    frames = np.concatenate([frames, [100, 101, 104]])
    y = np.concatenate([y, rng.random((3, 3)).astype(np.float32)])
    vf = list(zip(vids.tolist(), frames.tolist()))
    for sigma, delta in [(0.1, 1), (10.0, 0), (10.0, 2), (1e5, 5), (100.0, 7), (100.0, 40)]:
        ref = notebook_gaussian(y, vf, sigma, delta)
        got = smooth(y, vids, frames, method="gaussian", sigma=sigma, k=delta, compat="hsemotion")
        np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-7, err_msg=f"sigma={sigma} delta={delta}")
    got1 = smooth(y[:, 0], vids, frames, method="gaussian", sigma=sigma, k=delta, compat="hsemotion")
    np.testing.assert_allclose(got1, ref[:, 0], rtol=2e-6, atol=1e-7)


def test_hsemotion_gaussian_skips_row_zero_as_left_neighbour():
    # the notebook never uses input row 0 as a left neighbour (range(i-1, start, -1) with start=0)
    y = np.array([[100.0], [0.0], [0.0]], np.float32)
    got = smooth(y, ["a"] * 3, [1, 2, 3], method="gaussian", sigma=1e9, k=5, compat="hsemotion")
    assert got[0, 0] == pytest.approx(100 / 3, rel=1e-6)  # row 0 sees rows 0, 1, 2 (right window)
    assert got[1, 0] == 0.0 and got[2, 0] == 0.0  # rows 1, 2 never see row 0


def test_eq5_gaussian_and_eq4_box_equal_plain_loops():
    rng = np.random.default_rng(2)
    vids, frames, y = random_videos(rng, [1, 7, 20, 4])
    perm = rng.permutation(len(vids))  # any row order
    vids, frames, y = vids[perm], frames[perm], y[perm]
    for k in (0, 1, 3, 8):
        np.testing.assert_allclose(smooth(y, vids, frames, sigma=2.5, k=k), eq45(y, vids, frames, 2.5, k),
                                   rtol=2e-6, atol=1e-7, err_msg=f"gaussian k={k}")
        np.testing.assert_allclose(smooth(y, vids, frames, method="box", k=k),
                                   eq45(y, vids, frames, None, k, box=True), rtol=2e-6, atol=1e-7, err_msg=f"box k={k}")
    # the layout (videos bin-packed into 2 lanes) does not change the answer
    np.testing.assert_allclose(smooth(y, vids, frames, sigma=2.5, k=3, lanes=2), smooth(y, vids, frames, sigma=2.5, k=3),
                               rtol=1e-6, atol=1e-7)


def test_smoothing_never_mixes_videos():
    rng = np.random.default_rng(3)
    vids, frames, y = random_videos(rng, [30, 30])
    y[vids == "vid1"] += 100.0
    both = smooth(y, vids, frames, sigma=50.0, k=20)
    for v in ("vid0", "vid1"):
        sel = vids == v
        np.testing.assert_allclose(both[sel], smooth(y[sel], vids[sel], frames[sel], sigma=50.0, k=20), rtol=1e-6)


def test_hsemotion_box_equals_aw6_interpolate_then_box():
    rng = np.random.default_rng(4)
    vids, frames, y = random_videos(rng, [1, 9, 15], gap=0.5)
    frames = frames + 2  # first detection after frame 1
    for delta in (0, 2, 7):
        got = smooth(y, vids, frames, method="box", k=delta, compat="hsemotion")
        np.testing.assert_allclose(got, aw6_box(y, vids, frames, delta), rtol=2e-6, atol=1e-7, err_msg=f"delta={delta}")


def test_interpolate_gaps():
    y = np.array([[0.0], [1.0], [4.0]], np.float32)
    out, v, f = interpolate_gaps(y, ["a", "a", "b"], [3, 6, 2], last_frame={"a": 8})
    assert v.tolist() == ["a"] * 8 + ["b"] * 2 and f.tolist() == list(range(1, 9)) + [1, 2]
    np.testing.assert_allclose(out[:, 0], [0, 0, 0, 1 / 3, 2 / 3, 1, 1, 1, 4, 4], rtol=1e-6)


def test_smooth_bad_input():
    with pytest.raises(InputError, match="sigma must be > 0"):
        smooth(np.zeros((2, 1)), ["a", "a"], [1, 2], sigma=0.0, k=1)
    with pytest.raises(InputError, match="k .* must be an int >= 0"):
        smooth(np.zeros((2, 1)), ["a", "a"], [1, 2], sigma=1.0, k=-1)
    with pytest.raises(InputError, match=r"scores row 1: non-finite value nan"):
        smooth(np.array([[0.0], [np.nan]]), ["a", "a"], [1, 2], sigma=1.0, k=1)
    with pytest.raises(InputError, match="length mismatch"):
        smooth(np.zeros((3, 1)), ["a", "a"], [1, 2], sigma=1.0, k=1)


def test_blend():
    a, b = np.ones((4, 2), np.float32), np.zeros((4, 2), np.float32)
    np.testing.assert_allclose(blend(a, b, 0.8), 0.8)
    out = blend_tasks({"VA": a, "AU": b}, {"VA": b, "AU": a})
    np.testing.assert_allclose(out["VA"], 0.8) and np.testing.assert_allclose(out["AU"], 0.5)
    with pytest.raises(InputError, match="shape mismatch"):
        blend(a, b[:3], 0.5)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        blend(a, b, 1.5)


# ---------------------------------------------------------------------------------------------
def test_compound_scores_and_aggregation():
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(8), 50).astype(np.float32)
    pairs = [[3, 7], [4, 7], [6, 7], [2, 7], [0, 7], [6, 3], [6, 0]]
    for mean, fn in (("arithmetic", np.mean), ("geometric", gmean), ("harmonic", hmean)):
        ref = np.array([[fn([row[a], row[b]]) for a, b in pairs] for row in p.astype(np.float64)])
        np.testing.assert_allclose(compound_scores(p, mean), ref, rtol=1e-5)
    s = np.array([[1, 5], [3, 2], [0, 0], [7, 1]], np.float32)
    keys = [("v", 1), ("v", 1), ("v", 2), ("v", 1)]
    k, agg = aggregate_faces(s, keys, how="max")
    assert k == [("v", 1), ("v", 2)] and agg.tolist() == [[7, 5], [0, 0]]
    np.testing.assert_allclose(aggregate_faces(s, keys, how="mean")[1], [[11 / 3, 8 / 3], [0, 0]], rtol=1e-6)
    assert aggregate_faces(s, keys, how="first")[1].tolist() == [[1, 5], [0, 0]]
    assert aggregate_faces(s, keys, how="first", face_index=[2, 0, 0, 1])[1].tolist() == [[3, 2], [0, 0]]
    assert aggregate_faces(s, keys, how="largest", areas=[1, 9, 1, 3])[1].tolist() == [[3, 2], [0, 0]]


def cexpr_gaussian(frames, values, num_frames, sigma, delta):
    """ce7#c84-c89 Gaussian for one video (0-based i, frames with a face only, fallback interpolated)."""
    interp = interpolate_video(frames, values, num_frames)
    faces = dict(zip(frames, values))
    out = []
    for i in range(num_frames):
        num, den = 0.0, 0.0
        for j in range(max(0, i - delta), min(num_frames, i + delta + 1)):
            if (j + 1) in faces:
                w = math.exp(-((j - i) ** 2) / sigma)
                num = num + w * faces[j + 1]
                den += w
        out.append(num / den if den > 0 else interp[i])
    return np.array(out)


def test_video_tracks_box_and_gaussian():
    rng = np.random.default_rng(6)
    frames = np.array([2, 3, 9, 10, 20])
    y = rng.random((5, 7)).astype(np.float32)
    vids = ["x"] * 5
    out, v, f = video_tracks(y, vids, frames, {"x": 24}, method="box", k=3)
    dense = interpolate_video(frames.tolist(), list(y.astype(np.float64)), 24)
    ref = np.array([dense[max(i - 3, 0): i + 4].mean(0) for i in range(24)])
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=1e-7)
    assert f.tolist() == list(range(1, 25))
    out, _, _ = video_tracks(y, vids, frames, {"x": 24}, method="gaussian", k=2, sigma=10.0)
    ref = cexpr_gaussian(frames.tolist(), list(y.astype(np.float64)), 24, 10.0, 2)
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=1e-7)  # frames 14-17 have no face within 2
    with pytest.raises(InputError, match="no detected face"):
        video_tracks(y, vids, frames, {"x": 24, "y": 5})
    with pytest.raises(InputError, match="beyond num_frames"):
        video_tracks(y, vids, frames, {"x": 12})


def test_kl_to_prior():
    lab = np.repeat(np.arange(7), [16, 28, 12, 12, 12, 11, 9])
    q = np.bincount(lab) / len(lab)
    assert kl_to_prior(lab) == pytest.approx(float(np.sum(CEXPR_PRIOR * np.log(CEXPR_PRIOR / q))))


# ---------------------------------------------------------------------------------------------
def test_sweep_matches_individual_calls():
    rng = np.random.default_rng(7)
    vids, frames, _ = random_videos(rng, [40, 1, 25, 60], gap=0.1)
    n = len(vids)
    truth = {"EXPR": np.where(rng.random(n) < 0.7, rng.integers(0, 8, n), -1),
             "VA": np.where(rng.random((n, 1)) < 0.9, rng.uniform(-1, 1, (n, 2)), -5).astype(np.float32),
             "AU": np.where(rng.random((n, 1)) < 0.8, (rng.random((n, 12)) < 0.4).astype(int), -1)}
    mk = lambda: {"EXPR": rng.dirichlet(np.ones(8), n).astype(np.float32),
                  "VA": rng.uniform(-1, 1, (n, 2)).astype(np.float32), "AU": rng.random((n, 12)).astype(np.float32)}
    a, b = mk(), mk()
    grid = SweepGrid(filters=("hsemotion", "box"), sigmas=(1.0, 50.0), ks=(0, 2, 6), blend_weights=(0.0, 0.3, 1.0))
    table = sweep(truth, a, vids, frames, pred_b=b, grid=grid)
    assert len(table.rows) == 3 * 3 * 3 * (2 + 1)  # tasks x weights x ks x sigmas per filter
    small = SweepGrid(filters=("gaussian", "hsemotion_box"), sigmas=(3.0,), ks=(1, 4))
    other = sweep(truth, a, vids, frames, grid=small, tasks=("VA",))  # on all 8 (fake) devices
    assert len(other.rows) == 1 * 1 * 2 * 2
    one = sweep(truth, a, vids, frames, grid=small, tasks=("VA",), devices=jax.devices()[:1])
    assert len(jax.devices()) == 8
    np.testing.assert_allclose([r["score"] for r in one.rows], [r["score"] for r in other.rows], atol=1e-6)
    filters = {"hsemotion": ("gaussian", "hsemotion"), "gaussian": ("gaussian", None), "box": ("box", None),
               "hsemotion_box": ("box", "hsemotion")}
    mv = metrics.va_mask(truth["VA"])
    me = truth["EXPR"] > -1
    ma = truth["AU"].min(1) >= 0
    sl = {"EXPR": slice(0, 8), "VA": slice(8, 10), "AU": slice(10, 22)}

    def reference(task, s):
        if task == "EXPR":
            return f1_score(truth["EXPR"][me], s.argmax(1)[me], average="macro")
        if task == "VA":
            return 0.5 * (metrics.ccc(truth["VA"][mv, 0], s[mv, 0]) + metrics.ccc(truth["VA"][mv, 1], s[mv, 1]))
        return np.mean([f1_score(truth["AU"][ma, i], (s[ma, i] >= 0.5) * 1) for i in range(12)])

    checked = 0
    for r in table.rows[::5] + other.rows:
        method, compat = filters[r["filter"]]
        w = r["blend_weight"]
        x = np.concatenate([w * a[t] + (1 - w) * b[t] for t in ("EXPR", "VA", "AU")], 1)
        if r["k"] == 0:
            s = x  # k = 0: no smoothing
        else:  # all tasks in one call: one compilation per filter family
            s = smooth(x, vids, frames, method=method, compat=compat, k=r["k"],
                       sigma=None if method == "box" else r["sigma"])
        assert r["score"] == pytest.approx(reference(r["task"], s[:, sl[r["task"]]]), abs=2e-5), r
        checked += 1
    assert checked >= 20
    best = table.best("VA")
    assert best["score"] == max(r["score"] for r in table.for_task("VA"))

    text = table.to_csv_text().splitlines()
    assert text[0].startswith("task,filter,blend_weight,sigma,k,score") and len(text) == len(table.rows) + 1


def test_sweep_bad_input():
    vids, frames = np.array(["a"] * 4), np.arange(1, 5)
    truth = {"EXPR": np.array([0, 1, -1, 2])}
    pred = {"EXPR": np.full((4, 8), 0.125, np.float32)}
    with pytest.raises(InputError, match="unknown filter"):
        sweep(truth, pred, vids, frames, grid=SweepGrid(filters=("median",)))
    with pytest.raises(InputError, match="need a second model"):
        sweep(truth, pred, vids, frames, grid=SweepGrid(blend_weights=(0.5,)))
    with pytest.raises(InputError, match=r"expected shape \(4, 8\)"):
        sweep(truth, {"EXPR": np.zeros((4, 7))}, vids, frames)
    with pytest.raises(InputError, match="no valid ground-truth"):
        sweep({"EXPR": np.full(4, -1)}, pred, vids, frames)
