"""Aff-Wild2 builder: ABAW-6 uni-task per-video annotation files (configs expr, va, au).

``manual_dir`` (the challenge folders at the top or one folder down, e.g. in
``6th ABAW Annotations/``)::

    EXPR_Recognition_Challenge/{Train_Set,Validation_Set}/<video>.txt   config expr
    VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video>.txt      config va
    AU_Detection_Challenge/{Train_Set,Validation_Set}/<video>.txt       config au
    cropped_aligned/<video>/<%05d>.jpg  (and/or cropped_aligned_new_50_vids/)

Line 1 of a file is the header; line i+1 belongs to frame i, image ``<video>/<%05d i>.jpg``.
EXPR lines hold one int in the Aff-Wild2 order (-1 = not annotated); VA lines
``valence,arousal`` (-5 = missing); AU lines 12 ints in {0, 1} (-1 = missing). Frames without a
cropped image (no face found) are normal in Aff-Wild2: they are counted as skipped, not
errors. Frames with a missing label are kept, masked. A video whose folder is missing from
``cropped_aligned`` falls under the bad-image policy (one entry per video).
Features: ``data_pipelines.abaw`` (the task's labels filled, the other tasks' masked).
Splits: train, validation.
"""
from __future__ import annotations

from pathlib import Path

import tensorflow_datasets as tfds

from data_pipelines import abaw
from data_pipelines.annotations import Line, read_lines
from data_pipelines.builder_base import ManualBuilder
from data_pipelines.images import BadImage
from hsemo_jax.errors import InputError
from hsemo_jax.labels import AU_NAMES

CHALLENGES = {"expr": "EXPR_Recognition_Challenge", "va": "VA_Estimation_Challenge",
              "au": "AU_Detection_Challenge"}
SPLIT_DIRS = {"train": "Train_Set", "validation": "Validation_Set"}
NO_IMAGE = "frame has no cropped image"


def set_labels(task: str, line: Line, c: abaw.Frame) -> None:
    """Parse one label line of `task` into the frame `c`."""
    if task == "expr":
        c.expression = abaw.parse_expression(line, line.fields(1)[0])
    elif task == "va":
        c.va = abaw.parse_va(line, line.fields(2))
    else:
        c.aus = abaw.parse_aus(line, line.fields(len(AU_NAMES)))


def annotations_root(root: Path) -> Path | None:
    """The folder holding the challenge folders: `root` or one of its subfolders."""
    for d in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        if any((d / c).is_dir() for c in CHALLENGES.values()):
            return d
    return None


class AffWild2(ManualBuilder):
    """Aff-Wild2 frames with one ABAW-6 task's labels (config: expr, va or au)."""

    name = "aff_wild2"
    DESCRIPTION = __doc__
    HOMEPAGE = "https://affective-behavior-analysis-in-the-wild.github.io/6th/"
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=k, description=v) for k, v in CHALLENGES.items()]
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point --manual-dir at a folder with the ABAW-6 challenge "
                                    "annotation folders and cropped_aligned/.")

    def _features(self):
        return abaw.features()

    def _candidates(self, root: Path) -> dict[str, list]:
        task = self.builder_config.name
        ann = annotations_root(root)
        challenge = ann / CHALLENGES[task] if ann else None
        if challenge is None or not challenge.is_dir():
            raise InputError(f"{root}: no {CHALLENGES[task]}/ folder found (at the top or one folder down)")
        images = abaw.ImageIndex(root)
        out = {}
        for split, dirname in SPLIT_DIRS.items():
            d = challenge / dirname
            if d.is_dir():  # lazily, one video at a time (Aff-Wild2 has millions of frames)
                out[split] = self._split_frames(split, task, sorted(d.glob("*.txt")), images)
        if not out:
            raise InputError(f"{challenge}: no {' or '.join(SPLIT_DIRS.values())} folder")
        return out

    def _split_frames(self, split: str, task: str, files: list[Path], images: abaw.ImageIndex):
        for f in files:
            yield from self._video_frames(split, task, f, images)

    def _video_frames(self, split: str, task: str, path: Path, images: abaw.ImageIndex) -> list:
        video = path.stem
        frames = []
        for line in read_lines(path):
            if line.lineno == 1:
                if _is_number(line.text.split(",")[0]):
                    raise line.error("line 1 must be the header (line i+1 is frame i)")
                continue
            c = abaw.Frame(Path(), "", video, line.lineno - 1)
            set_labels(task, line, c)
            frames.append(c)
        if images.video_dir(video) is None:  # one policy decision per video, counted per frame
            self.log.bad_image(split, BadImage("video folder missing from cropped_aligned", video),
                               count=len(frames))
            return []
        kept = []
        for c in frames:
            c.name = f"{video}/{c.frame:05d}.jpg"
            filename = f"{c.frame:05d}.jpg"
            if not images.has(video, filename):
                self.log.skip(split, NO_IMAGE, c.name)
                continue
            c.path = images.path(video, filename)
            kept.append(c)
        return kept

    def _load(self, c: abaw.Frame) -> dict:
        return abaw.load_frame(c)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
