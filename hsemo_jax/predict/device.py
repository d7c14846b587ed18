"""One jitted device program per batch of frames: detect -> choose faces -> crop and resize ->
every model -> softmax and blend -> per-face outputs. The host only decodes, tracks and writes.

    frames uint8 (B, H, W, 3)
    -> BlazeFace (`hsemo_jax.models.detection.detect`): at most `max_faces` faces per frame
    -> the faces with a non-empty crop, compacted to a fixed budget of `budget` faces per batch
    -> each face read from a square window of the frame around it (static side, grown and the batch
       rerun when a crop is larger), cropped as the host does (`predict.detect.crop`: box truncated to int, clamped to
       the frame, no margin) and resized to each model's input as Pillow does (bilinear, antialiased
       when shrinking, 22-bit fixed-point weights, each of the two passes rounded to 0..255)
    -> (x / 255 - mean) / std -> every backbone -> softmax of the expression scores, blended with
       the weights; valence/arousal blended raw
    -> per-face outputs scattered back to (B, max_faces, ...) with a validity mask.

With several local devices (GPUs, or one CPU device per core) `program_for`'s program splits each
batch over them, every device running all of this on its frames.

The resize gives the exact host path's bits (`--exact-preprocess`, `models.transforms`, itself
Pillow's to the bit): the same taps and 22-bit weights, computed exactly in integers
(`_taps`), the same integer passes.

The program is pure JAX (gathers, scatters, integer and float32 products and sums: no matmul that a
TPU would run in bfloat16, no host callback), so it cross-lowers for CUDA and TPU (tests/test_export.py).
"""
from __future__ import annotations

import functools
import sys
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hsemo_jax import labels, runtime
from hsemo_jax.models.detection import detect
from hsemo_jax.ops.resample import PILLOW_BITS, materialized, pillow_weights

MAX_FACES = 8  # faces per frame the detector keeps
WINDOW = 256  # first side (px) of the frame window around each face that its crop and resize read
SHRINK_AFTER = 8  # batches in a row whose faces fit a smaller budget before the budget steps down to it
_HINTS: dict[int, tuple[int, int]] = {}  # id(program) -> the (faces per frame, window side) its last run reached


class Budget:
    """The faces per batch that go through the models (`make_program`'s static `budget`): one of
    batch_size x 1, 2, 4, ... faces a frame, up to batch_size x max_faces. A batch that finds more
    faces than its budget is rerun with the step that holds them, which later batches keep; after
    SHRINK_AFTER batches in a row that a smaller step would have held, the budget steps down to
    it, so that one crowded moment (or one false detection) does not double the models' work for
    the rest of a video. Each step compiles once; going back to one costs nothing."""

    def __init__(self, batch_size: int, max_faces: int, per_frame: int = 1):
        steps, k = [], 1
        while k < max_faces:
            steps.append(batch_size * k)
            k *= 2
        self.steps = [*steps, batch_size * max_faces]
        self.value = next(v for v in self.steps if v >= batch_size * min(per_frame, max_faces))
        self._fits = 0  # batches in a row that the step below would have held

    def after(self, found: int, used: int) -> bool:
        """After a batch that ran with budget `used` and found `found` faces: whether it must be
        rerun (with `value`, grown to hold them)."""
        if found > self.value:
            self.value, self._fits = next(v for v in self.steps if v >= found), 0
        else:
            below = [v for v in self.steps if v < self.value]
            self._fits = self._fits + 1 if below and found <= below[-1] else 0
            if self._fits >= SHRINK_AFTER:
                self.value, self._fits = below[-1], 0
        return found > used


@dataclass(frozen=True)
class Backbone:
    """A loaded model as the device program needs it."""

    module: nnx.Module
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int  # expression classes (the scores before valence/arousal)
    with_va: bool

    @classmethod
    def of(cls, model: nnx.Module, with_va: bool) -> "Backbone":
        info = model.info
        k = labels.expression_count(info.outputs)  # its own: a blend may mix models with and without VA
        return cls(model, info.input_size, tuple(info.mean), tuple(info.std), k, with_va)


def _taps(lo, hi, size: int, out_size: int, k: int):
    """Pillow's bilinear taps for resampling pixels [lo, hi) of an axis of `size` pixels to
    `out_size` (`precompute_coeffs` and `normalize_coeffs_8bpc`), in crop coordinates: indices
    (out_size, k) into the axis and 22-bit fixed-point weights (out_size, k), int32.

    Exact: in units of 1 / (2 out_size) the centre of output pixel i is (2i + 1) n and tap t's is
    (2t + 1) out_size, so the triangle's values (support max(n, out_size), stretched when
    shrinking) are integers, quantized as Pillow does (`ops.resample.pillow_weights`)."""
    n = (hi - lo).astype(jnp.int32)
    m = out_size
    s = jnp.maximum(n, m)  # the support, in units of 1 / out_size
    c = (2 * jnp.arange(m, dtype=jnp.int32) + 1) * n  # each output pixel's centre
    xmin = (c - 2 * s + m) // (2 * m)  # floor(centre - support + 1/2), Pillow's first tap
    taps = xmin[:, None] + jnp.arange(k, dtype=jnp.int32)
    w = jnp.maximum(2 * s - jnp.abs((2 * taps + 1) * m - c[:, None]), 0)
    w = jnp.where((taps >= 0) & (taps < n), w, 0)
    total = jnp.sum(w, axis=1, keepdims=True)
    coeffs = pillow_weights(w, jnp.maximum(total, 1))
    return jnp.clip(taps + lo.astype(jnp.int32), 0, size - 1), coeffs


def crop_boxes(boxes, height: int, width: int):
    """The host crop rule (`predict.detect.crop`) on (..., 4) boxes: corners truncated to integers,
    clamped to the frame. Returns the integer corners as float32 and whether the crop is non-empty."""
    b = jnp.trunc(boxes)
    x1, y1 = jnp.maximum(b[..., 0], 0), jnp.maximum(b[..., 1], 0)
    x2, y2 = jnp.minimum(b[..., 2], width), jnp.minimum(b[..., 3], height)
    return jnp.stack([x1, y1, x2, y2], axis=-1), (x2 > x1) & (y2 > y1)


# taps for a crop enlarged or kept (support 1): an output pixel's triangle spans 2 pixels; the third
# has weight 0, a margin. A crop that shrinks by s needs ceil(2 s) + 2 (`crop_resize_faces`).
_UP_TAPS = 3


def _resample(x, axis: int, taps, coeffs):
    """One Pillow pass on uint8 pixels `x` (H, W, C) along `axis` (0: rows, 1: columns) with
    `_taps`' indices and fixed-point weights (out, k): integer sums rounded half up, clipped to
    0..255 (as `models.transforms._resample`). uint8 in and out: the passes' data is a quarter of
    int32's."""
    gathered = jnp.take(x, taps, axis=axis).astype(jnp.int32)  # the taps' rows or columns
    acc = jnp.sum(gathered * coeffs.reshape(*coeffs.shape, *[1] * (x.ndim - 1 - axis)), axis=axis + 1)
    return jnp.clip((acc + (1 << (PILLOW_BITS - 1))) >> PILLOW_BITS, 0, 255).astype(jnp.uint8)


def crop_resize(frame, box, size: int, window: int | None = None):
    """One uint8 frame (H, W, 3) and integer crop corners (4,) -> the crop resized to
    (size, size, 3) as Pillow's bilinear resize does it, to the bit (`models.transforms.resize_uint8`):
    two separable passes in 22-bit fixed point, each rounded to 0..255, vertical first when the
    height shrinks by more than twice as many pixels as the width (Pillow >= 13). Returned as float32.

    `window` (static side, px): work on that square of the frame around the crop, not on whole
    rows and columns (the cost of the gathers scales with it). The result is the same bits for
    every crop that fits in the window; a larger crop is cut to it (the program reports the
    crops' extent, and `run` reruns with a window that holds them)."""
    return crop_resize_faces(frame[None], jnp.zeros(1, jnp.int32), box[None], size, window)[0]


def crop_resize_faces(frames, frame_of, boxes, size: int, window: int | None = None):
    """`crop_resize` of faces (F,): face i is crop corners `boxes[i]` of frame `frame_of[i]`
    (traced) of frames (N, H, W, 3) -> (F, size, size, 3) float32. Each face's window is sliced
    from the batch directly (no face copies a whole frame). The faces' first passes are computed
    once (`materialized`: fused into the second pass's gathers, XLA:CPU recomputed them for each
    tap), then their second passes. The horizontal pass runs first; the vertical-first order (a
    tall crop, rare for faces) is computed only when some face of the batch needs it, and a batch
    whose crops are all at most `size` px reads 3 taps per output pixel, not the window's largest
    crop's (5 for 256 px to 224): the weights past the triangle are zeros either way."""
    _, fh, fw, c = frames.shape
    side = max(fh, fw) if window is None else window
    # a square window (frames smaller than it padded, outside any crop)
    frames = jnp.pad(frames, ((0, 0), (0, max(side - fh, 0)), (0, max(side - fw, 0)), (0, 0)))
    y0 = jnp.clip(boxes[:, 1], 0, frames.shape[1] - side).astype(jnp.int32)
    x0 = jnp.clip(boxes[:, 0], 0, frames.shape[2] - side).astype(jnp.int32)
    window_of = lambda i, y, x: lax.dynamic_slice(frames, (i, y, x, 0), (1, side, side, c))[0]  # noqa: E731
    x = jax.vmap(window_of)(frame_of, y0, x0)
    corners = jnp.minimum(boxes - jnp.stack([x0, y0, x0, y0], axis=1).astype(boxes.dtype), side)
    x1, y1, x2, y2 = (corners[:, i] for i in range(4))
    in_h, in_w = y2 - y1, x2 - x1
    resample = jax.vmap(_resample, in_axes=(0, None, 0, 0))

    def passes(first, second):  # (axis, taps, weights) of each pass, in order
        return resample(materialized(resample(x, *first)), *second)

    def crops(k: int, shrinking: bool):
        taps = jax.vmap(lambda lo, hi: _taps(lo, hi, side, size, k))
        rows, cols = taps(y1, y2), taps(x1, x2)
        horizontal_first = passes((1, *cols), (0, *rows))
        if not shrinking:  # Pillow's vertical-first order needs a height that shrinks
            return horizontal_first
        vertical_first = (size < in_h) & (in_h - size > 2 * (in_w - size))
        return lax.cond(vertical_first.any(),
                        lambda: jnp.where(vertical_first[:, None, None, None], passes((0, *rows), (1, *cols)),
                                          horizontal_first),
                        lambda: horizontal_first)

    k = math.ceil(2 * max(side / size, 1.0)) + 2  # enough taps for the largest crop the window holds
    # a batch of crops no larger than `size` (e.g. the faces of a 360p frame) reads fewer taps
    out = lax.cond(((in_h <= size) & (in_w <= size)).all(), lambda: crops(_UP_TAPS, False),
                   lambda: crops(k, True))
    return out.astype(jnp.float32)


def make_program(detector: nnx.Module, backbones: Sequence[Backbone], weights: Sequence[float], *,
                 max_faces: int = MAX_FACES, with_embedding: bool = False, detect_size: int | None = None,
                 devices: Sequence[jax.Device] | None = None) -> Callable:
    """`fn(frames uint8 (B, H, W, 3), budget, window=None) -> dict` of per-face outputs, jitted
    (static: `budget`, the faces per batch that go through the models, and `window`, the side of
    the square of frame around each face that its crop and resize read; None: the frame):

    boxes (B, F, 4) px, det_scores (B, F), valid (B, F) bool, probs (B, F, K) blended softmax,
    va (B, F, 2) if every model has valence/arousal, and with_embedding the first model's
    embedding (B, F, D) and raw scores (B, F, C); found (): the budget the batch needs, its
    faces, of which the first `budget` (in frame order) were run (rerun with a larger budget, at
    most B * F, when found > budget); extent (2,): the largest crop height and width of the
    faces run (rerun with a window that holds it when it exceeds `window`).
    Rows that are not valid are zeros. The weights are compile-time constants, as in
    `models.inference.make_forward`. `detect_size`: the detector's finer view (`detection.detect`'s
    `size`; None: the variant's).

    With several `devices` (GPUs, or one CPU device per core: `hsemo_jax.runtime`), a batch whose
    frames and budget divide by their count is split over them, each device running the whole
    program on its frames with its share of the budget (found is then the count times the most
    faces one device had); other batches run on the first."""
    weights = [float(w) for w in weights]
    with_va = all(b.with_va for b in backbones)
    nets = []
    for b in backbones:
        b.module.eval()
        graphdef, state = nnx.split(b.module)
        nets.append((graphdef, jax.tree.map(np.asarray, state)))
    detector.eval()
    det_graphdef, det_state = nnx.split(detector)
    det_state = jax.tree.map(np.asarray, det_state)

    def program(frames, budget: int, window: int | None = None):
        n, h, w, _ = frames.shape
        found = detect(nnx.merge(det_graphdef, det_state), frames, max_faces=max_faces, size=detect_size)
        corners, nonempty = crop_boxes(found.boxes, h, w)
        valid = found.valid & nonempty
        flat_valid = valid.reshape(-1)
        order = jnp.argsort(~flat_valid, stable=True)[:budget]  # valid faces first, in frame order
        run = flat_valid[order]
        frame_of = order // max_faces
        box_of = corners.reshape(-1, 4)[order]
        inputs = {}  # models with one input size and normalization share their crops
        probs, va, extra = 0.0, 0.0, {}
        for i, (b, (graphdef, state), wt) in enumerate(zip(backbones, nets, weights)):
            key = (b.input_size, b.mean, b.std)
            if key not in inputs:
                crops = crop_resize_faces(frames, frame_of, box_of, b.input_size, window)
                inputs[key] = (crops / 255.0 - jnp.asarray(b.mean, jnp.float32)) / jnp.asarray(b.std, jnp.float32)
            m = nnx.merge(graphdef, state)
            emb = m.features(inputs[key])
            scores = m.head(emb).astype(jnp.float32)
            probs = probs + wt * jax.nn.softmax(scores[:, :b.num_classes], axis=-1)
            if with_va:
                va = va + wt * scores[:, b.num_classes:b.num_classes + 2]
            if i == 0 and with_embedding:
                extra = {"embedding": emb.astype(jnp.float32), "scores": scores}

        def scatter(x):  # (budget, ...) rows of the faces run -> (B, F, ...), zeros elsewhere
            x = jnp.where(run.reshape(-1, *([1] * (x.ndim - 1))), x, 0)
            full = jnp.zeros((n * max_faces, *x.shape[1:]), x.dtype).at[order].set(x)
            return full.reshape(n, max_faces, *x.shape[1:])

        ran = scatter(run).astype(bool)
        out = {"boxes": jnp.where(ran[..., None], found.boxes, 0.0),
               "det_scores": jnp.where(ran, found.scores, 0.0), "valid": ran,
               "probs": scatter(probs), "found": flat_valid.sum(),
               "extent": jnp.max(jnp.where(run[:, None], box_of[:, 3:1:-1] - box_of[:, 1::-1], 0), axis=0)}
        if with_va:
            out["va"] = scatter(va)
        out.update({k: scatter(v) for k, v in extra.items()})
        return out

    # CPU: the compiler options the models' own forwards use (models.inference.make_forward)
    single = jax.jit(program, static_argnums=(1, 2), compiler_options=runtime.compiler_options())
    if devices is None or len(devices) == 1:
        return single
    n = len(devices)
    mesh = Mesh(np.array(devices), ("data",))

    def split(frames, budget: int, window: int | None = None):
        def per_device(f):
            out = program(f, budget // n, window)
            return out | {"found": out["found"][None], "extent": out["extent"][None]}

        out = jax.shard_map(per_device, mesh=mesh, in_specs=P("data"), out_specs=P("data"))(frames)
        return out | {"found": out["found"].max() * n, "extent": out["extent"].max(axis=0)}

    split = jax.jit(split, static_argnums=(1, 2), compiler_options=runtime.compiler_options())
    batches = NamedSharding(mesh, P("data"))

    def call(frames, budget: int, window: int | None = None):
        if frames.shape[0] % n or budget % n:
            return single(frames, budget, window)
        return split(jax.device_put(frames, batches), budget, window)

    return call


@functools.lru_cache(maxsize=8)
def load_detector(name: str) -> nnx.Module:
    from hsemo_jax.convert.blazeface import load_blazeface

    return load_blazeface(name)


def run(source, program: Callable, *, batch_size: int, max_faces: int, tracker, make_row: Callable,
        on_rows: Callable, progress, au_head: Callable | None = None):
    """Frames of `source` through `program` (see `make_program`), `batch_size` frames per call.

    Batch k + 1 is dispatched before the results of batch k are read (JAX dispatches
    asynchronously), and frames are decoded in a background thread, so decoding, tracking and
    writing overlap the device's work. Consecutive frames of one size share a batch (the last one,
    or one before a size change, is padded with black frames). Returns (rows, skipped, frames):
    rows as `make_row(frame, box, track_id)` makes them, with "probs", "va" and "au" filled in,
    in frame order; `on_rows(rows)` gets each batch's rows.
    """
    from hsemo_jax.predict.video import Skipped, threaded_map

    rows: list[dict] = []
    skipped: list = []
    frames_seen = 0
    pending: list = []  # frames of the batch being filled
    in_flight = None  # (frames, array, budget, outputs) dispatched, not yet read

    # faces per batch through the models (`Budget`), and the side of the window each crop reads,
    # which grows (and stays) when a crop needs more; both start where this program's last run ended,
    # and neither changes results
    per_frame, side = _HINTS.get(id(program), (1, WINDOW))
    budget = Budget(batch_size, max_faces, per_frame)
    sequence = [None]  # of the last frame tracked

    def dispatch(frames):
        arr = np.stack([f.rgb for f in frames])
        if len(frames) < batch_size:
            arr = np.concatenate([arr, np.zeros((batch_size - len(frames), *arr.shape[1:]), np.uint8)])
        return frames, arr, (budget.value, side), program(arr, budget.value, side)

    def collect(entry):
        nonlocal side
        frames, arr, used, out = entry
        out = jax.device_get(out)
        found, extent = int(out["found"]), int(out["extent"].max())
        rerun = budget.after(found, used[0])
        if rerun or extent > used[1]:
            # more faces than this batch's budget, or a crop larger than its window: rerun with room
            # for them (one compile each: window WINDOW times 2, 4, ...)
            while side < extent:
                side *= 2
            out = jax.device_get(program(arr, budget.value, side))
        au = None
        if au_head is not None:
            emb, scores = (out[k].reshape(-1, out[k].shape[-1]) for k in ("embedding", "scores"))
            au = au_head(emb, scores).reshape(len(arr), max_faces, -1)
        new = []
        for i, frame in enumerate(frames):
            if frame.sequence != sequence[0]:  # another video or picture: no track continues into it
                tracker.end_tracks()
                sequence[0] = frame.sequence
            keep = out["valid"][i]
            boxes = out["boxes"][i][keep].astype(np.float32)
            ids = tracker.update(boxes, frame.index)
            if not len(boxes):
                new.append(make_row(frame, None, -1))
            for j, slot in enumerate(np.flatnonzero(keep)):
                row = make_row(frame, boxes[j], int(ids[j]))
                row["probs"] = out["probs"][i, slot].astype(np.float64)
                row["va"] = out["va"][i, slot].astype(np.float64) if "va" in out else None
                row["au"] = None if au is None else au[i, slot]
                new.append(row)
        rows.extend(new)
        on_rows(new)
        progress.update(len(frames))

    def submit():
        nonlocal in_flight, pending
        entry = dispatch(pending)
        pending = []
        if in_flight is not None:
            collect(in_flight)
        in_flight = entry

    for item in threaded_map(lambda x: x, source):
        if isinstance(item, Skipped):
            skipped.append(item)
            print(f"skipped {item.source}: {item.reason}", file=sys.stderr)
            progress.update(1)  # in the total: the bar ends at 100%
            continue
        frames_seen += 1
        if pending and item.rgb.shape != pending[0].rgb.shape:
            submit()
        pending.append(item)
        if len(pending) == batch_size:
            submit()
    if pending:
        submit()
    if in_flight is not None:
        collect(in_flight)
    _HINTS[id(program)] = (budget.value // batch_size, side)
    return rows, skipped, frames_seen



_PROGRAMS: dict = {}


def program_for(detector_name: str, models: Sequence, weights: Sequence[float], with_va: bool,
                with_embedding: bool = False, max_faces: int = MAX_FACES, detect_size: int | None = None) -> Callable:
    """`make_program` for `pipeline.load_models` models, built once per process and set of models
    (later runs, e.g. repeated `Recognizer.predict` calls, reuse the compiled programs)."""
    key = (detector_name, tuple(id(m.module) for m in models), tuple(float(w) for w in weights), with_va,
           with_embedding, max_faces, detect_size)
    if key not in _PROGRAMS:
        backbones = [Backbone.of(m.module, with_va) for m in models]
        _PROGRAMS[key] = make_program(load_detector(detector_name), backbones, weights, max_faces=max_faces,
                                      with_embedding=with_embedding, detect_size=detect_size,
                                      devices=jax.local_devices())
    return _PROGRAMS[key]
