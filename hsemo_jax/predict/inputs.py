"""The runs of one `hsemo-jax predict` command and the output files of each, checked before any work.

An input is a video, an image, a folder of images, or a quoted glob. A glob whose matches are images
is the frames of one run (an image sequence); a glob that matches videos is one run per video. With
one run the outputs are the files given (`--out FILE`, default `<stem>.emotions.csv` here); with
several, `--out` and `--plot` name folders (`--out` default: the current folder) that get one
`<stem>.emotions.csv` / `<stem>.emotions.png` per run, and `--abaw-out` is a folder (one
`<stem>.abaw.txt` per run) or one file for all runs (the ABAW submission: one file, every video).
"""
from __future__ import annotations

import glob as globlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hsemo_jax.errors import InputError
from hsemo_jax.fileio import check_writable, same_path
from hsemo_jax.predict.video import IMAGE_EXTS, VIDEO_EXTS, FrameSource

_WILDCARDS = "*?["


@dataclass
class Run:
    input: str
    source: FrameSource
    csv: Path
    plot: Path | None = None
    abaw: Path | None = None  # this run's own ABAW file (None: none, or the combined one)


def expand(specs: Sequence[str]) -> list[str]:
    """The inputs of each run: a glob that matches videos becomes those videos (sorted); any other
    argument stays one run."""
    runs = []
    for spec in specs:
        if any(c in spec for c in _WILDCARDS) and not os.path.exists(spec):
            matches = sorted(globlib.glob(spec))
            videos = [m for m in matches if Path(m).suffix.lower() in VIDEO_EXTS and os.path.isfile(m)]
            images = [m for m in matches if Path(m).suffix.lower() in IMAGE_EXTS]
            if videos and images:
                raise InputError(f"{spec}: the pattern matches videos ({videos[0]}) and images ({images[0]}); "
                                 "give one pattern for each")
            if videos:
                runs += videos
                continue
        runs.append(spec)
    return runs


def stem(spec: str) -> str:
    """The name of a run's outputs: the file or folder name without its extension; for a glob, the
    last folder of the pattern without wildcards ('frames/*.jpg' -> 'frames')."""
    parts = Path(spec.rstrip("/")).parts
    if any(c in spec for c in _WILDCARDS):
        parts = [p for p in parts if not any(c in p for c in _WILDCARDS)]
    return (Path(parts[-1]).stem if parts else "") or "predictions"


def _is_folder(arg: str) -> bool:
    return os.path.isdir(arg) or arg.endswith(("/", os.sep))


def _key(path) -> str:
    """One spelling per file: absolute, normalized, links resolved."""
    return os.path.realpath(path)


class _InputFiles:
    """Which input an output path would overwrite. Only an existing file can be one, so the inputs'
    files (millions for ABAW's cropped_aligned) are indexed by name, without a system call, and only
    once an output path exists; same-named files are compared with `fileio.same_path`."""

    def __init__(self, inputs: Sequence[str], sources: Sequence[FrameSource]):
        self.inputs, self.sources, self.by_name = inputs, sources, None

    def of(self, path: Path) -> str | None:
        if not path.is_file():
            return None
        if self.by_name is None:
            self.by_name = {}
            for spec, source in zip(self.inputs, self.sources):
                for f in source.files:
                    self.by_name.setdefault(f.name, []).append((f, spec))
        return next((spec for f, spec in self.by_name.get(path.name, ()) if same_path(f, path)), None)


def plan(specs: Sequence[str], *, out: str | None, plot: str | None, abaw: str | None) -> tuple[list[Run], Path | None]:
    """Check every input (it exists and is a video, an image, a folder of images or a glob that
    matches some) and every output path (writable, no two runs writing one file), before any work:
    InputError naming the first bad one. Returns the runs and the combined ABAW file (or None)."""
    inputs = expand(specs)
    sources = [FrameSource(spec) for spec in inputs]
    many = len(inputs) > 1
    if many:
        for flag, arg in (("--out", out), ("--plot", plot)):
            if arg is not None and not _is_folder(arg):
                raise InputError(f"{arg}: {flag} names a file, but {len(inputs)} inputs get one output each; "
                                 "give a folder (an existing one, or a name ending in '/')")
    combined = Path(abaw) if abaw is not None and not _is_folder(abaw) else None

    def path(arg, suffix, default_folder=None):
        """A folder (existing, or named with a trailing '/'; one input too) gets <name><suffix> inside."""
        if arg is None and default_folder is None:
            return None
        if arg is not None and not _is_folder(arg):
            return Path(arg)
        return Path(arg if arg is not None else default_folder) / f"{stem(spec)}{suffix}"

    runs, writers = [], {}
    read = _InputFiles(inputs, sources)  # never overwritten
    for spec, source in zip(inputs, sources):
        run = Run(spec, source, path(out, ".emotions.csv", "."), path(plot, ".emotions.png"),
                  None if combined else path(abaw, ".abaw.txt"))
        for what, p in (("CSV", run.csv), ("plot", run.plot), ("ABAW file", run.abaw)):
            if p is None:
                continue
            key = _key(p)
            if (owner := read.of(p)) is not None:
                raise InputError(f"{p}: the {what} would overwrite this input file (of {owner}); give another path")
            if key in writers:
                raise InputError(f"{p}: {writers[key]} and {spec} would both write this {what}; "
                                 "rename one or run them separately")
            if what == "plot" and p.suffix.lower() != ".png":  # else PNG bytes in a file named .pdf or .jpg
                raise InputError(f"{p}: the plot is a PNG image; give a name ending in .png")
            writers[key] = spec
            check_writable(p, what)
        runs.append(run)
    if combined is not None:
        if (owner := read.of(combined)) is not None:
            raise InputError(f"{combined}: the ABAW file would overwrite this input file (of {owner}); "
                             "give another path")
        if _key(combined) in writers:
            raise InputError(f"{combined}: given for the ABAW file and another output")
        check_writable(combined, "ABAW file")
    return runs, combined
