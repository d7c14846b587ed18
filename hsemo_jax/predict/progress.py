"""Progress of a `predict` run: frames done of the total, percentage, rate and ETA on stderr.

On a terminal: a tqdm bar. Otherwise (a pipe, a log file, a notebook's captured stderr): one plain
line every 10% of the total or every 10 s, whichever comes first, and a last line at the end.
"""
from __future__ import annotations

import sys
import time

import cv2

LOG_EVERY_S = 10.0
LOG_EVERY_FRACTION = 0.1


def frame_total(source) -> int | None:
    """Frames a `FrameSource` will give: the container's frame count for a video (None when it
    does not say), the number of files otherwise."""
    if source.kind != "video":
        return len(source) if hasattr(source, "__len__") else len(source.files)
    cap = cv2.VideoCapture(str(source.files[0]))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()
    return n if n > 0 else None


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """`update(n)` after each n frames, `close()` at the end; does nothing when not `enabled`."""

    def __init__(self, total: int | None, *, enabled: bool = True, desc: str = "predict", file=None):
        self.total, self.enabled, self.desc = total, enabled, desc
        self.file = file or sys.stderr
        self.done, self.t0 = 0, time.perf_counter()
        self._bar = None
        self._logged_at, self._logged_done = self.t0, 0
        if enabled and getattr(self.file, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="frame", file=self.file, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if not self.enabled or n <= 0:
            return
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        step = self.total * LOG_EVERY_FRACTION if self.total else None
        if now - self._logged_at >= LOG_EVERY_S or (step and self.done - self._logged_done >= step):
            self._log(now)

    def _log(self, now: float) -> None:
        elapsed = max(now - self.t0, 1e-9)
        rate = self.done / elapsed
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            head = f"{self.done}/{self.total} frames ({100 * self.done / self.total:.0f}%)"
            tail = f", ETA {_duration(eta)}" if self.done < self.total and rate > 0 else ""
        else:
            head, tail = f"{self.done} frames", ""
        print(f"{self.desc}: {head}, {rate:.1f} frames/s, elapsed {_duration(elapsed)}{tail}",
              file=self.file, flush=True)
        self._logged_at, self._logged_done = now, self.done

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        elif self.done != self._logged_done:
            self._log(time.perf_counter())
        self.enabled = False
