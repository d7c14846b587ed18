"""Greedy IoU tracker: gives each face a track id that persists across frames."""
from __future__ import annotations

import numpy as np


def iou(a_n4: np.ndarray, b_m4: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes (x1, y1, x2, y2): (N, 4) x (M, 4) -> (N, M)."""
    tl = np.maximum(a_n4[:, None, :2], b_m4[None, :, :2])
    br = np.minimum(a_n4[:, None, 2:], b_m4[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=-1)
    area_a = np.prod(a_n4[:, 2:] - a_n4[:, :2], axis=-1)
    area_b = np.prod(b_m4[:, 2:] - b_m4[:, :2], axis=-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


class IoUTracker:
    """Match each frame's boxes to live tracks by highest IoU (>= `min_iou`), greedily; unmatched
    boxes start new tracks; a track not seen for more than `max_gap` frames ends."""

    def __init__(self, min_iou: float = 0.3, max_gap: int = 15):
        self.min_iou, self.max_gap = min_iou, max_gap
        self.tracks: dict[int, tuple[np.ndarray, int]] = {}  # id -> (last box, last frame)
        self.next_id = 0

    def _alive(self, frame: int) -> dict[int, tuple[np.ndarray, int]]:
        return {t: (b, f) for t, (b, f) in self.tracks.items() if frame - f <= self.max_gap}

    def end_tracks(self) -> None:
        """End every track (a new sequence begins): the next boxes start new tracks, with new ids."""
        self.tracks = {}

    def live_boxes(self, frame: int) -> np.ndarray:
        """Last boxes (T, 4) of the tracks still alive at `frame`."""
        boxes = [b for b, _ in self._alive(frame).values()]
        return np.stack(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32)

    def update(self, boxes_n4: np.ndarray, frame: int) -> np.ndarray:
        """Track ids (N,) for this frame's boxes."""
        self.tracks = self._alive(frame)
        ids = np.full(len(boxes_n4), -1, np.int64)
        live = list(self.tracks)
        if live and len(boxes_n4):
            scores = iou(boxes_n4, np.stack([self.tracks[t][0] for t in live]))
            for flat in np.argsort(-scores, axis=None):
                i, j = divmod(int(flat), len(live))
                if scores[i, j] < self.min_iou:
                    break
                if ids[i] == -1 and live[j] is not None:
                    ids[i], live[j] = live[j], None
        for i in range(len(boxes_n4)):
            if ids[i] == -1:
                ids[i], self.next_id = self.next_id, self.next_id + 1
            self.tracks[int(ids[i])] = (boxes_n4[i], frame)
        return ids
