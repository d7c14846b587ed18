"""The Python API in one class, as simple as hsemotion's `HSEmotionRecognizer`:

    import hsemo_jax
    fer = hsemo_jax.Recognizer("enet_b0_8_va_mtl")    # published name, converted directory or .pt
    label, scores = fer.predict_emotions(face_rgb)     # one face crop, as hsemotion
    labels, scores = fer.predict_emotions([f1, f2])    # several
    df = fer.predict("clip.mp4")                       # video, image, folder, glob or numpy frames
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from hsemo_jax.errors import InputError
from hsemo_jax.predict.defaults import BATCH_SIZE


class Recognizer:
    """Facial expressions (and valence/arousal for the `*_va_mtl` models) with one or more models.

    `model`: a published name (fetched and converted on first use, see `hsemo_jax.hub`), a
    converted model directory or a PyTorch `.pt` file; a list of them is blended with `weights`
    (default equal) by `predict`. `detector`: None (predict's default, BlazeFace full range: one
    device program per batch of frames), "blazeface" (short range), "blazeface_full_range", "haar",
    "yunet" or "none" (pre-cropped faces).
    `progress`: show frames done, percentage and ETA on stderr during `predict`.
    """

    def __init__(self, model: str | os.PathLike | Sequence = "enet_b0_8_va_mtl", *, weights=None,
                 detector: str | None = None, batch_size: int = BATCH_SIZE, progress: bool = True):
        from hsemo_jax.predict.pipeline import expression_layout, load_models

        specs = [model] if isinstance(model, (str, os.PathLike)) else list(model)
        if not specs:
            raise InputError("Recognizer: give at least one model")
        self.specs = [os.fspath(s) for s in specs]
        self.models = load_models(self.specs)
        self.weights, self.detector = weights, detector
        self.batch_size, self.progress = batch_size, progress
        # predict_emotions runs the first model: its classes, whether it has valence/arousal
        self.class_names, self.is_mtl = expression_layout(self.models[:1])
        self.idx_to_class = dict(enumerate(self.class_names))

    def predict_emotions(self, face_or_faces, logits: bool = True):
        """hsemotion's `predict_emotions` / `predict_multi_emotions` with the first model:
        one uint8 RGB face crop (H, W, 3) -> (label, scores (C,)); a list of crops or an array
        (N, H, W, 3) -> (labels, scores (N, C)). Faces are resized PIL-exactly, as the original.
        `scores` are the model's raw outputs; with `logits=False` the expression scores are
        replaced by their softmax (valence and arousal, the last two of an MTL model, stay raw).
        The label is the arg-max over the expression scores. Faces run in chunks of `batch_size`,
        each padded to a power of two, so any number of faces compiles at most a few shapes."""
        from hsemo_jax.models import preprocess_images
        from hsemo_jax.predict.arrays import as_rgb_uint8

        if face_or_faces is None or isinstance(face_or_faces, (str, bytes, os.PathLike)):
            raise InputError(f"predict_emotions: expected a face crop (an RGB uint8 array) or a list of them, got "
                             f"{face_or_faces!r}; to read a file and find its faces use predict({face_or_faces!r})")
        if not isinstance(face_or_faces, (list, tuple)):  # an array, or a PIL image
            face_or_faces = np.asarray(face_or_faces)
        single = isinstance(face_or_faces, np.ndarray) and face_or_faces.ndim in (2, 3) and (
            face_or_faces.ndim == 2 or face_or_faces.shape[2] in (1, 3, 4))
        faces = [face_or_faces] if single else list(face_or_faces)
        if not faces:
            raise InputError("predict_emotions: no faces given")
        faces = [as_rgb_uint8(f, f"face {i}") for i, f in enumerate(faces)]
        m = self.models[0]
        info = m.module.info
        x = preprocess_images(faces, info.input_size, info.mean, info.std)
        scores = np.concatenate([_padded_scores(m.forward, x[i:i + self.batch_size], self.batch_size)
                                 for i in range(0, len(x), self.batch_size)])
        k = len(self.class_names)
        preds = np.argmax(scores[:, :k], axis=1)
        if not logits:
            e = np.exp(scores[:, :k] - scores[:, :k].max(axis=1, keepdims=True))
            scores[:, :k] = e / e.sum(axis=1, keepdims=True)
        found = [self.idx_to_class[int(p)] for p in preds]
        return (found[0], scores[0]) if single else (found, scores)

    def predict(self, source, **kwargs):
        """Per-frame, per-face predictions as a pandas DataFrame with the CSV's columns (source,
        frame, time, track_id, box, p_<class>, valence, arousal, expression, ...); one row per
        frame without a face. `source`: a video, image, folder or glob path, or numpy frames
        (H, W, 3) / (N, H, W, 3) / a list of (H, W, 3) of any sizes, uint8 RGB. Other keyword arguments go to
        `hsemo_jax.predict.predict` (smooth, detect_every, exact_preprocess, head, ...)."""
        import pandas as pd

        from hsemo_jax.predict import predict

        kwargs = {"weights": self.weights, "batch_size": self.batch_size, "progress": self.progress,
                  **({} if self.detector is None else {"detector": self.detector}), **kwargs}
        table = predict(source, self.specs, **kwargs)
        return pd.DataFrame(table.columns)


def _padded_scores(forward, x: np.ndarray, most: int) -> np.ndarray:
    """forward's scores (float32) of the n images x, run padded with zeros to the next power of two
    (at most `most`): each new n would otherwise compile the model again (~1 s for B0)."""
    n = len(x)
    size = min(1 << (n - 1).bit_length(), max(most, n))
    padded = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
    return np.asarray(forward(padded)[1], np.float32)[:n].copy()


def load_model(model: str | os.PathLike):
    """A ready-to-run model (nnx, eval mode, `model.info`) from a published name, a converted
    directory or a `.pt` file."""
    from hsemo_jax.checkpoint import load_model as load
    from hsemo_jax.hub import resolve_model

    return load(resolve_model(model))
