"""Per-video sequence packing: frames grouped by video, in frame order, cut into fixed windows.

For temporal post-processing and sequence heads over per-frame features or scores::

    idx, mask = pack_sequences(videos, frames, seq_len=64)     # (W, 64) int64, (W, 64) bool
    windows = gather(arrays, idx)                              # each (N, ...) -> (W, 64, ...)
    src = SequenceSource(arrays, "video", "frame", seq_len=64) # grain-ready random access

A window never mixes two videos; the last window of a video is padded (index -1, mask False,
zero values).
"""
from __future__ import annotations

import numpy as np

from hsemo_jax.errors import InputError


def pack_sequences(videos, frames, seq_len: int, stride: int | None = None):
    """Windows of row indices.

    Args:
      videos: (N,) video ids (str/bytes/int); rows of one video need not be contiguous.
      frames: (N,) frame numbers; rows are sorted by frame within each video (stable).
      seq_len: window length L. stride: step between window starts (default L: no overlap).
    Returns:
      indices (W, L) int64 (-1 = padding) and mask (W, L) bool; videos in order of first
      appearance, windows in time order.
    """
    videos = np.asarray(videos)
    frames = np.asarray(frames)
    if videos.shape != frames.shape or videos.ndim != 1:
        raise InputError(f"videos and frames must be (N,) arrays of one length, got {videos.shape} "
                         f"and {frames.shape}")
    if seq_len < 1 or (stride is not None and stride < 1):
        raise InputError(f"seq_len and stride must be positive, got {seq_len} and {stride}")
    stride = stride or seq_len
    _, first, inverse = np.unique(videos, return_index=True, return_inverse=True)
    video_rank = np.argsort(np.argsort(first))[inverse]  # order of first appearance
    order = np.lexsort((np.arange(len(frames)), frames, video_rank))
    bounds = np.flatnonzero(np.diff(video_rank[order])) + 1
    windows = []
    for rows in np.split(order, bounds) if len(order) else []:
        start = 0
        while start < len(rows):  # until a window reaches the video's last frame
            w = np.full(seq_len, -1, np.int64)
            chunk = rows[start:start + seq_len]
            w[:len(chunk)] = chunk
            windows.append(w)
            if start + seq_len >= len(rows):
                break
            start += stride
    indices = np.stack(windows) if windows else np.zeros((0, seq_len), np.int64)
    return indices, indices >= 0


def gather(arrays: dict, indices: np.ndarray) -> dict:
    """Per-row arrays (N, ...) -> windows (W, L, ...), zeros where ``indices`` is -1."""
    out = {}
    safe = np.maximum(indices, 0)
    pad = indices < 0
    for k, v in arrays.items():
        v = np.asarray(v)
        g = v[safe]
        g[pad] = np.zeros((), v.dtype)
        out[k] = g
    return out


class SequenceSource:
    """Random-access windows over per-row arrays: ``src[w] -> {k: (L, ...), "mask": (L,)}``."""

    def __init__(self, arrays: dict, video_key: str, frame_key: str, seq_len: int,
                 stride: int | None = None):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.indices, self.mask = pack_sequences(self.arrays[video_key], self.arrays[frame_key],
                                                 seq_len, stride)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, w: int) -> dict:
        out = gather(self.arrays, self.indices[w][None])
        out = {k: v[0] for k, v in out.items()}
        out["mask"] = self.mask[w]
        out["row"] = self.indices[w]
        return out
