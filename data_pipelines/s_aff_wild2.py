"""s-Aff-Wild2 builder: the ABAW-7 multi-task learning (MTL) challenge annotations.

``manual_dir`` (annotation files at the top or one folder down)::

    training_set_annotations.txt      -> split train
    validation_set_annotations.txt    -> split validation
    test_set_examples/MTL.txt         -> split test (image list only; all labels missing)
    cropped_aligned/<video>/<frame>.jpg

Each annotation line (after the header ``image,valence,arousal,expression,AU1,...,AU26``) is
``<video>/<frame>.jpg,valence,arousal,expression,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,
AU25,AU26`` (16 fields). Missing labels are V/A = -5, expression = -1, AU = -1: they are kept
as they are, with boolean masks (features in ``data_pipelines.abaw``). Lines with a wrong
field count or out-of-range values raise InputError naming file:line and the line.
"""
from __future__ import annotations

from pathlib import Path

from data_pipelines import abaw
from data_pipelines.annotations import Line, read_lines
from data_pipelines.builder_base import ManualBuilder
from hsemo_jax.errors import InputError
from hsemo_jax.labels import AU_NAMES

SPLIT_FILES = {"train": "training_set_annotations.txt",
               "validation": "validation_set_annotations.txt",
               "test": "test_set_examples/MTL.txt"}
NUM_FIELDS = 4 + len(AU_NAMES)


def parse_line(line: Line, images: abaw.ImageIndex, labelled: bool) -> abaw.Frame:
    """One annotation (or test-list) line -> Frame."""
    if labelled:
        f = line.fields(NUM_FIELDS)
    else:
        f = line.fields()
    name = f[0]
    video, frame = abaw.frame_number(line, name)
    filename = name.rsplit("/", 1)[-1]
    c = abaw.Frame(images.path(video, filename), name, video, frame)
    if labelled:
        c.va = abaw.parse_va(line, f[1:3])
        c.expression = abaw.parse_expression(line, f[3])
        c.aus = abaw.parse_aus(line, f[4:])
    return c


def _frames(path: Path, images: abaw.ImageIndex, labelled: bool):
    """Frames of one annotation file, parsed lazily (the header line is skipped)."""
    for line in read_lines(path):
        if line.lineno == 1 and line.text.lower().startswith("image"):
            continue
        yield parse_line(line, images, labelled)


def _find(root: Path, rel: str) -> Path | None:
    for d in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        if (d / rel).is_file():
            return d / rel
    return None


class SAffWild2(ManualBuilder):
    """ABAW-7 MTL frames with valence/arousal, expression and 12 AUs (missing codes masked)."""

    name = "s_aff_wild2"
    DESCRIPTION = __doc__
    HOMEPAGE = "https://affective-behavior-analysis-in-the-wild.github.io/7th/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point --manual-dir at a folder with training_set_annotations.txt, "
                                    "validation_set_annotations.txt and cropped_aligned/.")

    def _features(self):
        return abaw.features()

    def _candidates(self, root: Path) -> dict[str, list]:
        files = {split: _find(root, rel) for split, rel in SPLIT_FILES.items()}
        if not any(files.values()):
            raise InputError(f"{root}: no {', '.join(SPLIT_FILES.values())} found")
        images = abaw.ImageIndex(root)
        return {split: _frames(path, images, labelled=split != "test")
                for split, path in files.items() if path is not None}

    def _load(self, c: abaw.Frame) -> dict:
        return abaw.load_frame(c)
