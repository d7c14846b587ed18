"""`hsemo-jax bench train` times each framework in its own process, rounds interleaved."""
import pytest

from hsemo_jax.bench import train


@pytest.mark.slow  # a minute on 2 cores (two worker processes, each compiling a train step); the bench runs it
def test_each_framework_is_timed_in_its_own_process():
    pytest.importorskip("torch")
    # batch 8: the workers inherit the tests' XLA_FLAGS (8 CPU devices), which the trainer splits over
    r = train.measure("mobilefacenet", batch=8, rounds=2, steps=1, use_torch=True)
    assert r["arch"] == "mobilefacenet" and r["batch"] == 8
    assert r["flax"] > 0 and r["torch"] > 0 and r["compile_s"] > 0


def test_a_failing_worker_is_reported_with_its_framework():
    with pytest.raises(RuntimeError, match="flax train step for no_such_arch failed"):
        train.measure("no_such_arch", batch=2, rounds=1, steps=1, use_torch=False)
