"""Compound expressions (C-EXPR, spec §4.5 and §5): 7 classes from 8 AffectNet probabilities.

Pipeline: per face, softmax of the 8 expression logits -> c_k = M(p[a_k], p[b_k]) for the 7 class
pairs (M = arithmetic, geometric or harmonic mean) -> per frame, aggregate the faces (max, as the
notebook; or mean, first face, largest face) -> per video, interpolate frames without a face and
smooth (box, or the symmetric Gaussian over frames with a face) -> argmax. With no labels, the
selection criterion is KL(prior || predicted class histogram); agreement between runs is
Cohen's kappa (both in `hsemo_jax.metrics`).
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hsemo_jax import checks, metrics
from hsemo_jax.errors import InputError
from hsemo_jax.labels import CEXPR_PAIRS
from hsemo_jax.postprocess.packing import pack_dense
from hsemo_jax.postprocess.smoothing import DENSE, halo_bucket, interpolate_packed, layout_arrays, smooth_packed

#: C-EXPR class frequencies from the C-EXPR paper (ce7#c72) and the prior used by the KL criterion.
CEXPR_FREQS = np.array([14445, 24915, 10780, 10637, 10535, 10112, 8878], dtype=np.float64)
CEXPR_PRIOR = CEXPR_FREQS / CEXPR_FREQS.sum()
MEANS = ("arithmetic", "geometric", "harmonic")


@partial(jax.jit, static_argnames="global_shift")
def _softmax(logits_nc, global_shift: bool):
    shift = logits_nc.max() if global_shift else logits_nc.max(axis=1, keepdims=True)
    e = jnp.exp(logits_nc - shift)
    return e / e.sum(axis=1, keepdims=True)


def logits_to_probs(logits_n8, *, global_shift: bool = True) -> np.ndarray:
    """Row softmax. global_shift=True subtracts the global max first, as `scores2probabs` does
    (a row far below the global max can then underflow to 0/0 = NaN, exactly like the original)."""
    x = checks.as_float(logits_n8, "logits", ndim=2)
    return np.asarray(_softmax(x, global_shift))


@partial(jax.jit, static_argnames="mean")
def _compound(probs_n8, mean: str):
    a = probs_n8[:, CEXPR_PAIRS[:, 0]]
    b = probs_n8[:, CEXPR_PAIRS[:, 1]]
    if mean == "arithmetic":
        return 0.5 * (a + b)
    if mean == "geometric":
        return jnp.sqrt(a * b)
    s = a + b
    return jnp.where(s > 0, 2.0 * a * b / jnp.where(s > 0, s, 1.0), 0.0)


def compound_scores(probs_n8, mean: str = "arithmetic") -> np.ndarray:
    """(N, 8) HSE-order probabilities -> (N, 7) compound scores, M(p[a_k], p[b_k]) per pair.

    mean: "arithmetic" (np.mean), "geometric" (scipy gmean, sqrt(ab)), "harmonic" (hmean, 2ab/(a+b)).
    """
    if mean not in MEANS:
        raise InputError(f"mean must be one of {MEANS}, got {mean!r}")
    p = checks.as_float(probs_n8, "probs", ndim=2)
    if p.shape[1] != 8:
        raise InputError(f"probs: expected 8 columns (HSE order), got {p.shape[1]}")
    if (p < 0).any():
        i, j = np.argwhere(p < 0)[0]
        raise InputError(f"probs row {i}: negative probability {p[i, j]!r}")
    return np.asarray(_compound(p, mean))


def aggregate_faces(scores_mc, frame_keys: Sequence, *, how: str = "max", face_index=None, areas=None):
    """Per-frame aggregate over the faces of each frame.

    scores_mc: (M, C) per-face scores; frame_keys: (M,) hashable frame id of each face (e.g.
    (video, frame)); how: "max" (elementwise max over faces, the notebook), "mean", "first" (the
    face with the smallest `face_index`, default row order; the notebook's face 0 is the first of
    `sorted(os.listdir)`, i.e. lexicographic file order), "largest" (largest `areas`).
    Returns (keys (F,) in order of first appearance, aggregated (F, C)).
    """
    s = checks.as_float(scores_mc, "scores", ndim=2)
    checks.same_length(scores=s, frame_keys=frame_keys)
    keys = list(frame_keys)
    index: dict = {}
    seg = np.fromiter((index.setdefault(k, len(index)) for k in keys), dtype=np.int64, count=len(keys))
    nf = len(index)
    uniq = list(index)
    if how == "max":
        out = jax.ops.segment_max(jnp.asarray(s), seg, num_segments=nf)
    elif how == "mean":
        tot = jax.ops.segment_sum(jnp.asarray(s), seg, num_segments=nf)
        cnt = jax.ops.segment_sum(jnp.ones(len(seg), jnp.float32), seg, num_segments=nf)
        out = tot / cnt[:, None]
    elif how in ("first", "largest"):
        if how == "largest":
            if areas is None:
                raise InputError("how='largest' needs the face areas")
            key = -checks.as_float(areas, "areas", ndim=1)
        else:
            key = np.arange(len(seg), dtype=np.float64) if face_index is None else np.asarray(face_index, np.float64)
        if len(key) != len(seg):
            raise InputError(f"length mismatch: {len(seg)} faces but {len(key)} areas/face indices")
        order = np.lexsort((np.arange(len(seg)), key, seg))  # per frame, best face first
        first = order[np.r_[True, seg[order][1:] != seg[order][:-1]]]
        out = jnp.asarray(s)[first[np.argsort(seg[first])]]
    else:
        raise InputError(f"how must be 'max', 'mean', 'first' or 'largest', got {how!r}")
    return uniq, np.asarray(out)


def video_tracks(scores_fc, video_ids, frames, num_frames: dict, *, method: str = "box", k: int = 0,
                 sigma: float | None = None):
    """Dense per-frame compound scores for every frame 1..num_frames[video] (spec §4.5, ce7#c80-c89).

    scores_fc: (F, C) per detected frame; video_ids, frames: (F,) (1-based frame numbers);
    num_frames: {video: number of extracted frames}. Frames without a face are interpolated (ends
    held). method="box": mean(y[max(i-k, 0) : i+k+1]) over the dense track; "gaussian": for every
    frame, exp(-(j-i)^2 / sigma)-weighted mean over frames j within +-k *that have a face*, falling
    back to the interpolated score when none has; k=0 with "box" returns the interpolated track.
    Returns (scores (M, C), video_ids (M,), frames (M,)).
    """
    y = checks.as_float(scores_fc, "scores", ndim=2)
    checks.same_length(scores=y, video_ids=video_ids, frames=frames)
    vids = set(np.asarray(video_ids).tolist())
    missing = [v for v in num_frames if v not in vids]
    if missing:
        raise InputError(f"video {missing[0]!r} has {num_frames[missing[0]]} frames but no detected face")
    too_short = [v for v in vids if v not in num_frames or num_frames[v] < 1]
    if too_short:
        raise InputError(f"num_frames: no (positive) frame count for video {too_short[0]!r}")
    over = np.nonzero(np.array([f > num_frames[v] for v, f in zip(np.asarray(video_ids).tolist(), frames)]))[0]
    if over.size:
        i = int(over[0])
        raise InputError(f"row {i}: frame {frames[i]} beyond num_frames={num_frames[video_ids[i]]} of video {video_ids[i]!r}")
    if method not in ("box", "gaussian") or int(k) != k or k < 0:
        raise InputError(f"method must be 'box' or 'gaussian' and k an int >= 0; got {method!r}, {k!r}")
    if method == "gaussian" and (sigma is None or sigma <= 0):
        raise InputError(f"sigma must be > 0 for gaussian smoothing, got {sigma!r}")
    lay = pack_dense(video_ids, frames, start=1, last_frame=dict(num_frames))
    arrs = layout_arrays(lay)
    dense = interpolate_packed(jnp.asarray(y), arrs["prev_bt"], arrs["next_bt"], arrs["w_bt"])
    if method == "box":
        out = smooth_packed(dense, lay.seg_bt, lay.frames_bt, lay.mask_bt, lay.left_ok_bt,
                            jnp.zeros(1, jnp.float32), jnp.int32(k), kind=DENSE, ks=(halo_bucket(k),))[0, 0]
    else:
        ones = jnp.ones(lay.shape + (1,), jnp.float32)
        sm = smooth_packed(jnp.concatenate([dense, ones], -1), lay.seg_bt, lay.frames_bt, lay.present_bt,
                           lay.left_ok_bt, jnp.full((1,), 1.0 / sigma, jnp.float32), jnp.int32(k), kind=DENSE,
                           ks=(halo_bucket(k),))[0, 0]
        has_face = sm[..., -1:] > 0.5  # 1 when some frame in the window has a face, else 0
        out = jnp.where(has_face, sm[..., :-1], dense)
    m = lay.mask_bt
    out = np.asarray(out)[m]
    return out, np.asarray(lay.videos, dtype=object)[lay.seg_bt[m]], lay.frames_bt[m].astype(np.int64)


def kl_to_prior(labels, prior=CEXPR_PRIOR) -> float:
    """KL(prior || histogram of predicted compound classes), the C-EXPR selection metric."""
    return metrics.kl_divergence(prior, labels, num_classes=len(prior))
