"""Checkpoints: exact round trip of the whole train state and data position; exact resume; CSV and
TensorBoard logs."""
import csv
import struct

import jax
import numpy as np
import pytest

from hsemo_jax.errors import InputError
from hsemo_jax.train.checkpoints import RunCheckpoints
from hsemo_jax.train.data import BatchIterator
from hsemo_jax.train.loop import fit
from train_fixtures import image_data, reset, tiny1  # noqa: F401


def _assert_equal_trees(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_checkpoint_round_trip_is_exact(tmp_path, tiny1):
    trainer = reset(tiny1)
    it = BatchIterator(image_data(64), 16, seed=3)
    for _ in range(5):  # crosses an epoch boundary (4 batches per epoch)
        trainer.step(next(it))
    saved, saved_pos = trainer.host_state(), it.state()
    assert saved_pos == {"epoch": 1, "batch": 1, "seed": 3, "rows": 64}
    ckpt = RunCheckpoints(tmp_path / "ckpt", keep=2)
    ckpt.save(5, trainer.state, it.state())
    ckpt.wait()
    trainer.step(next(it))  # move on, then restore
    state, pos = ckpt.restore(trainer.state)
    ckpt.close()
    assert pos == saved_pos
    _assert_equal_trees(jax.tree.map(np.asarray, state), saved)  # params, BN stats, Adam moments, step, RNG
    assert int(saved["step"]) == 5
    fresh = BatchIterator(image_data(64), 16, seed=3)
    fresh.restore(pos)
    nxt = BatchIterator(image_data(64), 16, seed=3)
    for _ in range(6):
        want = next(nxt)
    _assert_equal_trees(next(fresh), want)  # the restored iterator yields batch 6 next


def test_keep_newest_n_and_best_by_metric(tmp_path):
    ckpt = RunCheckpoints(tmp_path / "ckpt", keep=2, keep_best=1, best_metric="accuracy", best_mode="max",
                          async_save=False)
    for step, acc in enumerate([0.1, 0.5, 0.3, 0.2], start=1):
        state = {"w": np.full(3, step, np.float32)}
        ckpt.save(step, state, {"epoch": 0, "batch": step})
        ckpt.save_best(step, state, {"epoch": 0, "batch": step}, {"accuracy": acc, "loss": 1 - acc})
    ckpt.wait()
    assert ckpt.latest.all_steps() == [3, 4] and ckpt.latest_step() == 4
    assert ckpt.best.all_steps() == [2] and ckpt.best_step() == 2
    state, pos = ckpt.restore({"w": np.zeros(3, np.float32)}, which="best")
    assert state["w"].tolist() == [2, 2, 2] and pos["batch"] == 2
    with pytest.raises(InputError, match="checkpoint.best_metric: 'accuracy'"):
        ckpt.save_best(5, state, pos, {"P_MTL": 1.0})
    ckpt.close()


def test_resume_from_a_checkpoint_ends_where_an_uninterrupted_run_ends(tmp_path, tiny1):
    """Stop at step 3 (mid-epoch), resume to 7: same params, BN stats and Adam state as 7 straight."""
    data = image_data(64, seed=9)
    trainer = reset(tiny1)
    fit(trainer, BatchIterator(data, 16, seed=1), total_steps=7, progress=False)
    straight = trainer.host_state()

    reset(trainer)
    ckpt = RunCheckpoints(tmp_path / "ckpt")
    fit(trainer, BatchIterator(data, 16, seed=1), total_steps=3, run_dir=tmp_path, checkpoints=ckpt, save_every=3,
        progress=False)
    ckpt.close()
    reset(trainer)  # as a new process would start
    ckpt = RunCheckpoints(tmp_path / "ckpt")
    fit(trainer, BatchIterator(data, 16, seed=1), total_steps=7, run_dir=tmp_path, checkpoints=ckpt, save_every=3,
        progress=False)
    ckpt.close()
    _assert_equal_trees(trainer.host_state(), straight)
    with open(tmp_path / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r["loss"]]
    assert steps == list(range(1, 8))


def _read_records(path):
    """The payloads of a TFRecord file, each length and payload checked against its masked CRC-32C."""
    from tensorboardX.record_writer import masked_crc32c

    data = path.read_bytes()
    pos, out = 0, []
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(data[pos:pos + 8])
        payload = data[pos + 12:pos + 12 + n]
        assert struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])[0] == masked_crc32c(payload)
        out.append(payload)
        pos += 16 + n
    return out


def test_tensorboard_event_file_is_valid_and_matches_the_csv(tmp_path, tiny1):
    from tensorboardX.crc32c import crc32c
    from tensorboardX.proto.event_pb2 import Event

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (the record check above relies on it)
    trainer = reset(tiny1)
    fit(trainer, BatchIterator(image_data(32), 16), total_steps=3, run_dir=tmp_path, progress=False)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    (events_file,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    events = [Event.FromString(p) for p in _read_records(events_file)]
    assert events[0].file_version == "brain.Event:2"
    losses = {e.step: v.simple_value for e in events[1:] for v in e.summary.value if v.tag == "loss"}
    assert sorted(losses) == [1, 2, 3]
    for r in rows:
        np.testing.assert_allclose(losses[int(r["step"])], float(r["loss"]), rtol=1e-6)
