"""Run a converted model over a built dataset split or an image folder -> feature dataset
(`hsemo-jax extract-features`).

Batches have a fixed shape (the last one padded), so the jitted forward compiles once. The
output is written chunk by chunk (``data_pipelines.features``); rerunning the same command
after an interruption resumes at the first missing chunk.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from data_pipelines.features import RESERVED, FeatureWriter, check_out
from hsemo_jax.errors import InputError


class SourceRange:
    """Random-access view of rows [start, end) of a source."""

    def __init__(self, source, start: int, end: int):
        self.source, self.start, self.end = source, start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, i: int):
        return self.source[self.start + i]


def _text(v) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def open_source(dataset: str | None, split: str | None, images: str | None):
    """(source, description dict) for ``--dataset DIR --split S`` or ``--images DIR``."""
    if (dataset is None) == (images is None):
        raise InputError("give exactly one of --dataset (a built dataset) or --images (a folder)")
    if images is not None:
        from data_pipelines.loaders import ImageFolderSource

        src = ImageFolderSource(images)
        digest = hashlib.sha256("\n".join(src.names).encode()).hexdigest()
        return src, {"kind": "images", "path": str(Path(images).absolute()), "names_sha256": digest}
    from data_pipelines.build import find_version_dir, open_dataset

    version_dir = find_version_dir(dataset)
    sources = open_dataset(version_dir)
    if split is None:
        if len(sources) != 1:
            raise InputError(f"{dataset} has splits {', '.join(sources)}; choose one with --split")
        split = next(iter(sources))
    if split not in sources:
        raise InputError(f"{dataset}: no split {split!r}; available: {', '.join(sources)}")
    return sources[split], {"kind": "dataset", "path": str(version_dir.absolute()), "split": split}


def class_names(source, fields) -> dict[str, list[str]]:
    """The ClassLabel names of a built dataset's label `fields` (AffectNet's `expression` is in
    AffectNet code order, its `label` in HSE order): train-head maps the classes by these names."""
    info = getattr(source, "dataset_info", None)
    if info is None:
        return {}
    import tensorflow_datasets as tfds

    features = info.features
    return {k: list(features[k].names) for k in fields
            if k in features.keys() and isinstance(features[k], tfds.features.ClassLabel)}


_LOADED: dict = {}


def load_model_and_forward(model_dir: str | os.PathLike):
    """(model, jitted forward -> (embedding, scores)) for a converted model directory.

    Cached per process by path and modification times, so repeated extractions in one process
    (a notebook, a resumed run) load and compile the model once per batch shape.
    """
    import hsemo_jax
    from hsemo_jax.models.inference import make_forward

    path = Path(model_dir).absolute()
    stamp = tuple(p.stat().st_mtime_ns for p in (path, *sorted(path.iterdir()))) if path.is_dir() else ()
    key = (str(path), stamp)
    if key not in _LOADED:
        model = hsemo_jax.load_model(path)
        _LOADED.clear()
        _LOADED[key] = (model, make_forward(model, with_features=True))
    return _LOADED[key]


def extract_features(model_dir: str | os.PathLike, out: str | os.PathLike, *,
                     dataset: str | None = None, split: str | None = None, images: str | None = None,
                     batch_size: int = 64, chunk_size: int = 4096, on_bad_image: str = "skip",
                     workers: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """Extract (embedding, scores) for every example; returns a summary dict
    (written, skipped, skipped_names (first 20), resumed_at, already_complete, out)."""
    import grain
    from tqdm import tqdm

    from data_pipelines.loaders import Preprocessing, label_fields, make_loader

    if batch_size < 1:
        raise InputError(f"--batch-size must be positive, got {batch_size}")
    if chunk_size < 1:
        raise InputError(f"--chunk-size must be positive, got {chunk_size}")
    if workers < 0:
        raise InputError(f"--workers must be 0 (decode in this process) or more, got {workers}")
    check_out(out, inputs=(images, dataset, model_dir))  # before the model is loaded
    chunk_size = max(batch_size, -(-chunk_size // batch_size) * batch_size)  # whole batches
    source, source_meta = open_source(dataset, split, images)
    n = len(source)
    source_meta["num_examples"] = n
    from hsemo_jax.hub import resolve_model

    given = Path(model_dir)  # a directory or .pt file (its path recorded), or a published name
    model, forward = load_model_and_forward(resolve_model(model_dir, progress=progress))
    info = model.info
    first = source[0]
    fields = [k for k in label_fields(first) if k not in RESERVED]
    text_fields = ["name"] if "name" in first else []
    meta = {"model": {"path": str(given.absolute()) if given.exists() else str(model_dir), "arch": info.arch,
                      "outputs": list(info.outputs), "embedding_dim": info.embedding_dim,
                      "input_size": info.input_size, "mean": list(info.mean), "std": list(info.std)},
            "source": source_meta, "num_examples": n, "chunk_size": chunk_size,
            "fields": fields}
    names = class_names(source, fields)
    if names:  # absent for sources without class labels, so their older extractions still resume
        meta["class_names"] = names
    writer = FeatureWriter(out, meta, overwrite=overwrite)
    resume = writer.done_prefix()
    summary = {"out": str(out), "resumed_at": resume * chunk_size, "written": 0, "skipped": 0,
               "skipped_names": [], "already_complete": bool(writer.meta["complete"])}
    if summary["already_complete"]:
        return summary
    start = resume * chunk_size
    loader = make_loader(SourceRange(source, start, n), Preprocessing.for_model(model),
                         batch_size=batch_size, train=False, fields=fields, text_fields=text_fields,
                         shard_options=grain.sharding.NoSharding(), on_bad_image=on_bad_image,
                         worker_count=workers)
    batches_per_chunk = chunk_size // batch_size
    rows, skipped, chunk = [], [], resume
    with tqdm(total=n, initial=start, unit="img", disable=not progress, desc="extract") as bar:
        for b, batch in enumerate(loader):
            emb, scores = forward(batch["image"])
            emb, scores = np.asarray(emb, np.float32), np.asarray(scores, np.float32)
            real, bad = batch["mask"], (~batch["mask"]) & (batch["index"] >= 0)
            idx = batch["index"] + start
            names = batch["name"] if text_fields else idx.astype(str).astype(bytes)
            rows.append({"index": idx[real], "name": names[real], "embedding": emb[real],
                         "scores": scores[real], **{k: batch[k][real] for k in fields}})
            skipped += [_text(v) for v in names[bad]]
            bar.update(int((batch["index"] >= 0).sum()))
            last = start + (b + 1) * batch_size >= n
            if (b + 1) % batches_per_chunk == 0 or last:
                cols = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
                cols["name"] = np.char.decode(cols["name"], "utf-8", "replace")
                writer.write_chunk(chunk, cols, skipped)
                summary["written"] += len(cols["index"])
                summary["skipped"] += len(skipped)
                summary["skipped_names"] += skipped[: max(0, 20 - len(summary["skipped_names"]))]
                rows, skipped, chunk = [], [], chunk + 1
            if last:
                break
    writer.finish()
    return summary
