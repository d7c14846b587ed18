"""hsemo-jax: JAX/Flax ports of the HSEmotion facial-affect models and pipeline."""

__version__ = "0.1.0"


def load_model(path):
    """Load a converted model directory (see `hsemo-jax convert`); returns a ready-to-run model."""
    from hsemo_jax.checkpoint import load_model as _load

    return _load(path)
