"""Shared base of the manual-download TFDS builders: feature helpers, bad-image policy, threads.

A subclass lists, per split, the examples it will try to write (``_candidates``: annotation
parsing, which raises InputError on a malformed line before anything is written) and loads one
candidate into a feature dict (``_load``: file reads, decoding, cropping; raises BadImage).
The base class runs ``_load`` on a thread pool (OpenCV releases the GIL), keeps the order,
applies the bad-image policy and counts what was written and skipped per split.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.images import BadImage, SkipLog

CHUNK = 256  # candidates loaded per thread-pool round (bounds memory)


def bytes_feature(doc: str) -> tfds.features.Tensor:
    """Raw bytes (an encoded image), returned as ``bytes`` by the data source."""
    return tfds.features.Tensor(shape=(), dtype=np.object_, doc=doc)


def tensor(shape: tuple, dtype, doc: str) -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=shape, dtype=dtype, doc=doc)


def threaded_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """``map(fn, items)`` in order, `workers` threads, at most CHUNK results held at once."""
    items = iter(items)
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        while chunk := list(islice(items, CHUNK)):
            yield from pool.map(fn, chunk)


class ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base for builders over a user's local copy of a dataset (``manual_dir``).

    Keyword args besides tfds's: on_bad_image ('skip' | 'error'), workers (threads for
    decoding; default min(8, CPUs)). ``self.log`` holds the written/skipped counts afterwards.
    Examples are written in generation order (``disable_shuffling``): by file / video / frame.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    DESCRIPTION = ""
    HOMEPAGE = ""
    # tfds locates a builder's source to find a checksums file for downloads; for a builder in
    # a package that path goes through `importlib_resources`, which tfds 4.9 does not declare
    # as a dependency (absent here). Nothing is downloaded, so there is no checksums file.
    code_path = None

    def __init__(self, *, on_bad_image: str = "skip", workers: int | None = None, **kwargs):
        self.log = SkipLog(on_bad_image)
        self.workers = workers or min(8, os.cpu_count() or 1)
        super().__init__(**kwargs)

    # -- subclass interface ---------------------------------------------------------------
    def _features(self) -> dict[str, tfds.features.FeatureConnector]:
        raise NotImplementedError

    def _candidates(self, root: Path) -> dict[str, Iterable]:
        """{split: candidates (a list, or a generator parsed while writing)} from the annotations
        under `root` (the manual dir)."""
        raise NotImplementedError

    def _load(self, candidate) -> dict[str, Any]:
        """One candidate -> feature dict; raises BadImage for a missing/corrupt image."""
        raise NotImplementedError

    # -- tfds plumbing --------------------------------------------------------------------
    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.DESCRIPTION, homepage=self.HOMEPAGE or None,
            features=tfds.features.FeaturesDict(self._features()), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        return {split: self._generate_examples(split, cands)
                for split, cands in self._candidates(root).items()}

    def _generate_examples(self, split: str, candidates: Iterable):
        for key, result in enumerate(threaded_map(self._safe_load, candidates, self.workers)):
            if isinstance(result, BadImage):
                self.log.bad_image(split, result)
                continue
            self.log.written[split] += 1
            yield key, result

    def _safe_load(self, candidate):
        try:
            return self._load(candidate)
        except BadImage as e:
            return e
