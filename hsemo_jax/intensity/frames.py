"""Per-frame features of videos' face crops: from saved features or by running a model.

Layout of the face crops (spec seed_extras §1.2): FACES/<video id>/<frame number>.<ext>, one folder
per video (e.g. FACES/00001/0.jpg, FACES/00001/5.jpg, ...).

Sources of per-frame features (one or several, concatenated):

* a feature dataset written by `hsemo-jax extract-features MODEL --images FACES --out DIR`
  (`data_pipelines.features`): its `name` column holds `<video id>/<frame>.<ext>` relative paths;
* an `.npz` archive with `name` (N,) `<video id>/<frame>.<ext>` strings and `embedding` (N, D)
  and/or `scores` (N, 10);
* FACES folders + a model (a published name, a converted model directory or a .pt file,
  `hsemo_jax.hub.resolve_model`): the features are extracted once with
  `hsemo_jax.extract.extract_features` into a cache folder and reused on the next run.

The video id is the crop's parent folder name (digits are zero-padded to 5, as the label files'
ids); the frame number is the file name's integer stem. `--input` picks the per-frame vector:
the backbone's 10 `scores` (the notebook's final choice), its `embedding`, or `both`
(embedding ‖ scores). Only every n-th frame of each video (frame order, `stats.every_nth`) is
read: a feature dataset's chunks are memory-mapped, so the frames left out are never loaded.
(Extraction from FACES runs the model on every crop, so one cache serves any n.)

Video folders below a FACES root (or below the image folder a feature dataset was extracted from,
when it still exists) that have no usable crop are kept in `empty` so that the caller can report
them: a video is never dropped silently.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from data_pipelines.images import IMAGE_SUFFIXES
from hsemo_jax.errors import InputError
from hsemo_jax.fileio import read_npz
from hsemo_jax.intensity.stats import every_nth

INPUTS = ("scores", "embedding", "both")
_FRAME = re.compile(r"^\d+$")


@dataclass
class FrameFeatures:
    """Flat per-frame rows of many videos. videos (N,) str ids; frames (N,) int64; values (N, D)."""

    videos: np.ndarray
    frames: np.ndarray
    values: np.ndarray
    input: str
    every: int = 1                                    # rows are every `every`-th frame of each video
    sources: list = field(default_factory=list)      # one description dict per source
    folders: dict = field(default_factory=dict)      # video id -> its face-crop folder (for messages)
    empty: dict = field(default_factory=dict)        # video id -> folder holding no usable crop
    model: dict | None = None                         # the backbone that produced the features

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    def video_ids(self) -> list[str]:
        """Videos with at least one frame, sorted."""
        return sorted(set(self.videos.tolist()))

    def where(self, video: str) -> str:
        """Where the frames of `video` were looked for (its folder, else the sources)."""
        if video in self.folders:
            return str(self.folders[video])
        return ", ".join(s["path"] for s in self.sources) or "the features"


def video_key(folder_name: str) -> str:
    """Folder name -> video id: digits are zero-padded to 5 (`1` -> `00001`), others kept."""
    return f"{int(folder_name):05d}" if _FRAME.match(folder_name) else folder_name


def parse_names(names: Sequence[str], source: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """`<...>/<video>/<frame>.<ext>` names -> (video ids, frame numbers, {video id: relative folder})."""
    vids, frames, folders = [], [], {}
    for name in names:
        parts = str(name).replace("\\", "/").rsplit("/", 2)
        stem = parts[-1].rsplit(".", 1)[0]
        if len(parts) < 2 or not parts[-2] or not _FRAME.match(stem):
            raise InputError(f"{source}: frame {str(name)!r} is not named <video folder>/<frame number>.<ext> "
                             "(expected face crops FACES/<video id>/<int>.jpg)")
        v = video_key(parts[-2])
        vids.append(v)
        frames.append(int(stem))
        if v not in folders:
            folders[v] = str(name).replace("\\", "/").rsplit("/", 1)[0]
    return np.asarray(vids, dtype=object), np.asarray(frames, np.int64), folders


def video_folders(root: str | os.PathLike) -> tuple[dict, dict]:
    """({video id: folder} of the sub-folders of `root` with image files, {video id: folder} of those
    without any)."""
    root = Path(root)
    full, empty = {}, {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        has = any(f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() for f in d.rglob("*"))
        (full if has else empty)[video_key(d.name)] = d
    return full, empty


def _columns(kind: str) -> list[str]:
    return {"scores": ["scores"], "embedding": ["embedding"], "both": ["embedding", "scores"]}[kind]


def _check_columns(have: Sequence[str], kind: str, source: str) -> list[str]:
    need = _columns(kind)
    for k in need:
        if k not in have:
            raise InputError(f"{source}: no {k!r} array (have {', '.join(sorted(have)) or 'none'}); "
                             f"--input {kind} needs {' and '.join(need)}")
    return need


def _gather(columns: list, n: int, source: str) -> np.ndarray:
    """(N, D) float32 from per-column (N, d) arrays (embedding ‖ scores)."""
    for c in columns:
        if c.ndim != 2 or c.shape[0] != n:
            raise InputError(f"{source}: per-frame array of shape {c.shape}, expected ({n}, D)")
    out = np.concatenate(columns, axis=1) if len(columns) > 1 else columns[0]
    return np.ascontiguousarray(out, np.float32)


def _read_dataset(p: Path, kind: str, every: int):
    """(names, values, meta, skipped) of an extract-features folder: only every `every`-th frame of
    each video is read (chunks are memory-mapped, so the frames left out are never loaded)."""
    from data_pipelines.features import FeatureDataset, chunk_dir

    ds = FeatureDataset(p)  # checks the format and that the extraction finished
    if len(ds) == 0:
        raise InputError(f"{p}: the feature dataset has no rows")
    need = _check_columns(ds.columns, kind, str(p))
    chunks, k = [], 0
    while chunk_dir(p, k).is_dir():
        chunks.append(chunk_dir(p, k))
        k += 1
    names = np.concatenate([np.load(c / "name.npy", allow_pickle=False) for c in chunks]).astype(str)
    vids, frames, _ = parse_names(names, str(p))
    keep = every_nth(vids, frames, every)
    sizes = [len(np.load(c / "index.npy", mmap_mode="r")) for c in chunks]
    offsets = np.r_[0, np.cumsum(sizes)]
    cols = []
    for col in need:
        parts = []
        for c, lo, hi in zip(chunks, offsets[:-1], offsets[1:]):
            a, b = np.searchsorted(keep, [lo, hi])
            parts.append(np.asarray(np.load(c / f"{col}.npy", mmap_mode="r")[keep[a:b] - lo], np.float32))
        cols.append(np.concatenate(parts))
    return names[keep], _gather(cols, len(keep), str(p)), ds.meta, ds.skipped()


def load_source(path: str | os.PathLike, kind: str, every: int = 1) -> FrameFeatures:
    """One feature dataset directory or .npz archive (see module docstring); only every `every`-th
    frame of each video (frame order) is kept."""
    if kind not in INPUTS:
        raise InputError(f"--input must be one of {', '.join(INPUTS)}, got {kind!r}")
    p = Path(path)
    model, root, skipped = None, None, []
    if p.is_dir():
        names, values, meta, skipped = _read_dataset(p, kind, every)
        model = meta.get("model")
        src = meta.get("source", {})
        if src.get("kind") == "images":
            root = Path(src["path"])
    elif p.is_file():
        arrays = read_npz(p)
        if "name" not in arrays:
            raise InputError(f"{p}: no 'name' array (the <video>/<frame>.<ext> name of every row)")
        names = np.asarray(arrays["name"]).astype(str)
        if names.ndim != 1 or not len(names):
            raise InputError(f"{p}: 'name' must be a non-empty 1-d array of <video>/<frame>.<ext> names")
        need = _check_columns(list(arrays), kind, str(p))
        vids, frames, _ = parse_names(names, str(p))
        keep = every_nth(vids, frames, every)
        for c in need:
            if np.ndim(arrays[c]) != 2 or len(arrays[c]) != len(names):
                raise InputError(f"{p}: array {c!r} has shape {np.shape(arrays[c])}, expected ({len(names)}, D)")
        values = _gather([np.asarray(arrays[c])[keep] for c in need], len(keep), str(p))
        names = names[keep]
    else:
        raise InputError(f"{p}: features not found (expected an extract-features folder or an .npz archive)")
    if not np.isfinite(values).all():
        r = int(np.argwhere(~np.isfinite(values))[0][0])
        raise InputError(f"{p}: frame {names[r]!r} has a non-finite feature value")
    vids, frames, rel = parse_names(names, str(p))
    folders = {v: root / f for v, f in rel.items()} if root is not None else {}
    empty = {}
    if root is not None and root.is_dir():
        full, empty = video_folders(root)
        folders = {**full, **empty, **folders}
        # folders with images, all of which could not be read (skipped by the extraction)
        for v, d in full.items():
            if v not in rel:
                empty[v] = d
    desc = {"path": str(p.absolute()), "rows": len(names), "skipped_images": len(skipped)}
    return FrameFeatures(videos=vids, frames=frames, values=values, input=kind, every=int(every), sources=[desc],
                         folders=folders, empty=empty, model=model)


def _same_model(a: dict | None, b: dict | None) -> bool:
    keys = ("arch", "embedding_dim", "input_size", "outputs")
    return a is None or b is None or all(a.get(k) == b.get(k) for k in keys)


def combine(parts: Sequence[FrameFeatures]) -> FrameFeatures:
    """Concatenate sources; a video found in two sources, or features of different backbones, are errors."""
    first = parts[0]
    owner: dict = {}
    for part in parts:
        if part.dim != first.dim or not _same_model(first.model, part.model):
            raise InputError(f"{part.sources[0]['path']}: features of a different backbone or width "
                             f"({part.dim} columns) than {first.sources[0]['path']} ({first.dim})")
        for v in set(part.videos.tolist()) | set(part.empty):
            if v in owner and owner[v] is not part:
                raise InputError(f"video {v} appears in both {owner[v].sources[0]['path']} and "
                                 f"{part.sources[0]['path']}")
            owner[v] = part
    if len(parts) == 1:
        return first
    return FrameFeatures(
        videos=np.concatenate([p.videos for p in parts]), frames=np.concatenate([p.frames for p in parts]),
        values=np.concatenate([p.values for p in parts]), input=first.input, every=first.every,
        sources=[s for p in parts for s in p.sources], folders={k: v for p in parts for k, v in p.folders.items()},
        empty={k: v for p in parts for k, v in p.empty.items()},
        model=next((p.model for p in parts if p.model is not None), None))


def cache_folder(cache: str | os.PathLike, faces: str | os.PathLike, model_dir: str | os.PathLike) -> Path:
    """Extraction cache of one FACES folder and one model: CACHE/<faces name>-<hash of both paths>."""
    key = f"{Path(faces).absolute()}\n{Path(model_dir).absolute()}"
    return Path(cache) / f"{Path(faces).absolute().name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def extract_faces(faces: str | os.PathLike, model: str, cache: str | os.PathLike, *, batch_size: int = 64,
                  progress: bool = True, log=print) -> Path:
    """Run `model` over every crop below FACES once (cached); returns the feature dataset folder."""
    from hsemo_jax.extract import extract_features
    from hsemo_jax.hub import resolve_model

    faces = Path(faces)
    if not faces.is_dir():
        raise InputError(f"{faces}: face-crop folder not found")
    loose = [f.name for f in faces.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise InputError(f"{faces}: holds image {loose[0]!r} directly; expected one sub-folder per video "
                         "(FACES/<video id>/<frame>.jpg)")
    full, empty = video_folders(faces)
    if not full:
        raise InputError(f"{faces}: no video folder with face crops (expected FACES/<video id>/<frame>.jpg)"
                         + (f"; empty folders: {', '.join(str(d) for d in list(empty.values())[:5])}" if empty else ""))
    model_dir = resolve_model(model, progress=progress)
    out = cache_folder(cache, faces, model_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    s = extract_features(model_dir, out, images=str(faces), batch_size=batch_size, progress=progress)
    if s["already_complete"]:
        log(f"{faces}: using cached features {out}")
    else:
        skipped = f", {s['skipped']} unreadable skipped" if s["skipped"] else ""
        log(f"{faces}: {s['written']} crops -> {out}{skipped}")
    return out


def load_frames(features: Sequence[str] | None, faces: Sequence[str] | None, kind: str, *, every: int = 1,
                model: str | None = None, cache: str | os.PathLike | None = None, batch_size: int = 64,
                progress: bool = True, log=print) -> FrameFeatures:
    """Per-frame features (every `every`-th frame of each video) from --features paths or from
    --faces folders + --model."""
    if bool(features) == bool(faces):
        raise InputError("give exactly one of --features (saved per-frame features) or --faces (face-crop folders)")
    paths = list(features or [])
    if faces:
        if not model:
            raise InputError("--faces needs --model (a published model name, a converted model folder or a .pt file)")
        if cache is None:
            raise InputError("--faces needs a cache folder for the extracted features (--cache)")
        paths = [extract_faces(f, model, cache, batch_size=batch_size, progress=progress, log=log) for f in faces]
    return combine([load_source(p, kind, every) for p in paths])


def video_features(ff: FrameFeatures, ids: Sequence[str] | None, *, on_missing: str = "error",
                   what: str = "videos", log=print) -> tuple[list, np.ndarray]:
    """(video ids, X (S, 4·D)): per-video [mean ‖ std ‖ min ‖ max] of the frames of `ff` (already
    thinned to every `ff.every`-th frame by `load_frames`).

    ids: the videos wanted, in order (e.g. a label file's); None = every video of the sources,
    sorted, including folders without a usable crop. A wanted video without frames is an error
    naming its folder (on_missing="error"), or is left out and reported (on_missing="skip").
    """
    from hsemo_jax.intensity.stats import video_statistics

    if on_missing not in ("error", "skip"):
        raise InputError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    have = set(ff.videos.tolist())
    wanted = list(ids) if ids is not None else sorted(have | set(ff.empty))
    missing = [v for v in wanted if v not in have]
    if missing:
        shown = "; ".join(f"{v} ({ff.where(v) if v in ff.folders else 'no folder in ' + ff.where(v)})"
                          for v in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        if on_missing == "error":
            raise InputError(f"{len(missing)} of {len(wanted)} {what} have no face crop / no frame features: "
                             f"{shown}{more}. Pass --on-missing skip to leave them out (they are then reported)")
        log(f"skipped {len(missing)} of {len(wanted)} {what} without face crops: {shown}{more}")
    keep = [v for v in wanted if v in have]
    if not keep:
        raise InputError(f"none of the {len(wanted)} {what} has frame features in {ff.where('')}")
    sel = np.isin(ff.videos, np.asarray(keep, dtype=object))
    vids, stats = video_statistics(ff.videos[sel], ff.frames[sel], ff.values[sel], every=1)
    pos = {v: i for i, v in enumerate(vids)}
    return keep, stats[[pos[v] for v in keep]]
