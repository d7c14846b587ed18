"""Frame sources: a video file, an image, a folder of images, or a glob, as one stream of RGB frames.

Videos are decoded by OpenCV in a background thread into a bounded queue, so decoding overlaps
inference and memory stays constant on long videos. A video that ends before the frame count its
header declares leaves a note in `FrameSource.notes`; what the native decoders (FFmpeg, libjpeg)
print meanwhile is held back by `decoder_messages` for one summary.
"""
from __future__ import annotations

import contextlib
import glob as globlib
import os
import queue
import re
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from hsemo_jax.errors import InputError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


@dataclass
class Frame:
    index: int  # frame number: 0-based in a video; from the file name in ABAW-style folders
    time: float | None  # seconds from the start (videos only)
    rgb: np.ndarray  # (H, W, 3) uint8
    source: str  # the file it came from
    sequence: str  # frames of one sequence may show the same face: the video, an ABAW frame folder, or the image


@dataclass
class Skipped:
    source: str
    reason: str


class FrameSource:
    """Iterate `Frame`s (and `Skipped` entries for unreadable images in a folder or glob)."""

    def __init__(self, spec: str, queue_size: int = 32):
        self.spec = spec
        self.queue_size = queue_size
        self.notes: list[str] = []  # what the user should hear about the input once it is read
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
            videos = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_EXTS)
            if not files and videos:  # a folder is the frames of one run; videos are given one by one or by a glob
                raise InputError(f"{spec}: a folder is read as image frames and this one holds {len(videos)} "
                                 f"video(s) ({videos[0].name}, ...); give them as files or a quoted glob "
                                 f"('{path / ('*' + videos[0].suffix)}')")
            if not files:
                raise InputError(f"{spec}: folder contains no images ({', '.join(sorted(IMAGE_EXTS))})")
            self.kind, self.files = "images", files
        elif path.is_file():
            if path.suffix.lower() in IMAGE_EXTS:
                self.kind, self.files = "images", [path]
            else:
                self.kind, self.files = "video", [path]
        elif any(c in spec for c in "*?["):
            matches = sorted(Path(p) for p in globlib.glob(spec))
            files = [p for p in matches if p.suffix.lower() in IMAGE_EXTS]
            videos = [p for p in matches if p.suffix.lower() in VIDEO_EXTS]
            if not files and videos:  # `hsemo-jax predict` makes one run of each (`predict.inputs.expand`)
                raise InputError(f"{spec}: the pattern matches {len(videos)} video(s) ({videos[0]}, ...), not images; "
                                 "give one video at a time (the command line runs a glob of videos one by one)")
            if not files:
                raise InputError(f"{spec}: the pattern matches no images")
            self.kind, self.files = "images", files
        else:
            raise InputError(f"{spec}: no such file, folder or glob pattern")

    def __iter__(self) -> Iterator[Frame | Skipped]:
        if self.kind == "video":
            yield from self._video(self.files[0])
        else:
            yield from self._images(self.files)

    @staticmethod
    def _images(files) -> Iterator[Frame | Skipped]:
        # ABAW `cropped_aligned/<video>/00001.jpg`: the number in the name is the frame number and
        # the folder the video; other images are unrelated pictures, each a sequence of its own.
        numbered = all(re.fullmatch(r"\d+", f.stem) for f in files)
        for i, f in enumerate(files):
            bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if bgr is None:
                yield Skipped(str(f), "unreadable or corrupt image")
                continue
            yield Frame(int(f.stem) if numbered else i, None, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), str(f),
                        str(f.parent) if numbered else str(f))

    def _video(self, path: Path) -> Iterator[Frame]:
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise InputError(f"{path}: cannot open as a video (unsupported format or corrupt file)")
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        q: queue.Queue = queue.Queue(maxsize=self.queue_size)
        stop = threading.Event()

        def decode():
            try:
                i = 0
                while not stop.is_set():
                    ok, bgr = cap.read()
                    if not ok:
                        break
                    t = i / fps if fps > 0 else None
                    frame = Frame(i, t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), str(path), str(path))
                    while not stop.is_set():
                        try:
                            q.put(frame, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    i += 1
            finally:
                cap.release()
                q.put(None)

        thread = threading.Thread(target=decode, name="hsemo-decode", daemon=True)
        thread.start()
        n = 0
        try:
            while (frame := q.get()) is not None:
                n += 1
                yield frame
        finally:
            stop.set()
            while thread.is_alive():  # drain so the decoder can see `stop` and exit
                try:
                    q.get(timeout=0.1)
                except queue.Empty:
                    pass
        if n == 0:
            raise InputError(f"{path}: no frames could be decoded (empty or corrupt video)")
        if declared - n > max(1, declared // 100):  # a count estimated from the duration may be off by a little
            self.notes.append(f"{path}: decoded {n} of the {declared} frames its header declares; "
                              "the file may be truncated or damaged")


@contextlib.contextmanager
def decoder_messages() -> Iterator[list[str]]:
    """Hold back what native code (FFmpeg, libjpeg, OpenCV's log) prints on the process's standard
    error, file descriptor 2, during the block; the yielded list receives those lines when the
    block ends. Python's `sys.stderr` keeps writing where it did."""
    lines: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:  # no standard error to hold back
        yield lines
        return
    python_stderr, swapped = sys.stderr, None
    with tempfile.TemporaryFile() as sink:
        try:
            if _writes_to_fd2(python_stderr):
                python_stderr.flush()
                swapped = os.fdopen(os.dup(saved), "w", buffering=1, encoding=python_stderr.encoding,
                                    errors="backslashreplace")
                sys.stderr = swapped
            os.dup2(sink.fileno(), 2)
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if swapped is not None:
                sys.stderr = python_stderr
                swapped.close()
            sink.seek(0)
            lines.extend(line for line in sink.read().decode("utf-8", "replace").splitlines() if line.strip())


def _writes_to_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # pytest's capture, StringIO: not a file descriptor
        return False


def threaded_map(fn, items, queue_size: int = 8) -> Iterator:
    """`fn(item)` for each item, computed in a background thread `queue_size` items ahead, in order.

    Used to run face detection (OpenCV releases the GIL) while the main thread runs inference.
    Exceptions raised by `fn` or the iterator are re-raised in the caller.
    """
    q: queue.Queue = queue.Queue(maxsize=queue_size)
    stop = threading.Event()
    done = object()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        it = None
        try:
            it = iter(items)
            for item in it:
                if not put((True, fn(item))):
                    return
        except BaseException as e:  # handed to the consumer
            put((False, e))
        finally:
            getattr(it, "close", lambda: None)()  # a generator's cleanup runs in this thread
        put(done)

    thread = threading.Thread(target=work, name="hsemo-map", daemon=True)
    thread.start()
    try:
        while (entry := q.get()) is not done:
            ok, value = entry
            if not ok:
                raise value
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)

