"""`hsemo-jax predict`: video, image, folder or glob in; per-frame, per-face emotions out.

`predict` and `Predictions` (`hsemo_jax.predict.pipeline`) are loaded on first use, so that light
modules of this package (`defaults`) are importable without JAX."""

__all__ = ["Predictions", "predict"]


def __getattr__(name):
    if name in __all__:
        from hsemo_jax.predict import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'hsemo_jax.predict' has no attribute {name!r}")
