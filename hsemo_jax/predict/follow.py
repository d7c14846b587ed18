"""Detection that follows face tracks: the full-frame search runs on every `every`-th frame only;
on the frames between, and for the tracks a full search missed, each live track's face is looked
for near its last box (the detector's `near`), which costs a small fraction of a full search.

A face that enters the picture between two full searches is found at the next one (at most
`every - 1` frames late); a tracked face is searched for on every frame. `every=1` is plain
per-frame detection, as the original pipelines do.
"""
from __future__ import annotations

import numpy as np

from hsemo_jax.errors import InputError
from hsemo_jax.predict.track import IoUTracker, iou


class FollowingDetector:
    """`(rgb, frame_index) -> (boxes (N, 4), track ids (N,))`, calls in frame order."""

    def __init__(self, detector, every: int = 1, tracker: IoUTracker | None = None):
        if every < 1:
            raise InputError(f"detect every N frames: N must be a whole number >= 1, got {every}")
        self.detector = detector
        self.every = every if hasattr(detector, "near") else 1
        self.tracker = tracker or IoUTracker()
        self.calls = 0

    def new_sequence(self) -> None:
        """The next frame starts another video or picture: no track continues into it."""
        self.tracker.end_tracks()
        self.calls = 0

    def __call__(self, rgb: np.ndarray, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
        full = self.calls % self.every == 0
        self.calls += 1
        boxes = self.detector(rgb) if full else np.zeros((0, 4), np.float32)
        if self.every > 1:
            boxes = self._add_followed(rgb, boxes, frame_index)
        return boxes, self.tracker.update(boxes, frame_index)

    def _add_followed(self, rgb, boxes_n4: np.ndarray, frame_index: int) -> np.ndarray:
        """`boxes_n4` plus, for each live track none of them matches, the face found near its
        last box that overlaps it most (IoU >= the tracker's min_iou), unless that face is one of
        the boxes already there."""
        min_iou = self.tracker.min_iou
        last = self.tracker.live_boxes(frame_index)
        if len(last) and len(boxes_n4):
            last = last[iou(last, boxes_n4).max(axis=1) < min_iou]
        if not len(last):
            return boxes_n4
        for prev, found in zip(last, self.detector.near(rgb, last)):
            if not len(found):
                continue
            overlap = iou(prev[None], found)[0]
            best = int(np.argmax(overlap))
            if overlap[best] < min_iou:
                continue
            if len(boxes_n4) and iou(found[best][None], boxes_n4).max() >= 0.5:
                continue
            boxes_n4 = np.concatenate([boxes_n4, found[best][None]]).astype(np.float32)
        return boxes_n4
