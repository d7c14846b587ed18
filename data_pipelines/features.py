"""Feature datasets: per-frame embedding + model scores (+ the source's labels), chunked.

Written by ``hsemo-jax extract-features``; read to train the multi-task head (spec §3.1:
``f`` = backbone embedding, ``s = f @ W.T + b`` = raw scores, V and A last of the 10)::

    OUT/
      features.json            format, model, source, chunk_size, num_examples, fields, complete;
                               class_names: {field: names} of the source's ClassLabel fields
      chunk-00000/             rows [0, chunk_size) of the source
        index.npy   (n,) int64       source index
        name.npy    (n,) str         the example's name (``video/00001.jpg``, relative path)
        embedding.npy (n, D) float32
        scores.npy  (n, K) float32
        <field>.npy (n, ...)         numeric label fields of the source (va, expression, ...)
        skipped.json                 names of the images in this range that could not be read
      chunk-00001/ ...

Chunks are written to a temporary folder and renamed, so a chunk folder is always complete;
an interrupted extraction resumes at the first missing chunk. ``complete`` turns true when the
last chunk is written.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from hsemo_jax.errors import InputError
from hsemo_jax.fileio import atomic_directory, atomic_write, holds

FORMAT = "hsemo-jax-features/1"
META = "features.json"
RESERVED = ("index", "name", "embedding", "scores")


def chunk_dir(root: Path, chunk: int) -> Path:
    return root / f"chunk-{chunk:05d}"


def check_out(out: str | os.PathLike, inputs=()) -> Path:
    """Before any work: `out` can take a feature dataset: absent, an empty folder or a feature dataset
    (`features.json`; resumed, or replaced with --overwrite), and neither one of `inputs` (image
    folder, dataset, model) nor a folder holding one. A folder of other things is never replaced."""
    root = Path(out)
    for src in inputs:
        if src is not None and Path(src).exists() and holds(root, src):
            raise InputError(f"{root}: the output would replace {src}, which is read from it; give another --out")
    if (root / META).is_file():
        return root
    if root.is_dir() and any(root.iterdir()) or root.exists() and not root.is_dir():
        raise InputError(f"{root} exists and is not a feature dataset (no {META}); it is never replaced, "
                         "give another --out")
    return root


class FeatureWriter:
    """Creates or resumes a feature dataset at `out`.

    meta must hold ``num_examples`` and ``chunk_size`` plus anything identifying the model and
    the source; resuming requires the same meta (``complete`` aside), else InputError.
    """

    def __init__(self, out: str | os.PathLike, meta: dict, *, overwrite: bool = False):
        self.root = Path(out)
        self.meta = {"format": FORMAT, **meta, "complete": False}
        self.num_examples = int(meta["num_examples"])
        self.chunk_size = int(meta["chunk_size"])
        meta_path = self.root / META
        if meta_path.is_file() and not overwrite:
            old = json.loads(meta_path.read_text())
            if {k: v for k, v in old.items() if k != "complete"} != {
                    k: v for k, v in self.meta.items() if k != "complete"}:
                diff = sorted(k for k in set(old) | set(self.meta) if k != "complete"
                              and old.get(k) != self.meta.get(k))
                raise InputError(f"{self.root} holds features of a different extraction (differs in "
                                 f"{', '.join(diff)}); pass --overwrite to replace it")
            self.meta["complete"] = old.get("complete", False)
        else:
            if meta_path.is_file():  # overwrite: a feature dataset is replaced
                shutil.rmtree(self.root)
            else:
                check_out(self.root)  # anything else never is, with --overwrite or not
            self.root.mkdir(parents=True, exist_ok=True)
            self._write_meta()

    @property
    def num_chunks(self) -> int:
        return -(-self.num_examples // self.chunk_size)

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.num_examples)

    def done_prefix(self) -> int:
        """Number of leading chunks already written (extraction resumes after them)."""
        k = 0
        while k < self.num_chunks and chunk_dir(self.root, k).is_dir():
            k += 1
        return k

    def write_chunk(self, chunk: int, arrays: dict[str, np.ndarray], skipped: list[str]) -> None:
        """Write one chunk atomically. arrays: index, name, embedding, scores, label fields."""
        n = len(arrays["index"])
        if any(len(v) != n for v in arrays.values()):
            raise ValueError(f"chunk {chunk}: arrays of different lengths "
                             f"{ {k: len(v) for k, v in arrays.items()} }")
        with atomic_directory(chunk_dir(self.root, chunk)) as tmp:
            for k, v in arrays.items():
                np.save(tmp / f"{k}.npy", np.asarray(v), allow_pickle=False)
            (tmp / "skipped.json").write_text(json.dumps(skipped) + "\n")

    def finish(self) -> None:
        if self.done_prefix() != self.num_chunks:
            raise RuntimeError(f"{self.root}: {self.num_chunks - self.done_prefix()} chunks missing")
        self.meta["complete"] = True
        self._write_meta()

    def _write_meta(self) -> None:
        atomic_write(self.root / META, json.dumps(self.meta, indent=1) + "\n")


class FeatureDataset:
    """Reader: ``len(ds)`` rows, ``ds[i] -> {"index", "name", "embedding", "scores", ...}``,
    ``ds.arrays()`` -> every column concatenated (name (N,) str, embedding (N, D), ...)."""

    def __init__(self, path: str | os.PathLike, *, allow_incomplete: bool = False):
        self.root = Path(path)
        meta_path = self.root / META
        if not meta_path.is_file():
            raise InputError(f"{path} is not a feature dataset (no {META}); create one with "
                             "`hsemo-jax extract-features`")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise InputError(f"{meta_path}: expected format {FORMAT!r}, got {self.meta.get('format')!r}")
        if not self.meta["complete"] and not allow_incomplete:
            raise InputError(f"{path}: extraction not finished (run extract-features again to resume)")
        chunks = []
        k = 0
        while chunk_dir(self.root, k).is_dir():
            chunks.append(chunk_dir(self.root, k))
            k += 1
        self._chunks = chunks
        self._columns = sorted(p.stem for p in chunks[0].glob("*.npy")) if chunks else []
        self._sizes = np.array([len(np.load(c / "index.npy", mmap_mode="r")) for c in chunks], np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)])
        self._cache: dict[int, dict] = {}

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _chunk(self, k: int) -> dict:
        if k not in self._cache:
            self._cache[k] = {c: np.load(self._chunks[k] / f"{c}.npy", mmap_mode="r")
                              for c in self._columns}
        return self._cache[k]

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        i %= len(self)
        k = int(np.searchsorted(self._offsets, i, side="right") - 1)
        chunk = self._chunk(k)
        j = i - int(self._offsets[k])
        return {c: np.array(chunk[c][j]) for c in self._columns}

    def arrays(self) -> dict[str, np.ndarray]:
        return {c: np.concatenate([np.asarray(self._chunk(k)[c]) for k in range(len(self._chunks))])
                for c in self._columns}

    def skipped(self) -> list[str]:
        return [n for c in self._chunks for n in json.loads((c / "skipped.json").read_text())]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = {}  # memory maps are reopened in the worker
        return state

