"""decode -> detect -> crop/preprocess -> backbone(s) -> blend -> smooth -> write.

`predict(...)` runs the whole job and returns a `Predictions` table (one row per frame and face;
frames without a face get one row with empty face fields). Inference is batched with a fixed batch
shape (the last batch is padded), so each model compiles once.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from hsemo_jax import labels
from hsemo_jax.errors import InputError
from hsemo_jax.models import registry
from hsemo_jax.predict.defaults import (BATCH_SIZE, DETECT_EVERY, DETECT_WIDTH, DETECTORS,
                                        HOST_BLAZEFACE_MAX_FACES, MIN_DETECT_SIZE)
from hsemo_jax.predict.detect import crop, make_detector
from hsemo_jax.predict.follow import FollowingDetector
from hsemo_jax.predict.track import IoUTracker
from hsemo_jax.predict.video import Frame, FrameSource, Skipped, decoder_messages, threaded_map


@dataclass
class Predictions:
    """A column table: `columns[name]` is an array with one entry per row (NaN / -1 / "" where a
    frame has no face). `expression_names` order the `p_*` columns. Beside the columns (not in the
    CSV): `models`, the models as given to `predict`, and `sequences`, per row the sequence its frame
    belongs to (the video, an ABAW frame folder, or the image itself; None: each source is one)."""

    columns: dict[str, np.ndarray]
    expression_names: tuple[str, ...]
    skipped: list[Skipped] = field(default_factory=list)
    models: tuple[str, ...] = ()
    sequences: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.columns["frame"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    @property
    def has_face(self) -> np.ndarray:
        return self.columns["track_id"] >= 0


@dataclass
class _Model:
    name: str
    forward: Callable  # x_nhwc (B, S, S, 3) -> (embedding (B, D), scores (B, C))
    arch: str
    outputs: tuple[str, ...]
    module: object  # the nnx model (with `.info`), for the device program


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def load_models(specs: Sequence[str]) -> list[_Model]:
    """Models by published name, .pt file or converted directory (see `hsemo_jax.hub`)."""
    from hsemo_jax.hub import resolve_model

    return [_load_model(str(resolve_model(spec)), spec) for spec in specs]


@functools.lru_cache(maxsize=8)
def _load_model(model_dir: str, name: str) -> _Model:
    """Loaded once per process: later `predict` calls reuse the weights and the compiled forward.
    The forward is compiled on first use (the device path never calls it)."""
    from hsemo_jax.checkpoint import load_model
    from hsemo_jax.models.inference import make_forward

    m = load_model(model_dir)
    return _Model(name, make_forward(m, with_features=True), m.info.arch, m.info.outputs, m)


def load_au_head(head_dir: str, model: _Model, thresholds=None):
    """The ABAW-7 multi-task head trained by `hsemo-jax train-head` on `model`'s features, as a
    jitted `fn(embedding, scores) -> AU probabilities (N, 12)`, and its AU thresholds (12,):
    `thresholds` if given, else the `au_thresholds` stored in head.json, else 0.5. Loaded and
    compiled once per process, head directory and model (several videos of one run share it)."""
    fn, stored = _au_head(head_dir, model)
    return fn, _au_thresholds(stored if thresholds is None else thresholds)


_AU_HEADS: dict = {}


def _au_head(head_dir: str, model: _Model):
    """(jitted AU function, the head's stored thresholds or 0.5), cached by head path and model."""
    key = (os.path.abspath(head_dir), id(model))  # the cache holds `model`, so its id is not reused
    if key in _AU_HEADS:
        return _AU_HEADS[key][:2]
    import jax
    from flax import nnx

    from hsemo_jax.models.heads import load_small

    head, meta = load_small(head_dir, "mtl_head")
    trained = meta.get("tasks", ["expr", "va", "au"])
    if "au" not in trained:
        raise InputError(f"{head_dir}: the head was trained for {', '.join(trained)} only; its AU sub-head is "
                         "untrained (train one with `hsemo-jax train-head --tasks au` or all tasks)")
    n_scores = len(model.outputs)
    graphdef, state = nnx.split(head)

    @jax.jit
    def au(state, f, s):
        if f.shape[1] + s.shape[1] != head.in_dim:
            raise InputError(f"{head_dir}: the head takes {head.in_dim} inputs, but model {model.name} gives "
                             f"{f.shape[1]} + {n_scores}; use the backbone the head was trained on")
        return nnx.merge(graphdef, state).predict(jax.numpy.concatenate([f, s], axis=1))["au"]

    _AU_HEADS[key] = (lambda f, s: np.asarray(au(state, f, s))), meta.get("au_thresholds", 0.5), model
    return _AU_HEADS[key][:2]


def _au_thresholds(thresholds) -> np.ndarray:
    """1 or 12 AU decision thresholds in (0, 1) -> (12,)."""
    t = np.asarray(thresholds, np.float64).reshape(-1)
    if t.size not in (1, 12) or not ((t > 0) & (t < 1)).all():
        raise InputError(f"AU thresholds must be 1 or 12 numbers between 0 and 1 (exclusive), got {t.tolist()}")
    return np.broadcast_to(t, (12,))


def check_options(*, models: int = 1, weights=None, detector: str = "haar", detect_width: int = DETECT_WIDTH,
                  detect_size: int | None = None, detect_every: int = DETECT_EVERY, smooth: str = "none", sigma: float = 2.0, k: int = 5,
                  batch_size: int = BATCH_SIZE, au_thresholds=None) -> None:
    """Raise one `InputError` naming every bad setting of `predict` (`models`: how many are given),
    before anything is loaded or decoded."""
    bad = []

    def whole(name, value, low):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            bad.append(f"{name}: expected a whole number >= {low}, got {value!r}")

    whole("batch size", batch_size, 1)
    whole("detect width", detect_width, 0)
    if detect_size is not None:
        whole("detect size", detect_size, MIN_DETECT_SIZE)
    whole("detect every N frames", detect_every, 1)
    if detector not in DETECTORS:
        bad.append(f"detector: expected one of {', '.join(DETECTORS)}, got {detector!r}")
    if weights is not None:
        w = np.asarray(weights, float).reshape(-1)
        if len(w) != models or not np.isfinite(w).all() or (w < 0).any() or not np.isclose(w.sum(), 1.0):
            bad.append(f"blend weights must be {models} non-negative numbers summing to 1, got {w.tolist()}")
    if smooth not in ("gaussian", "box", "none"):
        bad.append(f"smooth: expected gaussian, box or none, got {smooth!r}")
    elif smooth != "none":
        from hsemo_jax.postprocess.smoothing import check_settings

        try:
            check_settings(smooth, None, sigma, k)
        except InputError as e:
            bad.append(str(e))
    if au_thresholds is not None:
        try:
            _au_thresholds(au_thresholds)
        except InputError as e:
            bad.append(str(e))
    if bad:
        raise InputError("; ".join(bad))


def expression_layout(models: list[_Model]) -> tuple[tuple[str, ...], bool]:
    """(expression class names, whether every model has valence/arousal). All models must agree."""
    layouts = []
    for m in models:
        k = labels.expression_count(m.outputs)
        classes, va = m.outputs[:k], k < len(m.outputs)
        if not classes:
            raise InputError(f"model {m.name}: has no classifier (embedding only); it cannot predict emotions")
        layouts.append((classes, va))
    classes = layouts[0][0]
    for m, (c, _) in zip(models, layouts):
        if c != classes:
            raise InputError(f"models {models[0].name} and {m.name} predict different classes "
                             f"({', '.join(classes)} vs {', '.join(c)}); they cannot be blended")
    return classes, all(va for _, va in layouts)


def _run_batch(models, weights, crops, batch_size, with_va, au_head=None):
    """Blended (probs (n, K), va (n, 2) or None, AU probs (n, 12) or None) for up to batch_size
    crops, padded to batch_size. The AU head reads the first model's embedding and raw scores."""
    from hsemo_jax.models import preprocess

    n = len(crops)
    probs, va, au = 0.0, 0.0, None
    inputs: dict[str, np.ndarray] = {}  # blended models of one architecture share their input
    for i, (m, w) in enumerate(zip(models, weights)):
        if m.arch not in inputs:
            x = preprocess(m.arch, crops)
            inputs[m.arch] = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
        f, s = m.forward(inputs[m.arch])
        if i == 0 and au_head is not None:
            au = au_head(f, s)[:n]
        scores = np.asarray(s)[:n].astype(np.float64)
        k = labels.expression_count(m.outputs)  # the model's own: a blend may mix models with and without VA
        probs = probs + w * _softmax(scores[:, :k])
        if with_va:
            va = va + w * scores[:, k:k + 2]
    return probs, (va if with_va else None), au


def predict(input_spec, models: Sequence[str] = ("enet_b0_8_va_mtl",), *, weights=None,
            detector: str = registry.DEFAULT_DETECTOR, detector_model: str | None = None,
            detect_width: int = DETECT_WIDTH, detect_size: int | None = None,
            detect_every: int = DETECT_EVERY, smooth: str = "none", sigma: float = 2.0, k: int = 5,
            batch_size: int = BATCH_SIZE, head: str | None = None, au_thresholds=None,
            exact_preprocess: bool = False, on_rows: Callable | None = None,
            progress: bool = False) -> Predictions:
    """Per-frame, per-face expression probabilities (+ valence/arousal) for a video, image, folder
    or glob, or numpy frames (one uint8 RGB image (H, W, 3), a stack (N, H, W, 3) or a list). Two or more
    models are blended with `weights` (default equal). On the host path (below), faces are detected
    on frames shrunk to `detect_width` (0: full size) and cropped from the full frame; in a video the
    full-frame search runs every `detect_every` frames and tracked faces are followed on the frames
    between (`hsemo_jax.predict.follow`; 1: every frame). `smooth`: "gaussian" or
    "box" per face track (sigma, k in frames; `hsemo_jax.postprocess.smooth`) or "none".
    `head`: a multi-task head directory (`hsemo-jax train-head`) on the first model's features: adds
    12 AU probabilities and labels (`au_thresholds`, else the head's stored ones, else 0.5).
    `on_rows(rows, classes, with_va)` receives the raw rows, in order, as they are computed.

    With a BlazeFace detector (the default: full range, `registry.DEFAULT_DETECTOR`) every batch
    of `batch_size` frames runs as one device program (`hsemo_jax.predict.device`: whole-frame detection on every frame, crops resized on the
    device; `detect_width` and `detect_every` do not apply; `detect_size`: BlazeFace's finer view,
    the frame's short side in px, `models.detection.detect`'s `size`, None: the model's);
    `exact_preprocess` uses the host path
    instead (crops the same bits as the device's, normalized in float64: outputs ~1e-6 apart; the
    other detectors always use it; there `batch_size` counts faces). `progress`: frames done, percentage and ETA on stderr (`hsemo_jax.predict.progress`).
    """
    check_options(models=len(models), weights=weights, detector=detector, detect_width=detect_width,
                  detect_size=detect_size, detect_every=detect_every, smooth=smooth, sigma=sigma, k=k, batch_size=batch_size,
                  au_thresholds=au_thresholds)
    if isinstance(input_spec, (str, os.PathLike)):
        source = FrameSource(os.fspath(input_spec))
    else:  # numpy frames
        from hsemo_jax.predict.arrays import ArraySource

        source, input_spec = ArraySource(input_spec), "<array>"
    loaded = load_models(models)
    weights = np.full(len(loaded), 1.0 / len(loaded)) if weights is None else np.asarray(weights, float)
    classes, with_va = expression_layout(loaded)
    au_head, au_thr = load_au_head(head, loaded[0], au_thresholds) if head else (None, None)
    make_row = functools.partial(_row, with_au=au_head is not None)
    from hsemo_jax.predict.progress import Progress, frame_total

    # the bar is made inside `decoder_messages`, so that it writes to the real standard error, not to fd 2,
    # which the block holds back
    if detector in registry.DETECTORS and not exact_preprocess:
        from hsemo_jax.predict import device

        program = device.program_for(detector, loaded, tuple(weights), with_va, with_embedding=au_head is not None,
                                     detect_size=detect_size)
        with decoder_messages() as chatter:
            bar = Progress(frame_total(source), enabled=progress)
            try:
                rows, skipped, frames_seen = device.run(
                    source, program, batch_size=batch_size, max_faces=device.MAX_FACES, tracker=IoUTracker(),
                    make_row=make_row, on_rows=lambda new: on_rows(new, classes, with_va) if on_rows else None,
                    progress=bar, au_head=au_head)
            finally:
                bar.close()
        _report_input_notes(source, chatter)
        _report_face_cap(rows, device.MAX_FACES)
        return _table(input_spec, rows, classes, with_va, skipped, frames_seen, smooth, sigma, k, au_thr, models)
    follow = FollowingDetector(make_detector(detector, detector_model, detect_width, detect_size),
                               detect_every if source.kind == "video" else 1)

    rows: list[dict] = []  # face-less frames and faces, in frame order
    pending: list[tuple[dict, np.ndarray]] = []  # faces waiting for a full batch
    skipped: list[Skipped] = []
    frames_seen, streamed = 0, 0

    def emit():  # hand every finished row, in order, to on_rows (none is finished while faces wait)
        nonlocal streamed
        if pending:
            return
        if on_rows is not None and streamed < len(rows):
            on_rows(rows[streamed:], classes, with_va)
        streamed = len(rows)

    def flush():
        if pending:
            probs, va, au = _run_batch(loaded, weights, [c for _, c in pending], batch_size, with_va, au_head)
            for i, (row, _) in enumerate(pending):
                row["probs"] = probs[i]
                row["va"] = va[i] if va is not None else None
                row["au"] = au[i] if au is not None else None
            pending.clear()
        emit()

    sequence = [None]  # of the last frame; tracks end where a new one begins

    def detected(item):  # detection and tracking, in frame order, in a background thread
        if isinstance(item, Skipped):
            return item, None
        if item.sequence != sequence[0]:
            follow.new_sequence()
            sequence[0] = item.sequence
        return item, follow(item.rgb, item.index)

    with decoder_messages() as chatter, contextlib.closing(Progress(frame_total(source), enabled=progress)) as bar:
        for item, found in threaded_map(detected, source):
            if isinstance(item, Skipped):
                skipped.append(item)
                print(f"skipped {item.source}: {item.reason}", file=sys.stderr)
                bar.update(1)  # in the total: the bar ends at 100%
                continue
            frames_seen += 1
            boxes, ids = found
            faces = [(b, t, crop(item.rgb, b)) for b, t in zip(boxes, ids)]
            faces = [f for f in faces if f[2] is not None]
            if not faces:
                rows.append(make_row(item, None, -1))
                emit()
                bar.update(1)
                continue
            for box, tid, face in faces:
                row = make_row(item, box, int(tid))
                rows.append(row)
                pending.append((row, face))
                if len(pending) == batch_size:
                    flush()
            bar.update(1)
        flush()
    _report_input_notes(source, chatter)
    return _table(input_spec, rows, classes, with_va, skipped, frames_seen, smooth, sigma, k, au_thr, models)


def _report_input_notes(source, chatter: list[str]) -> None:
    """What the user should hear about the input once it is read: short videos, decoder chatter."""
    for note in source.notes:
        print(f"warning: {note}", file=sys.stderr)
    if chatter:
        print(f"warning: {len(chatter)} message line(s) from the video/image decoders (FFmpeg, libjpeg) were "
              f"held back; the first: {chatter[0].strip()}", file=sys.stderr)


def _report_face_cap(rows: list[dict], max_faces: int) -> None:
    """One warning when frames reached the device program's faces-per-frame limit: faces beyond it
    are not in the output."""
    per_frame = Counter((r["source"], r["frame"]) for r in rows if r["box"] is not None)
    full = [key for key, n in per_frame.items() if n >= max_faces]
    if full:
        source, frame = full[0]
        print(f"warning: {len(full)} frame(s) reached the {max_faces} faces per frame that the device program keeps "
              f"(the first: {source} frame {frame}); any more faces there are left out (--exact-preprocess keeps "
              f"up to {HOST_BLAZEFACE_MAX_FACES})", file=sys.stderr)


def _table(input_spec, rows, classes, with_va, skipped, frames_seen, smooth, sigma, k, au_thr,
           models) -> Predictions:
    if frames_seen == 0:
        raise InputError(f"{input_spec}: no readable frames ({len(skipped)} unreadable file(s))")
    table = rows_to_table(rows, classes, with_va, skipped)
    table.models = tuple(str(m) for m in models)
    if smooth != "none":
        _smooth_tracks(table, smooth, sigma, k)
    _labels(table, au_thr)
    return table


def _row(frame: Frame, box, track_id: int, with_au: bool = False) -> dict:
    """A row of the table; with an AU head a frame without a face gets NaN AU probabilities (a face's are
    filled in when its batch runs), so that every streamed chunk of rows has the AU columns."""
    au = np.full(len(labels.AU_NAMES), np.nan) if with_au and box is None else None
    return {"source": frame.source, "sequence": frame.sequence, "frame": frame.index, "time": frame.time,
            "track_id": track_id, "box": box, "probs": None, "va": None, "au": au}


def rows_to_table(rows: list[dict], classes, with_va: bool, skipped) -> Predictions:
    """The rows as columns; AU probabilities when the rows have them (with an AU head, every row: `_row`)."""
    n, k = len(rows), len(classes)
    cols: dict[str, np.ndarray] = {
        "source": np.array([r["source"] for r in rows], dtype=object),
        "frame": np.array([r["frame"] for r in rows], np.int64),
        "time": np.array([np.nan if r["time"] is None else r["time"] for r in rows]),
        "track_id": np.array([r["track_id"] for r in rows], np.int64),
    }
    boxes = np.full((n, 4), np.nan)
    probs = np.full((n, k), np.nan)
    va = np.full((n, 2), np.nan)
    for i, r in enumerate(rows):
        if r["box"] is not None:
            boxes[i], probs[i] = r["box"], r["probs"]
            if r["va"] is not None:
                va[i] = r["va"]
    for j, name in enumerate(("x1", "y1", "x2", "y2")):
        cols[name] = boxes[:, j]
    for j, name in enumerate(classes):
        cols[f"p_{name}"] = probs[:, j]
    if with_va:
        cols["valence"], cols["arousal"] = va[:, 0], va[:, 1]
    if any(r["au"] is not None for r in rows):
        au = np.full((n, len(labels.AU_NAMES)), np.nan)
        for i, r in enumerate(rows):
            if r["au"] is not None:
                au[i] = r["au"]
        for j, name in enumerate(labels.AU_NAMES):
            cols[f"p_{name}"] = au[:, j]
    sequences = np.array([r.get("sequence", r["source"]) for r in rows], dtype=object)
    return Predictions(cols, tuple(classes), list(skipped), sequences=sequences)


def _smooth_tracks(table: Predictions, method: str, sigma: float, k: int) -> None:
    """Smooth probabilities and valence/arousal along each face track (frame-number distances)."""
    from hsemo_jax.postprocess import smooth

    face = np.flatnonzero(table.has_face)
    if len(face) == 0:
        return
    keys = [c for c in table.columns if c.startswith("p_")] + [c for c in labels.VA_NAMES if c in table.columns]
    values = np.stack([table[c][face] for c in keys], axis=1)
    # one "video" per (sequence, track): a track spans its sequence (a video, or an ABAW frame
    # folder whose frames are separate files); frames must be sorted within each
    seq = table["source"] if table.sequences is None else table.sequences
    track = np.array([f"{s}#{t}" for s, t in zip(seq[face], table["track_id"][face])])
    order = np.lexsort((table["frame"][face], track))
    smoothed = np.empty_like(values)
    smoothed[order] = smooth(values[order], track[order], table["frame"][face][order], method=method,
                             sigma=sigma if method == "gaussian" else None, k=k)
    for j, c in enumerate(keys):
        table.columns[c][face] = smoothed[:, j]


def _labels(table: Predictions, au_thresholds=None) -> None:
    """Expression label (argmax), AU labels (probability >= threshold) and, for 8 HSE classes,
    compound expression scores and label."""
    face = table.has_face
    if au_thresholds is not None:
        for name, t in zip(labels.AU_NAMES, au_thresholds):
            table.columns[name] = np.where(face, (table[f"p_{name}"] >= t).astype(np.int64), -1)
    probs = np.stack([table[f"p_{c}"] for c in table.expression_names], axis=1)
    label = np.full(len(table), "", dtype=object)
    label[face] = np.array(table.expression_names, dtype=object)[np.argmax(probs[face], axis=1)]
    table.columns["expression"] = label
    if table.expression_names != labels.HSE_CLASSES_8:
        return
    from hsemo_jax.postprocess.compound import compound_scores

    comp = np.full((len(table), len(labels.CEXPR_CLASSES)), np.nan)
    if face.any():
        comp[face] = compound_scores(probs[face].astype(np.float32))
    for j, name in enumerate(labels.CEXPR_CLASSES):
        table.columns[f"c_{name}"] = comp[:, j]
    clabel = np.full(len(table), "", dtype=object)
    clabel[face] = np.array(labels.CEXPR_CLASSES, dtype=object)[np.argmax(comp[face], axis=1)]
    table.columns["compound"] = clabel
