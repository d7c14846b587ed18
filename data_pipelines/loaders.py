"""grain input pipelines: decode (OpenCV, RGB) -> model preprocessing -> augment -> fixed batches.

    ds = make_loader(open_dataset(path, "train"), Preprocessing.for_arch("ddamfn"),
                     batch_size=256, train=True, seed=0, num_epochs=None)
    it = iter(ds)                       # grain DatasetIterator
    batch = next(it)                    # {"image": (B, S, S, 3) float32, "mask": (B,) bool,
                                        #  "index": (B,) int64, <label fields>: (B, ...)}
    state = it.get_state(); it.set_state(state)   # resumable; orbax: grain.checkpoint.CheckpointSave

* Preprocessing is the model's (``hsemo_jax.models``): PIL-exact bilinear resize of the uint8
  RGB image to (S, S), then ``(x / 255 - mean) / std`` in float32. With augmentation the flip and
  affine act between the resize and the normalization, random erasing after (DDAMFN order).
* Determinism: every random draw comes from the element's own generator (grain ``random_map``:
  seed + position in the pipeline), so batches depend on the seed only, not on the number of
  workers or threads, and differ between epochs.
* Fixed shapes: every batch has ``batch_size`` rows. Rows that are not real examples (padding
  of the last batch, or an undecodable image under the 'skip' policy) have ``mask`` False and
  zero features; padding has ``index`` -1, a skipped image keeps its index.
* Sharding: ``shard_options`` (default ``grain.sharding.ShardByJaxProcess()``) gives each process
  a contiguous slice (grain's ``even_split``, as its data sources). In eval mode every shard yields the same
  number of batches (padded), so multi-host evaluation loops stay in step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import grain
import numpy as np
from grain._src.core.sharding import even_split as _even_split  # grain's own shard arithmetic

from data_pipelines.augment import DDAMFN, AugmentConfig, augment_uint8, random_erase
from data_pipelines.images import IMAGE_SUFFIXES, POLICIES, BadImage, decode_rgb
from hsemo_jax.errors import InputError
from hsemo_jax.models import PUBLISHED, get_arch, preprocess_images, resize_uint8

DEFAULT = "default"


@dataclass(frozen=True)
class Preprocessing:
    """The model input: square side S and per-channel normalization."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def for_arch(cls, name: str) -> "Preprocessing":
        """From an architecture (``ddamfn``) or published model name (``enet_b0_8_va_mtl``)."""
        arch = get_arch(PUBLISHED[name].arch if name in PUBLISHED else name)
        return cls(arch.input_size, tuple(arch.mean), tuple(arch.std))

    @classmethod
    def for_model(cls, model) -> "Preprocessing":
        """From a loaded model directory (``hsemo_jax.load_model(DIR)``; uses ``model.info``)."""
        info = model.info
        return cls(int(info.input_size), tuple(info.mean), tuple(info.std))


class ImageFolderSource:
    """Random-access source over the image files below a folder (sorted relative paths).

    ``source[i] -> {"image": bytes, "name": bytes}``; an unreadable file gives empty bytes,
    which the loader treats as a bad image (policy skip/error).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{root} is not a folder")
        self.names = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.names:
            raise InputError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        name = self.names[i]
        try:
            data = (self.root / name).read_bytes()
        except OSError:
            data = b""
        return {"image": data, "name": name.encode()}


def label_fields(example: dict) -> list[str]:
    """The numeric (non-image, non-text) fields of a source example, sorted."""
    return sorted(k for k, v in example.items()
                  if k != "image" and np.asarray(v).dtype.kind in "biuf")


def _name(record: dict, index: int) -> str:
    name = record.get("name", f"example {index}")
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


class _ShardIndices:
    """Sequence of source indices of one shard: start..end-1, then -1 up to `length`."""

    def __init__(self, start: int, end: int, length: int):
        self.start, self.end, self.length = start, end, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> int:
        j = self.start + i
        return j if j < self.end else -1


class LoadExample:
    """grain random_map transform: source index (-1 = padding) -> element dict (see module doc)."""

    def __init__(self, source, prep: Preprocessing, augment: AugmentConfig | None,
                 fields: Sequence[str], template: dict, on_bad_image: str,
                 text_fields: Sequence[str] = ()):
        self.source, self.prep, self.augment = source, prep, augment
        self.fields, self.template, self.on_bad_image = tuple(fields), template, on_bad_image
        self.text_fields = tuple(text_fields)

    def padding(self, index: int = -1, record: dict | None = None) -> dict:
        """A masked row: zeros; a bad image (record given) keeps its index and text fields."""
        s = self.prep.size
        out = {"image": np.zeros((s, s, 3), np.float32), "mask": np.bool_(False),
               "index": np.int64(index)}
        out.update({k: np.zeros_like(v) for k, v in self.template.items()})
        out.update({k: np.bytes_(record[k] if record else b"") for k in self.text_fields})
        return out

    def __call__(self, index, rng: np.random.Generator) -> dict:
        index = int(index)
        if index < 0:
            return self.padding()
        record = self.source[index]
        try:
            rgb = decode_rgb(record["image"], _name(record, index))
        except BadImage as e:
            if self.on_bad_image == "error":
                raise InputError(f"{e.name}: {e.reason}") from None
            return self.padding(index, record)
        s = self.prep.size
        img = resize_uint8(rgb, (s, s))
        if self.augment is not None:
            img = augment_uint8(img, rng, self.augment)
        x = preprocess_images(img, s, self.prep.mean, self.prep.std)[0]
        if self.augment is not None:
            random_erase(x, rng, self.augment)
        out = {"image": x, "mask": np.bool_(True), "index": np.int64(index)}
        for k in self.fields:
            out[k] = np.asarray(record[k], dtype=self.template[k].dtype)
        for k in self.text_fields:
            out[k] = np.bytes_(record[k])
        return out


class PadBatch:
    """grain batch_fn: stack a list of elements, padding a short batch with padding rows."""

    def __init__(self, batch_size: int, load: LoadExample):
        self.batch_size, self.load = batch_size, load

    def __call__(self, elements: Sequence[dict]) -> dict:
        elements = list(elements) + [self.load.padding()] * (self.batch_size - len(elements))
        return {k: np.stack([e[k] for e in elements]) for k in elements[0]}


def _enable_grain_workers() -> None:
    # grain 0.2.18 reads an absl flag in its worker processes; scripts that do not run
    # absl.app have unparsed flags and fail (google/grain#1355). Mark them parsed (defaults).
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_loader(source, prep: Preprocessing, *, batch_size: int, train: bool = False,
                seed: int = 0, augment: AugmentConfig | None | str = DEFAULT,
                num_epochs: int | None = 1, shard_options: grain.sharding.ShardOptions | None = None,
                drop_remainder: bool | None = None, fields: Sequence[str] | None = None,
                text_fields: Sequence[str] = (), on_bad_image: str = "skip",
                worker_count: int = 0, read_threads: int = 4, prefetch: int = 2) -> grain.IterDataset:
    """A grain IterDataset of fixed-shape batches (see the module docstring).

    Args:
      source: random-access source of dicts with an ``image`` (encoded bytes) field
        (``open_dataset(...)[split]``, ``ImageFolderSource``, a list of dicts).
      prep: the model's input size and normalization.
      train: shuffle (per epoch, seeded) and augment; otherwise keep the order, no augmentation.
      augment: AugmentConfig (default: the DDAMFN recipe when training), or None.
      num_epochs: passes over this shard (None = endless).
      drop_remainder: drop the last short batch (default: True when training) instead of
        padding it.
      fields: label fields to carry (default: every numeric field of the source).
      text_fields: text fields to carry as numpy bytes arrays (B,), e.g. ("name",).
      on_bad_image: 'skip' (masked row) or 'error' (InputError naming the image).
      worker_count: grain worker processes (0 = decode in this process, with threads).
      read_threads, prefetch: threads per process assembling batches; batches buffered.
    Returns: IterDataset; ``iter()`` of it is a checkpointable grain DatasetIterator.
    """
    if on_bad_image not in POLICIES:
        raise InputError(f"on_bad_image must be one of {POLICIES}, got {on_bad_image!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    n = len(source)
    if n == 0:
        raise InputError("the source has no examples")
    if augment == DEFAULT:
        augment = DDAMFN if train else None
    drop = train if drop_remainder is None else drop_remainder
    shard = shard_options if shard_options is not None else grain.sharding.ShardByJaxProcess()
    start, end = _even_split(n, shard)
    first = source[0]
    fields = label_fields(first) if fields is None else list(fields)
    missing = [k for k in [*fields, *text_fields] if k not in first]
    if missing:
        raise InputError(f"the source has no field(s) {missing}; it has {sorted(first)}")
    template = {k: np.asarray(first[k]) for k in fields}
    load = LoadExample(source, prep, augment, fields, template, on_bad_image, text_fields)

    if train:
        length = end - start
    else:  # same number of batches on every shard: pad to the largest shard
        length = n // shard.shard_count if shard.drop_remainder else math.ceil(n / shard.shard_count)
    ds = grain.MapDataset.source(_ShardIndices(start, end, length))
    if train:
        ds = ds.shuffle(seed)
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    ds = ds.random_map(load, seed=seed)
    ds = ds.batch(batch_size, drop_remainder=drop, batch_fn=PadBatch(batch_size, load))
    # Elements are whole batches here: each read thread assembles one batch at a time.
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                              prefetch_buffer_size=max(prefetch, read_threads)))
    if worker_count > 0:
        _enable_grain_workers()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                         per_worker_buffer_size=prefetch))
    return it


def num_batches(n: int, batch_size: int, shard_options: grain.sharding.ShardOptions,
                *, train: bool = False, drop_remainder: bool | None = None) -> int:
    """Batches per epoch that ``make_loader`` yields on this shard for a source of `n` examples."""
    drop = train if drop_remainder is None else drop_remainder
    start, end = _even_split(n, shard_options)
    if train:
        length = end - start
    elif shard_options.drop_remainder:
        length = n // shard_options.shard_count
    else:
        length = math.ceil(n / shard_options.shard_count)
    return length // batch_size if drop else math.ceil(length / batch_size)


__all__ = ["ImageFolderSource", "LoadExample", "Preprocessing", "label_fields", "make_loader",
           "num_batches"]
