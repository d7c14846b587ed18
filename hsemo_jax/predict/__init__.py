"""`hsemo-jax predict`: video, image, folder or glob in; per-frame, per-face emotions out."""
from hsemo_jax.predict.pipeline import Predictions, predict

__all__ = ["Predictions", "predict"]
