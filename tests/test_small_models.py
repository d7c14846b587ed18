"""The one file format of the small models (models.heads.save_small / load_small, fileio.write_arrays_with_meta):
every kind round-trips exactly, files written before `kind` existed still load, and a save that
fails leaves the directory as it was."""
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from hsemo_jax import fileio
from hsemo_jax.errors import InputError
from hsemo_jax.models.heads import (SMALL_MODELS, DistillModel, MTLHead, build_regressor, flat_state, load_head,
                                    load_small, save_head, save_small)


def _randomize(module, seed):
    """Every Param and BatchStat drawn at random, so a round trip cannot pass by re-initialization."""
    rng = np.random.default_rng(seed)
    state = nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat))
    pure = jax.tree.map(lambda v: rng.standard_normal(np.shape(v)).astype(np.float32), nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)
    return module


def _assert_same_state(a, b):
    fa, fb = flat_state(a), flat_state(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _cases():
    head = MTLHead(30, seed=1)
    distill = DistillModel("tiny_cnn", 7, 20, hidden=16, seed=2)
    return {
        "mtl_head": (head, {"kind": "mtl_head", "in_dim": 30, "tasks": ["expr", "va", "au"]}),
        "distill_model": (distill, {"kind": "distill_model", **distill.spec(), "stage": "teacher", "step": 3}),
        "intensity_regressor/linear": (build_regressor("linear", 12, 3, seed=3),
                                       {"kind": "intensity_regressor", "variant": "linear", "in_dim": 12,
                                        "targets": ["a", "b", "c"], "hidden": 64}),
        "intensity_regressor/mlp": (build_regressor("mlp", 12, 3, hidden=8, seed=4),
                                    {"kind": "intensity_regressor", "variant": "mlp", "in_dim": 12,
                                     "targets": ["a", "b", "c"], "hidden": 8, "training": {"best_epoch": 5}}),
    }


@pytest.mark.parametrize("case", sorted(_cases()))
def test_every_kind_round_trips_its_params_batch_stats_and_metadata(case, tmp_path):
    module, meta = _cases()[case]
    _randomize(module, seed=len(case))
    save_small(module, tmp_path, meta)
    stem = SMALL_MODELS[meta["kind"]].stem
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{stem}.json", f"{stem}.npz"]
    back, back_meta = load_small(tmp_path, meta["kind"])
    assert type(back) is type(module) and back_meta == meta
    _assert_same_state(back, module)
    if isinstance(module, DistillModel):
        assert any("/mean" in k for k in flat_state(module))  # batch statistics are saved too
        assert back.input_size is None and back.teacher is None


def test_a_students_teacher_is_not_saved(tmp_path):
    student = DistillModel("tiny_cnn", 7, 20, hidden=16, seed=5)
    student.attach_teacher(DistillModel("tiny_cnn", 7, 20, hidden=16, seed=6))
    save_small(student, tmp_path, {"kind": "distill_model", **student.spec()})
    with np.load(tmp_path / "model.npz") as z:
        assert z.files and not any(k.startswith("teacher") for k in z.files)
    _assert_same_state(load_small(tmp_path, "distill_model")[0], student)


def test_files_written_before_kind_existed_still_load(tmp_path):
    """The three savers this format replaced wrote the same file names and array keys, without `kind`
    (the regressor with a `format` field)."""
    head = _randomize(MTLHead(30, seed=1), 7)
    np.savez(tmp_path / "head.npz", **flat_state(head))
    (tmp_path / "head.json").write_text(json.dumps({"in_dim": 30, "tasks": ["expr", "va", "au"]}) + "\n")
    _assert_same_state(load_head(tmp_path), head)

    reg = _randomize(build_regressor("mlp", 12, 3, hidden=8), 8)
    np.savez(tmp_path / "regressor.npz", **flat_state(reg))
    (tmp_path / "regressor.json").write_text(json.dumps({
        "format": "hsemo-jax-intensity-regressor/1", "variant": "mlp", "in_dim": 12, "hidden": 8,
        "targets": ["a", "b", "c"]}))
    _assert_same_state(load_small(tmp_path, "intensity_regressor")[0], reg)


def test_a_failed_save_leaves_the_previous_files_and_no_temporaries(tmp_path, monkeypatch):
    head = MTLHead(30, seed=1)
    save_head(head, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other = _randomize(MTLHead(30, seed=2), 9)
    with pytest.raises(TypeError):  # metadata JSON cannot hold: fails before any file is touched
        save_small(other, tmp_path, {"kind": "mtl_head", "in_dim": 30, "note": object()})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    def failing_replace(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", failing_replace)  # both temporaries written, the first move fails
    with pytest.raises(OSError, match="disk went away"):
        save_head(other, tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    _assert_same_state(load_head(tmp_path), head)


def test_write_arrays_with_meta_creates_the_directory(tmp_path):
    d = fileio.write_arrays_with_meta(tmp_path / "a" / "b", "x", {"w": np.arange(3.0)}, {"n": 1})
    with np.load(d / "x.npz") as z:
        np.testing.assert_array_equal(z["w"], np.arange(3.0))
    assert json.loads((d / "x.json").read_text()) == {"n": 1}


def test_bad_saves_and_bad_files_name_the_problem(tmp_path):
    head = MTLHead(30, seed=1)
    with pytest.raises(ValueError, match="kind"):
        save_small(head, tmp_path, {"in_dim": 30})
    with pytest.raises(ValueError, match="in_dim"):
        save_small(head, tmp_path, {"kind": "mtl_head"})
    with pytest.raises(ValueError, match="MTLHead"):
        save_small(build_regressor("linear", 4, 2), tmp_path, {"kind": "mtl_head", "in_dim": 4})
    assert not any(tmp_path.iterdir())

    with pytest.raises(InputError, match="no head.json"):
        load_head(tmp_path)
    save_head(head, tmp_path)
    with pytest.raises(InputError, match="no regressor.json"):
        load_small(tmp_path, "intensity_regressor")
    os.rename(tmp_path / "head.npz", tmp_path / "regressor.npz")
    os.rename(tmp_path / "head.json", tmp_path / "regressor.json")
    with pytest.raises(InputError, match="holds kind 'mtl_head', expected 'intensity_regressor'"):
        load_small(tmp_path, "intensity_regressor")

    save_head(head, tmp_path / "h")
    (tmp_path / "h" / "head.json").write_text(json.dumps({"kind": "mtl_head", "in_dim": 31}))
    with pytest.raises(InputError, match=r"head\.npz: au/hidden/kernel: missing or not of shape \(31, 128\)"):
        load_head(tmp_path / "h")
    (tmp_path / "h" / "head.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_head(tmp_path / "h")
    (tmp_path / "h" / "head.json").write_text(json.dumps({"kind": "mtl_head"}))
    with pytest.raises(InputError, match="not a 'mtl_head' description"):
        load_head(tmp_path / "h")
    (tmp_path / "h" / "head.json").write_text(json.dumps({"kind": "mtl_head", "in_dim": 30}))
    (tmp_path / "h" / "head.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        load_head(tmp_path / "h")
