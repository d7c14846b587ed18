"""ABAW-2 teacher-student distillation (spec §2): losses against a numpy transcription of the
original torch code, the shared-annotation join, the stream iterator, and `hsemo-jax distill`
end to end (teacher, then a student with half the EXPR labels removed, which must beat the same
student trained without distillation)."""
import copy
import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsemo_jax import cli
from hsemo_jax.errors import InputError
from hsemo_jax.distill import data as DD
from hsemo_jax.distill import objective as D
from hsemo_jax.distill.model import load_distill_model, teacher_logits
from hsemo_jax.models.heads import DistillModel

T, LAM = 1.5, 0.4


# ----------------------------------------------------------------------------------------------
# numpy transcription of multitask_cnn/utils/model_utils.py + models/resnet50.py (spec §2.4)
# ----------------------------------------------------------------------------------------------
def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kd(s, t, temp=T):  # nn.KLDivLoss(reduction='batchmean')(log_softmax(s/T), softmax(t/T)) * T * T
    ls, lt = np_log_softmax(s / temp), np_log_softmax(t / temp)
    return (np.exp(lt) * (lt - ls)).sum() / len(s) * temp * temp


def np_ce(logits, y):
    return -np_log_softmax(logits)[np.arange(len(y)), y].mean()


def np_bins(y, k):
    d = np.digitize(y, np.linspace(-1, 1, k + 1)) - 1
    d[d == k] = k - 1
    return d


def np_ccc_loss(logits, y):  # CCCLoss: expectation over linspace bins, torch.std (unbiased)
    p = np.exp(np_log_softmax(logits))
    x = p @ np.linspace(-1, 1, logits.shape[1])
    vx, vy = x - x.mean(), y - y.mean()
    rho = (vx * vy).sum() / (np.sqrt((vx ** 2).sum()) * np.sqrt((vy ** 2).sum()))
    xs, ys = x.std(ddof=1), y.std(ddof=1)
    return 1 - 2 * rho * xs * ys / (xs ** 2 + ys ** 2 + (x.mean() - y.mean()) ** 2)


def np_va_task(logits, y):  # (loss_v, loss_a); documented choice: no CCC term below 2 rows
    k = logits.shape[1] // 2
    out = []
    for d in range(2):
        s = logits[:, d * k:(d + 1) * k]
        ccc = np_ccc_loss(s, y[:, d]) if len(y) >= 2 else 0.0
        out.append(np_ce(s, np_bins(y[:, d], k)) + ccc)
    return out


def np_kd_va(s, t):
    k = s.shape[1] // 2
    return np_kd(s[:, :k], t[:, :k]), np_kd(s[:, k:], t[:, k:])


def np_student_loss(out, teach, batch):
    """optimize_parameters_kd_v2, stream by stream, with the original's boolean indexing and list means."""
    ls, lt = 1 - LAM, LAM
    loss = {"EXPR": [], "VA": []}
    for s in ("expr", "va", "expr_va"):
        e, v, te, tv = out[s]["expr"], out[s]["va"], teach[s]["expr"], teach[s]["va"]
        ye, yv = batch[f"{s}.expr"], batch[f"{s}.va"]
        if s == "expr_va":
            loss["EXPR"].append(ls * np_ce(e, ye) + lt * np_kd(e, te))
            lv, la = np_va_task(v, yv)
            kv, ka = np_kd_va(v, tv)
            loss["VA"].append(ls * lv + lt * kv + ls * la + lt * ka)
        if s == "expr":
            loss["EXPR"].append(ls * np_ce(e, ye) + lt * np_kd(e, te))
            gt = batch["expr.va_mask"]
            all_v, all_a = [], []
            if gt.sum() != len(gt):
                kv, ka = np_kd_va(v[~gt], tv[~gt])
                all_v.append(kv), all_a.append(ka)
            if gt.sum() > 0:
                lv, la = np_va_task(v[gt], yv[gt])
                kv, ka = np_kd_va(v[gt], tv[gt])
                all_v.append(ls * lv + lt * kv), all_a.append(ls * la + lt * ka)
            loss["VA"].append(np.mean(all_v) + np.mean(all_a))
        if s == "va":
            lv, la = np_va_task(v, yv)
            kv, ka = np_kd_va(v, tv)
            loss["VA"].append(ls * lv + lt * kv + ls * la + lt * ka)
            gt = batch["va.expr_mask"]
            all_e = []
            if gt.sum() != len(gt):
                all_e.append(np_kd(e[~gt], te[~gt]))
            if gt.sum() > 0:
                all_e.append(ls * np_ce(e[gt], ye[gt]) + lt * np_kd(e[gt], te[gt]))
            loss["EXPR"].append(np.mean(all_e))
    return np.mean(loss["EXPR"]) + np.mean(loss["VA"])


def np_teacher_loss(out, batch):
    expr = [np_ce(out[s]["expr"], batch[f"{s}.expr"]) for s in ("expr", "expr_va")]
    va = [sum(np_va_task(out[s]["va"], batch[f"{s}.va"])) for s in ("va", "expr_va")]
    return np.mean(expr) + np.mean(va)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def hand_batch(b=6, size=8, num_expr=7, seed=0, expr_va_mask=(1, 0, 1, 0, 0, 1), va_expr_mask=(0, 1, 0, 0, 0, 0)):
    """Three streams of b rows: the EXPR stream's VA labels and the VA stream's EXPR labels partly missing."""
    rng = np.random.default_rng(seed)
    batch = {}
    for s in DD.STREAM_NAMES:
        batch[f"{s}.images"] = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
        batch[f"{s}.expr"] = rng.integers(0, num_expr, b).astype(np.int32)
        batch[f"{s}.va"] = rng.uniform(-1, 1, (b, 2)).astype(np.float32)
        batch[f"{s}.va"][0] = [1.0, -1.0]  # the bin edge cases
        batch[f"{s}.expr_mask"] = np.ones(b, bool)
        batch[f"{s}.va_mask"] = np.ones(b, bool)
    batch["expr.va_mask"] = np.asarray(expr_va_mask, bool)
    batch["va.expr_mask"] = np.asarray(va_expr_mask, bool)
    for s in DD.STREAM_NAMES:  # missing labels are 0 on the device, as the loaders leave them
        batch[f"{s}.expr"] = np.where(batch[f"{s}.expr_mask"], batch[f"{s}.expr"], 0).astype(np.int32)
        batch[f"{s}.va"] = np.where(batch[f"{s}.va_mask"][:, None], batch[f"{s}.va"], 0).astype(np.float32)
    return batch


def logits_of(model, batch):
    return {s: {k: np.asarray(v, np.float64) for k, v in
                model(model.prepare(jnp.asarray(batch[f"{s}.images"], jnp.float32) / 255.0)).items()}
            for s in DD.STREAM_NAMES}


@pytest.fixture(scope="module")
def tiny_pair():
    teacher = DistillModel("tiny_cnn", 7, 20, hidden=16, seed=3)
    student = DistillModel("tiny_cnn", 7, 20, hidden=16, seed=4)
    return teacher, student


@pytest.fixture(scope="module")
def jitted_losses(tiny_pair):
    """{mode: (model, loss(batch) -> (loss, parts))}, each compiled once (models in eval mode)."""
    from flax import nnx

    teacher, student = copy.deepcopy(tiny_pair[0]), copy.deepcopy(tiny_pair[1])
    student.attach_teacher(copy.deepcopy(teacher))
    out = {}
    for mode, model in (("student", student), ("teacher", teacher)):
        obj = D.DistillObjective(mode, hflip=False, temperature=T, lambda_teacher=LAM)
        graphdef, state = nnx.split(model)
        fn = jax.jit(lambda st, b, obj=obj, g=graphdef: obj.loss(nnx.merge(g, st), b, jax.random.key(0)))
        out[mode] = lambda b, fn=fn, st=state: fn(st, b)
    return out


# ----------------------------------------------------------------------------------------------
# formulas
# ----------------------------------------------------------------------------------------------
def test_va_bins_and_decoding_match_numpy():
    y = np.concatenate([np.linspace(-1, 1, 41), np.random.default_rng(0).uniform(-1, 1, 200)]).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(D.va_to_bins(y, 20)), np_bins(y, 20))
    assert int(D.va_to_bins(np.float32(1.0), 20)) == 19 and int(D.va_to_bins(np.float32(-1.0), 20)) == 0
    logits = np.random.default_rng(1).normal(size=(5, 40)).astype(np.float32)
    p = np.exp(np_log_softmax(logits[:, :20])), np.exp(np_log_softmax(logits[:, 20:]))
    want = np.stack([p[0] @ np.linspace(-1, 1, 20), p[1] @ np.linspace(-1, 1, 20)], 1)
    np.testing.assert_allclose(np.asarray(D.decode_va(logits, 20)), want, rtol=1e-5, atol=1e-6)


def test_kd_and_ccc_match_numpy():
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(9, 7)).astype(np.float32), rng.normal(size=(9, 7)).astype(np.float32)
    m = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0], bool)
    with jax.default_matmul_precision("float32"):
        assert float(D.kd_loss(s, t, None, T)) == pytest.approx(np_kd(s, t), rel=1e-5)
        assert float(D.kd_loss(s, t, m, T)) == pytest.approx(np_kd(s[m], t[m]), rel=1e-5)
        assert float(D.kd_loss(s, t, np.zeros(9, bool), T)) == 0.0
        logits = rng.normal(size=(9, 20)).astype(np.float32)
        y = rng.uniform(-1, 1, 9).astype(np.float32)
        got = float(D.va_dim_sup_loss(logits, y, m, 1.0))
        assert got == pytest.approx(np_ce(logits[m], np_bins(y[m], 20)) + np_ccc_loss(logits[m], y[m]), rel=1e-5)
        one = np.eye(9, dtype=bool)[0]  # one labelled row: CE only (the original's batch CCC is NaN)
        assert float(D.va_dim_sup_loss(logits, y, one, 1.0)) == pytest.approx(
            np_ce(logits[one], np_bins(y[one], 20)), rel=1e-5)


@pytest.mark.parametrize("masks", [
    {"expr_va_mask": (1, 0, 1, 0, 0, 1), "va_expr_mask": (0, 1, 0, 1, 0, 0)},   # both groups non-empty
    {"expr_va_mask": (1, 0, 0, 0, 0, 0), "va_expr_mask": (0, 0, 0, 0, 0, 0)},   # 1 labelled row / empty group
    {"expr_va_mask": (1, 1, 1, 1, 1, 1), "va_expr_mask": (1, 1, 1, 1, 1, 1)},   # everything labelled
])
def test_student_and_teacher_losses_equal_the_numpy_transcription(tiny_pair, jitted_losses, masks):
    teacher, student = tiny_pair
    batch = hand_batch(**masks)
    with jax.default_matmul_precision("float32"):
        t_out, s_out = logits_of(teacher, batch), logits_of(student, batch)  # eval mode: running BN statistics
        got, parts = jitted_losses["student"](batch)
        got_t, _ = jitted_losses["teacher"](batch)
    assert np.isfinite(float(got))
    assert float(got) == pytest.approx(np_student_loss(s_out, t_out, batch), rel=2e-5)
    assert float(got_t) == pytest.approx(np_teacher_loss(t_out, batch), rel=2e-5)
    assert set(parts) >= {"loss_expr", "loss_va", "entry_va_expr", "entry_expr_va"}


def test_the_teacher_is_frozen_state_not_a_parameter(tiny_pair):
    from flax import nnx

    teacher, student = copy.deepcopy(tiny_pair[0]), copy.deepcopy(tiny_pair[1])
    n_params = len(jax.tree.leaves(nnx.state(student, nnx.Param)))
    student.attach_teacher(teacher)
    assert len(jax.tree.leaves(nnx.state(student, nnx.Param))) == n_params
    student.train()
    x = jnp.asarray(hand_batch()["expr.images"], jnp.float32)[None] / 255.0
    before = np.asarray(teacher.expr.bn0.mean[...])
    out = teacher_logits(student, x)  # eval mode even though the student is in train mode
    np.testing.assert_array_equal(np.asarray(teacher.expr.bn0.mean[...]), before)
    assert out["expr"].shape == (1, 6, 7) and out["va"].shape == (1, 6, 40)


BF16_LR = 1e-4  # small: the three steps' differences stay those of the forward


def _student_trainer(tiny_pair, dtype: str):
    from hsemo_jax import optim
    from hsemo_jax.train.loop import Trainer
    from train_fixtures import one_device_mesh

    teacher, student = copy.deepcopy(tiny_pair[0]), copy.deepcopy(tiny_pair[1])
    student.attach_teacher(teacher)
    obj = D.DistillObjective("student", hflip=False, temperature=T, lambda_teacher=LAM, compute_dtype=dtype)
    return Trainer(student, obj, optim.make_optimizer("adam", BF16_LR), mesh=one_device_mesh(), compute_dtype=dtype,
                   seed=1)


def test_bf16_distillation_matches_float32(tiny_pair):
    """`train.compute_dtype = "bfloat16"` for the student: the student's and the frozen teacher's
    convolutions run in bfloat16, the master weights and every statistic stay float32, and three
    steps from one state give the float32 run's losses within bfloat16 tolerances.

    Tolerance: bfloat16 keeps 8 significant bits (each rounding off by <= 2^-9 = 0.2%); the
    logits of the two-conv teacher and student are off by a few roundings, and the losses (CE,
    KD and 1 - CCC, each O(1)) average over 3 x 6 rows: rtol 1%; observed <= 0.17% (loss_expr),
    <= 0.08% (loss). A float32 convolution left in the step fails the dtype check."""
    from train_fixtures import conv_dtypes, float_dtypes

    t32, t16 = _student_trainer(tiny_pair, "float32"), _student_trainer(tiny_pair, "bfloat16")
    initial = t32.host_state()
    jax.tree.map(np.testing.assert_array_equal, t16.host_state(), initial)
    batches = [hand_batch(seed=i) for i in range(3)]
    # the student's 2 convolutions (forward and backward) and the teacher's 2, all bf16 x bf16
    assert conv_dtypes(t16, batches[0]) == {("bfloat16", "bfloat16")}
    assert conv_dtypes(t32, batches[0]) == {("float32", "float32")}
    m32 = [{k: float(v) for k, v in t32.step(b).items()} for b in batches]
    m16 = [{k: float(v) for k, v in t16.step(b).items()} for b in batches]
    assert all(np.isfinite(list(m.values())).all() for m in m16), m16
    for key in ("loss", "loss_expr", "loss_va"):
        np.testing.assert_allclose([m[key] for m in m16], [m[key] for m in m32], rtol=1e-2, err_msg=key)
    assert [m["loss"] for m in m16] != [m["loss"] for m in m32]  # really computed in bfloat16
    state = t16.host_state()
    assert float_dtypes(state["params"]) == float_dtypes(state["stats"]) == {"float32"}
    # the teacher (Frozen weights, FrozenStat statistics: in "stats") is carried unchanged
    np.testing.assert_array_equal(state["stats"]["teacher"]["expr"]["fc1"]["kernel"].get_value(),
                                  initial["stats"]["teacher"]["expr"]["fc1"]["kernel"].get_value())


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def test_shared_annotations_give_each_frame_every_label_it_has():
    e = {"video": np.array(["a", "a", "b", "c"]), "frame": np.array([1, 2, 1, 5]),
         "expr": np.array([0, 3, 5, 2]), "va": np.array([[-2, -2], [0.5, 0.5], [-2, -2], [-2, -2]], np.float32)}
    v = {"video": np.array(["a", "b", "b", "d"]), "frame": np.array([2, 1, 2, 5]),
         "va": np.array([[.1, .2], [.3, .4], [.5, .6], [.7, .8]], np.float32), "expr": np.array([-2, 1, -2, -2])}
    e2, v2 = DD.share_annotations(e, v)
    np.testing.assert_allclose(e2["va"], [[-2, -2], [0.5, 0.5], [.3, .4], [-2, -2]])  # own label wins
    np.testing.assert_array_equal(v2["expr"], [3, 1, -2, -2])
    np.testing.assert_array_equal(e["va"][2], [-2, -2])  # inputs untouched
    e3, v3 = DD.share_annotations(e, v, disable=True)
    assert (e3["va"] == -2).all() and (v3["expr"] == -2).all()
    ie, iv = DD.expr_va_pairs(e, v)
    np.testing.assert_array_equal(ie, [1, 2]) and np.testing.assert_array_equal(iv, [0, 1])
    ie, iv = DD.expr_va_pairs(e, v, every=2)
    np.testing.assert_array_equal(ie, [1])
    assert (DD.match_frames({"video": np.array([7, 7]), "frame": np.array([0, 1])},
                            {"video": np.array(["7"]), "frame": np.array([1])}) == [-1, 0]).all()
    dup = {**v, "video": np.array(["a", "a", "b", "d"]), "frame": np.array([2, 2, 2, 5])}
    with pytest.raises(InputError, match="rows 0 and 1 are the same frame"):
        DD.share_annotations(e, dup)


def test_assembled_streams_and_iterator_resume():
    expr = DD.synthetic_stream("expr", 64, 8, 7)
    va = DD.synthetic_stream("va", 64, 8, 7)
    streams = DD.assemble_streams(expr, va, "shared", shared_every=1)
    # EXPR videos 0-3, VA videos 2-5: 32 shared frames labelled with both, from the matching
    assert len(streams["expr_va"]["expr"]) == 32 and streams["expr"]["va_mask"].sum() == 32
    assert streams["va"]["expr_mask"].sum() == 32 and streams["expr"]["expr_mask"].all()
    ref = DD.synthetic_frames(range(2, 4), 16, 8, 7)
    np.testing.assert_array_equal(streams["expr_va"]["images"], ref["images"])
    np.testing.assert_array_equal(streams["expr_va"]["expr"], ref["expr"])
    np.testing.assert_allclose(streams["expr_va"]["va"], ref["va"])
    off = DD.assemble_streams(expr, va, None, disable_shared=True)
    assert not off["expr"]["va_mask"].any() and not off["va"]["expr_mask"].any() and set(off) == {"expr", "va"}

    it = DD.StreamIterator(streams, 8, seed=3)
    assert it.batches_per_epoch == 4 and it.global_batch == 24  # epoch = the shortest stream (expr_va, 32 rows)
    batches = [next(it) for _ in range(5)]
    assert it.epoch == 1 and set(batches[0]) == {f"{s}.{k}" for s in DD.STREAM_NAMES
                                                 for k in ("images", "expr", "expr_mask", "va", "va_mask")}
    it2 = DD.StreamIterator(streams, 8, seed=3)
    it2.restore(json.loads(json.dumps(it.state())))
    nxt, nxt2 = next(it), next(it2)
    for k in nxt:
        np.testing.assert_array_equal(nxt[k], nxt2[k])
    with pytest.raises(InputError, match="does not match"):
        DD.StreamIterator(streams, 8, seed=4).restore(it.state())


def test_stream_files_are_validated(tmp_path):
    imgs = np.zeros((3, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "ok.npz", images=imgs, expr=np.array([1, -2, 6]), va=np.array([[0, 0], [-2, -2], [1, -1]]))
    d = DD.load_stream(tmp_path / "ok.npz", 7, require=("expr",))
    assert d["expr_mask"].tolist() == [True, False, True] and d["va_mask"].tolist() == [True, False, True]
    np.savez(tmp_path / "bad.npz", images=imgs, expr=np.array([1, 7, 0]))
    with pytest.raises(InputError, match=r"bad\.npz: expr\[1\] = 7"):
        DD.load_stream(tmp_path / "bad.npz", 7)
    np.savez(tmp_path / "badva.npz", images=imgs, va=np.array([[0, 0], [0, 1.5], [0, 0]]))
    with pytest.raises(InputError, match=r"badva\.npz: va\[1\]"):
        DD.load_stream(tmp_path / "badva.npz", 7)
    with pytest.raises(InputError, match="needs va labels"):
        DD.load_stream(tmp_path / "bad.npz", 8, require=("va",))


# ----------------------------------------------------------------------------------------------
# hsemo-jax distill end to end; distillation vs no distillation with half the EXPR labels
# ----------------------------------------------------------------------------------------------
STEPS = 60


def _frames(first, n, seed):
    d = DD.synthetic_frames(range(first, first + n // 8), 8, 16, 7, noise=80.0, seed=seed)
    return {"images": d["images"], "expr": d["expr"], "va": d["va"]}


def _config(tmp_path, name, **distill):
    lines = ["[distill]", 'teacher_arch = "tiny_cnn"', 'student_arch = "tiny_cnn"', "teacher_seed = 1",
             "student_seed = 1", 'expr_va = ""'] + [f"{k} = {json.dumps(v)}" for k, v in distill.items()]
    lines += ["[data]", f'val = "{tmp_path / "val.npz"}"', "hflip = false", "[optim]", "lr = 3e-3",
              "[train]", "batch_size = 16", f"steps = {STEPS}", f"eval_every = {STEPS}", "log_every = 20",
              "progress = false", "tensorboard = false",
              "[checkpoint]", "save_every = 30", 'best_metric = "accuracy"']
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _val_accuracy(stage_dir):
    rows = [r for r in csv.DictReader(open(stage_dir / "metrics.csv")) if r.get("val_accuracy")]
    return float(rows[-1]["val_accuracy"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Teacher on every label; then, with half the EXPR stream's labels set to -2, the student with
    distillation and the same student (same init, data order) trained on the remaining labels only."""
    tmp = tmp_path_factory.mktemp("distill")
    expr, va = _frames(0, 64, 0), _frames(1000, 64, 0)
    va_only = {**va, "expr": np.full(64, -2)}
    np.savez(tmp / "expr.npz", **expr)
    half = {**expr, "expr": expr["expr"].copy()}
    half["expr"][np.random.default_rng(5).permutation(64)[:32]] = -2
    np.savez(tmp / "expr_half.npz", **half)
    np.savez(tmp / "va.npz", **va_only)
    np.savez(tmp / "val.npz", **_frames(5000, 512, 99))
    common = {"va": str(tmp / "va.npz")}
    out = {"tmp": tmp}
    cmd = {"teacher": ["distill", _config(tmp, "t", expr=str(tmp / "expr.npz"), **common), "--out", str(tmp / "t"),
                       "--stage", "teacher"],
           "student": ["distill", _config(tmp, "s", expr=str(tmp / "expr_half.npz"), **common), "--out",
                       str(tmp / "s"), "--stage", "student", "--teacher", str(tmp / "t" / "teacher")],
           "baseline": ["distill", _config(tmp, "b", expr=str(tmp / "expr_half.npz"), **common), "--out",
                        str(tmp / "b"), "--stage", "teacher"]}
    # The baseline's step is the same XLA program as the teacher's (same architecture, seed, shapes):
    # a compilation cache local to this fixture saves compiling it twice (test time only).
    from jax_fixtures import compilation_cache

    with compilation_cache(tmp / "xla_cache"):
        for name in ("teacher", "baseline", "student"):
            assert cli.main(cmd[name]) == 0, name
    out["cmd"] = cmd
    out["acc"] = {"teacher": _val_accuracy(tmp / "t" / "teacher"), "student": _val_accuracy(tmp / "s" / "student"),
                  "baseline": _val_accuracy(tmp / "b" / "teacher")}
    return out


def test_distillation_beats_the_same_student_without_it_on_half_the_labels(runs):
    acc = runs["acc"]
    print(acc)
    assert acc["teacher"] > 0.45  # 7 classes: chance 0.14
    assert acc["student"] >= acc["baseline"] + 0.07, acc


def test_distill_cli_writes_models_and_resumes_without_retraining(runs, capsys):
    tmp = runs["tmp"]
    stage = tmp / "s" / "student"
    info = json.loads((stage / "model.json").read_text())
    assert info["arch"] == "tiny_cnn" and info["step"] == STEPS and info["stage"] == "student"
    model = load_distill_model(stage)
    with np.load(stage / "model.npz") as z:
        assert not any(k.startswith("teacher") for k in z.files)
        before = {k: z[k] for k in z.files}
    n_rows = len(open(stage / "metrics.csv").read().splitlines())
    assert cli.main(runs["cmd"]["student"]) == 0  # finished: restored from its checkpoint, not retrained
    assert len(open(stage / "metrics.csv").read().splitlines()) == n_rows
    with np.load(stage / "model.npz") as z:
        for k in z.files:
            np.testing.assert_array_equal(z[k], before[k])
    assert model.num_expr == 7 and model.teacher is None
    argv = list(runs["cmd"]["student"]) + ["--set", "distill.temperature=2.0"]
    capsys.readouterr()
    assert cli.main(argv) == 2 and "distill.temperature" in capsys.readouterr().err  # a different config is refused


@pytest.mark.parametrize("setting, field", [
    ("distill.temperature=-1.0", "distill.temperature"),
    ('distill.student_arch="resnet50"', "distill.student_arch"),
    ("distill.shared_every=0", "distill.shared_every"),
    ("distill.num_expr=6", "distill.num_expr"),
    ('model.arch="mobilefacenet"', "model.arch"),
    ('distill.expr=""', "distill.expr"),
    ('distill.teacher_dir="/nonexistent/teacher"', "distill.teacher_dir"),
])
def test_distill_errors_name_the_config_field(runs, tmp_path, capsys, setting, field):
    argv = list(runs["cmd"]["student"])
    argv[argv.index("--out") + 1] = str(tmp_path / "run")
    if "teacher_dir" in setting:
        argv = argv[:argv.index("--teacher")]
    capsys.readouterr()
    assert cli.main(argv + ["--set", setting]) == 2
    assert field in capsys.readouterr().err


def test_describe_config_and_shipped_configs(capsys):
    from pathlib import Path

    from hsemo_jax.train.config import load_config

    assert cli.main(["distill", "--describe-config"]) == 0
    text = capsys.readouterr().out
    assert "distill.temperature = 1.5" in text and "optim.lr" in text and "head.tasks" not in text
    configs = sorted((Path(cli.__file__).parent / "train" / "configs").glob("distill_*.toml"))
    assert len(configs) >= 2
    for path in configs:
        cfg = load_config(path)
        assert cfg.distill.lambda_teacher == 0.4 and cfg.distill.temperature == 1.5
    paper = load_config(next(p for p in configs if "abaw2" in p.name))
    assert (paper.distill.teacher_arch, paper.distill.student_arch, paper.optim.b1, paper.optim.lr,
            paper.train.batch_size) == ("ddamfn", "mobilefacenet", 0.5, 1e-4, 64)


@pytest.mark.parametrize("teacher", [None, "missing_teacher"])
def test_a_student_stage_without_a_finished_teacher_writes_nothing(tmp_path, capsys, teacher):
    """`--stage student` without a teacher wrote RUN/config.json before failing, so the corrected
    command (`--teacher DIR`) was refused as a run started with a different config."""
    from pathlib import Path

    import hsemo_jax.train

    config = Path(hsemo_jax.train.__file__).parent / "configs" / "distill_smoke_synthetic.toml"
    run = tmp_path / "run"
    extra = ["--teacher", str(tmp_path / teacher)] if teacher else []
    assert cli.main(["distill", str(config), "--out", str(run), "--stage", "student", *extra]) == 2
    assert "distill.teacher_dir" in capsys.readouterr().err
    assert not run.exists()


def test_a_batch_larger_than_a_stream_writes_nothing(tmp_path, capsys):
    """It was found after RUN/config.json was written, so the corrected command was refused."""
    from pathlib import Path

    import hsemo_jax.train

    config = Path(hsemo_jax.train.__file__).parent / "configs" / "distill_smoke_synthetic.toml"
    run = tmp_path / "run"
    assert cli.main(["distill", str(config), "--out", str(run), "--set", "train.batch_size=1000"]) == 2
    assert "fewer than one batch of 1000" in capsys.readouterr().err
    assert not run.exists()


def test_a_missing_backbone_init_writes_nothing(tmp_path, capsys):
    """distill.student_init that is no model directory failed after RUN/config.json was written."""
    from pathlib import Path

    import hsemo_jax.train

    config = Path(hsemo_jax.train.__file__).parent / "configs" / "distill_smoke_synthetic.toml"
    run = tmp_path / "run"
    assert cli.main(["distill", str(config), "--out", str(run), "--set",
                     f'distill.student_init="{tmp_path / "none"}"']) == 2
    err = capsys.readouterr().err
    assert "distill.student_init: " in err and "no hsemo_model.json" in err, err
    assert not run.exists()
