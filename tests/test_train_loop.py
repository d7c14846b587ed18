"""The trainer: learning, data parallelism (8 fake CPU devices), BN statistics, accumulation, bf16."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsemo_jax.errors import InputError
from hsemo_jax.train import distributed as dist
from hsemo_jax.train.data import BatchIterator, load_features
from hsemo_jax.train.loop import fit
from train_fixtures import (HEAD_D, HEAD_LR, TinyNet, feature_data, head32, head_trainer, image_data,  # noqa: F401
                            reset, tiny1, tiny8)


def _features(tmp_path, name, n, seed, missing=0.0):
    np.savez(tmp_path / f"{name}.npz", **feature_data(n, d=HEAD_D, seed=seed, missing=missing))
    return load_features(tmp_path / f"{name}.npz")


def test_synthetic_multitask_head_is_learned(tmp_path, head32):
    train = _features(tmp_path, "train", 4096, 0, missing=0.2)
    val = _features(tmp_path, "val", 512, 1)
    trainer = reset(head32)
    before = trainer.evaluate(val, 256)
    after = fit(trainer, BatchIterator(train, 32), total_steps=400, eval_data=val, eval_batch=256, progress=False)
    assert before["EXPR_accuracy"] < 0.5
    assert after["EXPR_accuracy"] > 0.9, after
    assert after["P_AU"] > 0.9 and after["P_VA"] > 0.9, after


def test_eight_device_step_equals_one_device_step(tiny1, tiny8):
    assert jax.device_count() == 8 and tiny8.num_devices == 8 and tiny1.num_devices == 1
    t1, t8 = reset(tiny1), reset(tiny8)
    data = image_data(64)
    it = BatchIterator(data, 16, seed=0)
    batches = [next(it) for _ in range(3)]
    for batch in batches:
        m1, m8 = t1.step(batch), t8.step(batch)
        np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5)
    s1, s8 = t1.host_state(), t8.host_state()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), s8, s1)
    assert int(s8["step"]) == 3


def test_batchnorm_statistics_are_global_under_sharding(tiny8):
    """8 devices, 2 rows each: the running mean moves by 0.1 x the mean over all 16 rows."""
    trainer = reset(tiny8)
    data = image_data(16, seed=5)
    x = (data["images"].astype(np.float32) / 255 - 0.5) / 0.5
    conv = np.asarray(TinyNet(seed=3).conv(jnp.asarray(x)))  # BN input before the update
    trainer.step(next(BatchIterator(data, 16, shuffle=False)))
    running = trainer.host_state()["stats"]["bn"]["mean"].get_value()
    np.testing.assert_allclose(running, 0.1 * conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-7)
    per_device = 0.1 * conv[:2].mean(axis=(0, 1, 2))  # what per-device (unsynchronized) BN would give
    assert np.abs(running - per_device).max() > 1e-3


def _separable_batch(n=32):
    """All rows labelled for EXPR and AU, none for VA: every loss term is a mean over rows."""
    d = feature_data(n, d=HEAD_D, seed=2)
    return {"x": d["x"], "expr": d["expr"], "expr_mask": np.ones(n, bool), "va": np.zeros((n, 2), np.float32),
            "va_mask": np.zeros(n, bool), "au": d["au"].astype(np.float32), "au_mask": np.ones(n, bool)}


def test_gradient_accumulation_equals_the_large_batch(head32):
    """optax.MultiSteps over 2 micro-batches of 16 = one step on the 32 rows (batch-separable losses)."""
    batch = _separable_batch()
    big = reset(head32)
    acc = head_trainer(accum_steps=2)
    big.step(batch)
    acc.step({k: v[:16] for k, v in batch.items()})
    jax.tree.map(np.testing.assert_array_equal, acc.host_state()["params"], acc.initial["params"])  # no update yet
    acc.step({k: v[16:] for k, v in batch.items()})
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 acc.host_state()["params"], big.host_state()["params"])


def test_bf16_compute_keeps_fp32_master_weights(tmp_path, head32):
    batch = {k: v[:32] for k, v in _features(tmp_path, "train", 32, 0).items()}
    t32, t16 = reset(head32), head_trainer(compute_dtype="bfloat16")
    flat = lambda tree: np.concatenate([a.ravel() for a in jax.tree.leaves(tree)])  # noqa: E731
    init = flat(t32.initial["params"])
    np.testing.assert_array_equal(flat(t16.initial["params"]), init)
    m32, m16 = t32.step(batch), t16.step(batch)
    assert float(m16["loss"]) != float(m32["loss"])  # really computed in bf16
    np.testing.assert_allclose(float(m16["loss"]), float(m32["loss"]), rtol=2e-2)
    p16 = t16.host_state()["params"]
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(p16))
    d16, d32 = flat(p16) - init, flat(t32.host_state()["params"]) - init
    # Adam's first step moves each weight by ~lr against its gradient's sign: same moves in bf16
    np.testing.assert_allclose(np.abs(d32).max(), HEAD_LR, rtol=0.01)
    np.testing.assert_allclose(np.abs(d16).max(), HEAD_LR, rtol=0.01)
    assert np.mean(np.sign(d16) == np.sign(d32)) > 0.95


def test_classifier_only_phase_freezes_the_backbone_but_not_its_bn_statistics():
    """optim.trainable = "classifier" (AffectNet recipe phase 1): only `fc` moves; BN stays in train mode."""
    from hsemo_jax import optim
    from hsemo_jax.train.loop import Trainer
    from hsemo_jax.train.objectives import BackboneObjective

    tx = optim.make_optimizer("adam", 1e-2, trainable=lambda path: path.split("/")[0] == "fc")
    obj = BackboneObjective((0.5,) * 3, (0.5,) * 3)
    trainer = Trainer(TinyNet(seed=3), obj, tx, mesh=dist.make_mesh(jax.devices()[:1]))
    before = trainer.host_state()
    trainer.step(next(BatchIterator(image_data(16), 16)))
    after = trainer.host_state()
    for name in ("conv", "bn"):
        jax.tree.map(np.testing.assert_array_equal, after["params"][name], before["params"][name])
    assert np.abs(after["params"]["fc"]["kernel"].get_value() - before["params"]["fc"]["kernel"].get_value()).min() > 0
    assert np.abs(after["stats"]["bn"]["mean"].get_value()).max() > 0


def test_batch_size_must_divide_over_devices(tiny8):
    with pytest.raises(InputError, match="multiple of the 8 devices"):
        fit(tiny8, BatchIterator(image_data(20), 12), total_steps=1, progress=False)
