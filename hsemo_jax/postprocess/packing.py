"""Ragged per-video sequences <-> one padded array.

Input is "flat": N rows of scores with a video id and a real frame number per row (frames may have
gaps: frames without a face or without a label). `pack` lays the rows out as (B lanes x T slots):

* `lanes=None` (default): one video per lane, B = number of videos, T = the longest video
  (the (videos x T_max x C) layout);
* `lanes=L`: videos are bin-packed into L lanes (longest first, onto the least-filled lane), several
  videos per lane one after another; this wastes far less padding on uneven videos and gives each
  device an equal share. Segment ids keep videos apart either way.

Every slot carries its segment id (`seg_bt`, -1 = padding), its real frame number (`frames_bt`) and
the input row it came from (`row_bt`, -1 = no row). `unpack` maps a (B, T, C) result back to the N
input rows in their original order.

`pack_dense` builds the same layout over *every* frame number of each video (first..last, or
1..last), with `present_bt` marking frames that have an input row, and the linear-interpolation
plan (spec §4.4) for the frames that do not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hsemo_jax import checks
from hsemo_jax.errors import InputError


@dataclass(frozen=True)
class Packed:
    """A (B, T) layout of ragged sequences. All arrays are numpy; shapes in names.

    seg_bt:     int32 segment (video) index into `videos`, -1 = padding
    frames_bt:  int32 real frame number (0 at padding)
    row_bt:     int32 input row in this slot, -1 = padding or (dense) frame without a row
    present_bt: bool, slot holds an input row
    left_ok_bt: bool, slot may be used as a *left* neighbour (False only for input row 0; see
                `smoothing` for the notebook quirk this serves)
    lane_n, slot_n: int32 (N,) position of every input row
    lengths_s:  int32 slots per segment
    videos:     video id of each segment
    interp_prev_bt, interp_next_bt, interp_w_bt: dense layouts only: every slot's value is
                w * row[prev] + (1 - w) * row[next] (rows of the flat input).
    """

    seg_bt: np.ndarray
    frames_bt: np.ndarray
    row_bt: np.ndarray
    present_bt: np.ndarray
    left_ok_bt: np.ndarray
    lane_n: np.ndarray
    slot_n: np.ndarray
    lengths_s: np.ndarray
    videos: tuple
    interp_prev_bt: np.ndarray | None = None
    interp_next_bt: np.ndarray | None = None
    interp_w_bt: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.seg_bt.shape

    @property
    def mask_bt(self) -> np.ndarray:
        """Slots that belong to a segment (not padding)."""
        return self.seg_bt >= 0

    def pack_values(self, values_nc) -> np.ndarray:
        """Scatter flat (N, C) values into (B, T, C); zeros where there is no input row."""
        v = np.asarray(values_nc)
        squeeze = v.ndim == 1
        v = v[:, None] if squeeze else v
        if v.shape[0] != self.lane_n.shape[0]:
            raise InputError(f"length mismatch: values have {v.shape[0]} rows, the layout {self.lane_n.shape[0]}")
        out = np.zeros(self.shape + v.shape[1:], dtype=v.dtype)
        out[self.lane_n, self.slot_n] = v
        return out[..., 0] if squeeze else out

    def unpack(self, values_btc) -> np.ndarray:
        """Gather (B, T, ...) back to the N input rows, original order."""
        return np.asarray(values_btc)[self.lane_n, self.slot_n]


def _encode_videos(video_ids, n):
    vids = np.asarray(video_ids)
    if vids.ndim != 1 or len(vids) != n:
        raise InputError(f"length mismatch: {n} frames but {np.shape(vids)} video ids")
    uniq, first_pos, codes = np.unique(vids, return_index=True, return_inverse=True)
    order = np.argsort(first_pos, kind="stable")  # videos in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[codes].astype(np.int64)


def _check_frames(frames, n):
    f = np.asarray(frames)
    if f.ndim != 1 or len(f) != n:
        raise InputError(f"length mismatch: {n} rows but frames has shape {f.shape}")
    return checks.as_labels(f, "frames", low=0, high=np.iinfo(np.int32).max).astype(np.int64)


def _segments(video_ids, frames, segments: str):
    """Return (videos, seg_n, frames_n, order) with rows grouped by segment."""
    n = len(frames)
    if n == 0:
        raise InputError("no rows (empty input)")
    f = _check_frames(frames, n)
    names, code = _encode_videos(video_ids, n)
    # duplicates (video, frame)
    key = code * (int(f.max()) + 1) + f
    srt = np.argsort(key, kind="stable")
    dup = np.nonzero(key[srt][1:] == key[srt][:-1])[0]
    if dup.size:
        r = int(srt[dup[0] + 1])
        raise InputError(f"row {r}: duplicate frame {int(f[r])} of video {names[code[r]].item()!r}")
    if segments == "video":
        order = np.lexsort((f, code))  # by video (first appearance), then frame
        seg = code[order]
        videos = tuple(names.tolist())
    elif segments == "runs":
        # maximal runs of equal video id in row order, row order kept inside a run
        order = np.arange(n)
        starts = np.r_[True, code[1:] != code[:-1]]
        seg = np.cumsum(starts) - 1
        videos = tuple(names[code[starts]].tolist())
    else:
        raise InputError(f"segments must be 'video' or 'runs', got {segments!r}")
    return videos, seg, f, order


def _assign_lanes(lengths: np.ndarray, lanes: int | None):
    """Lane and offset of every segment; returns (lane_s, offset_s, B, T)."""
    s = len(lengths)
    if lanes is None:
        return np.arange(s), np.zeros(s, dtype=np.int64), s, int(lengths.max())
    if lanes < 1:
        raise InputError(f"lanes must be >= 1, got {lanes}")
    load = np.zeros(lanes, dtype=np.int64)
    lane_s = np.zeros(s, dtype=np.int64)
    off_s = np.zeros(s, dtype=np.int64)
    for i in np.argsort(-lengths, kind="stable"):
        j = int(np.argmin(load))
        lane_s[i], off_s[i] = j, load[j]
        load[j] += lengths[i]
    return lane_s, off_s, lanes, int(load.max())


def _round_up(t: int, multiple: int) -> int:
    return -(-t // multiple) * multiple


def pack(video_ids: Sequence, frames: Sequence[int], *, lanes: int | None = None, segments: str = "video",
         multiple: int = 8) -> Packed:
    """Layout for flat rows (video_ids (N,), frames (N,)).

    segments="video": one segment per video, rows sorted by frame number; "runs": one segment per
    maximal run of equal video ids in row order, row order kept (the notebook's view of a file).
    T is rounded up to a multiple of `multiple` so that similar inputs share one compilation.
    Errors: length mismatch, negative/non-integer frames, duplicate (video, frame), empty input.
    """
    videos, seg, f, order = _segments(video_ids, frames, segments)
    n = len(f)
    lengths = np.bincount(seg, minlength=len(videos))
    lane_s, off_s, b, t = _assign_lanes(lengths, lanes)
    t = _round_up(max(t, 1), multiple)
    seg_start = np.r_[0, np.cumsum(lengths)[:-1]]
    pos_in_seg = np.arange(n) - seg_start[seg]
    lane_sorted = lane_s[seg]
    slot_sorted = off_s[seg] + pos_in_seg
    lane_n = np.empty(n, np.int64)
    slot_n = np.empty(n, np.int64)
    lane_n[order], slot_n[order] = lane_sorted, slot_sorted
    seg_bt = np.full((b, t), -1, np.int32)
    frames_bt = np.zeros((b, t), np.int32)
    row_bt = np.full((b, t), -1, np.int32)
    seg_bt[lane_sorted, slot_sorted] = seg
    frames_bt[lane_sorted, slot_sorted] = f[order]
    row_bt[lane_sorted, slot_sorted] = order
    return Packed(
        seg_bt=seg_bt, frames_bt=frames_bt, row_bt=row_bt, present_bt=row_bt >= 0,
        left_ok_bt=row_bt != 0, lane_n=lane_n.astype(np.int32), slot_n=slot_n.astype(np.int32),
        lengths_s=lengths.astype(np.int32), videos=videos,
    )


def pack_dense(video_ids: Sequence, frames: Sequence[int], *, start: str | int = "first",
               last_frame: dict | None = None, lanes: int | None = None, multiple: int = 8) -> Packed:
    """Layout over every frame number of every video, with a gap-interpolation plan.

    Each video covers frames first..last of its rows (start="first") or start..last (start=int,
    e.g. 1 for the ABAW-6 writers, spec §4.4); `last_frame[video]` extends (never shortens) the end.
    Frames with an input row are `present`; a missing frame f between rows at frames p < f < n gets
    w = 1 - (f - p) / (n - p), value = w * y_p + (1 - w) * y_n; frames before the first row copy it,
    frames after the last row copy the last. `lane_n, slot_n` locate the input rows.
    """
    videos, seg, f, order = _segments(video_ids, frames, "video")
    fs = f[order]
    nseg = len(videos)
    counts = np.bincount(seg, minlength=nseg)
    seg_start = np.r_[0, np.cumsum(counts)[:-1]]
    first_f = fs[seg_start]
    last_f = fs[seg_start + counts - 1]
    if last_frame:
        unknown = [v for v in last_frame if v not in set(videos)]
        if unknown:
            raise InputError(f"last_frame names unknown video {unknown[0]!r}")
        ext = np.array([last_frame.get(v, 0) for v in videos], dtype=np.int64)
        last_f = np.maximum(last_f, ext)
    if start == "first":
        lo = first_f
    elif isinstance(start, (int, np.integer)):
        lo = np.minimum(first_f, int(start))
    else:
        raise InputError(f"start must be 'first' or an int frame number, got {start!r}")
    lengths = (last_f - lo + 1).astype(np.int64)
    lane_s, off_s, b, t = _assign_lanes(lengths, lanes)
    t = _round_up(max(t, 1), multiple)
    seg_bt = np.full((b, t), -1, np.int32)
    frames_bt = np.zeros((b, t), np.int32)
    row_bt = np.full((b, t), -1, np.int32)
    prev_bt = np.zeros((b, t), np.int32)
    next_bt = np.zeros((b, t), np.int32)
    w_bt = np.zeros((b, t), np.float32)
    lane_n = np.empty(len(f), np.int32)
    slot_n = np.empty(len(f), np.int32)
    for s in range(nseg):
        rows = order[seg_start[s]: seg_start[s] + counts[s]]
        fr = fs[seg_start[s]: seg_start[s] + counts[s]]
        dense = np.arange(lo[s], last_f[s] + 1)
        slots = off_s[s] + np.arange(len(dense))
        lane = lane_s[s]
        seg_bt[lane, slots] = s
        frames_bt[lane, slots] = dense
        at = fr - lo[s]
        row_bt[lane, slots[at]] = rows
        lane_n[rows], slot_n[rows] = lane, slots[at]
        # interpolation: index of the last row with frame <= f and the first with frame >= f
        i_prev = np.clip(np.searchsorted(fr, dense, side="right") - 1, 0, len(fr) - 1)
        i_next = np.clip(np.searchsorted(fr, dense, side="left"), 0, len(fr) - 1)
        fp, fn = fr[i_prev], fr[i_next]
        span = fn - fp
        w = np.where(span > 0, 1.0 - (dense - fp) / np.where(span > 0, span, 1), 1.0)
        before = dense < fr[0]
        i_prev[before], w[before] = 0, 1.0
        prev_bt[lane, slots] = rows[i_prev]
        next_bt[lane, slots] = rows[i_next]
        w_bt[lane, slots] = w
    return Packed(
        seg_bt=seg_bt, frames_bt=frames_bt, row_bt=row_bt, present_bt=row_bt >= 0,
        left_ok_bt=np.ones((b, t), bool), lane_n=lane_n, slot_n=slot_n,
        lengths_s=lengths.astype(np.int32), videos=videos,
        interp_prev_bt=prev_bt, interp_next_bt=next_bt, interp_w_bt=w_bt,
    )
