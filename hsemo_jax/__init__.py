"""hsemo-jax: JAX/Flax ports of the HSEmotion facial-affect models and pipeline.

    hsemo_jax.Recognizer("enet_b0_8_va_mtl")   # predict_emotions(face), predict(video) -> DataFrame
    hsemo_jax.load_model("enet_b0_8_va_mtl")   # the nnx model (also a directory or a .pt file)
"""

__version__ = "0.1.0"
__all__ = ["Recognizer", "load_model"]


def load_model(path):
    """A ready-to-run model (eval mode, with `model.info`) from a published model name (fetched
    and converted on first use), a converted model directory (see `hsemo-jax convert`) or a
    PyTorch `.pt` file (converted once, cached)."""
    from hsemo_jax.api import load_model as _load

    return _load(path)


def __getattr__(name):  # `hsemo_jax.Recognizer` without importing JAX at `import hsemo_jax`
    if name == "Recognizer":
        from hsemo_jax.api import Recognizer

        return Recognizer
    raise AttributeError(f"module 'hsemo_jax' has no attribute {name!r}")
