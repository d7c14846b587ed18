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
  With ``normalize=False`` a batch holds the resized (and flipped / affine-transformed) uint8
  image and the erasing box instead: ``"image"`` uint8 (B, S, S, 3), ``"erase"`` int32 (B, 4)
  (top, left, height, width; all 0 = no erasing), normalized and erased on the accelerator
  (a quarter of the bytes to move; the box's value is 0 after normalization, torchvision's).
* Training order: exact epochs, the same for any number of processes and worker processes.
  With P shards (processes) of ``batch_size`` rows, a global batch has G = P x batch_size rows
  and an epoch S = n // G global batches (the last n - S*G rows of an epoch's order wait for a
  later epoch's draw). Epoch e's order is ``np.random.default_rng([seed, 0, e]).permutation(n)``
  or, with ``weights`` (class-balanced sampling, DDAMFN's ImbalancedDatasetSampler), n draws with
  replacement, ``rng.choice(n, n, p=weights / weights.sum())`` from the same generator. Global
  batch t = e*S + s holds the order's rows [s*G, (s+1)*G); shard p reads rows [p*B, (p+1)*B)
  of it, and the example at global position g = t*G + row draws its augmentation from
  ``np.random.default_rng([seed, 1, g])``. So one process reading whole global batches sees
  the same rows, augmented the same way, as P processes each reading its slice; training
  batches carry ``"position"`` (B,) int64, the global positions.
* Fixed shapes: every batch has ``batch_size`` rows. Rows that are not real examples (padding
  of the last evaluation batch, or an undecodable image under the 'skip' policy) have ``mask``
  False and zero features; padding has ``index`` -1, a skipped image keeps its index.
* Evaluation (``train=False``): the source in order, no augmentation; ``shard_options``
  (default ``grain.sharding.ShardByJaxProcess()``) gives each process a contiguous slice
  (grain's ``even_split``, as its data sources), and every shard yields the same number of
  batches (padded), so multi-host evaluation loops stay in step.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import grain
import numpy as np
from grain._src.core.sharding import even_split as _even_split  # grain's own shard arithmetic

from data_pipelines.augment import DDAMFN, AugmentConfig, augment_uint8, random_erase_box
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
    """Source index (-1 = padding) and a generator -> element dict (see module doc)."""

    def __init__(self, source, prep: Preprocessing, augment: AugmentConfig | None,
                 fields: Sequence[str], template: dict, on_bad_image: str,
                 text_fields: Sequence[str] = (), normalize: bool = True):
        if not normalize and augment is not None and augment.erase_value != 0:
            raise InputError("normalize=False erases to 0 after normalization; "
                             f"erase_value {augment.erase_value} needs normalize=True")
        self.source, self.prep, self.augment = source, prep, augment
        self.fields, self.template, self.on_bad_image = tuple(fields), template, on_bad_image
        self.text_fields = tuple(text_fields)
        self.normalize = normalize

    def padding(self, index: int = -1, record: dict | None = None) -> dict:
        """A masked row: zeros; a bad image (record given) keeps its index and text fields."""
        s = self.prep.size
        out = {"image": np.zeros((s, s, 3), np.float32 if self.normalize else np.uint8),
               "mask": np.bool_(False), "index": np.int64(index)}
        if not self.normalize:
            out["erase"] = np.zeros(4, np.int32)
        out.update({k: np.zeros_like(v) for k, v in self.template.items()})
        out.update({k: np.bytes_(record[k] if record else b"") for k in self.text_fields})
        return out

    def __call__(self, index, rng: np.random.Generator | None) -> dict:
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
        box = random_erase_box(rng, self.augment, s, s) if self.augment is not None else None
        if self.normalize:
            x = preprocess_images(img, s, self.prep.mean, self.prep.std)[0]
            if box is not None:
                x[box[0]:box[0] + box[2], box[1]:box[1] + box[3]] = self.augment.erase_value
            out = {"image": x}
        else:
            out = {"image": img, "erase": np.asarray(box or (0, 0, 0, 0), np.int32)}
        out.update(mask=np.bool_(True), index=np.int64(index))
        for k in self.fields:
            out[k] = np.asarray(record[k], dtype=self.template[k].dtype)
        for k in self.text_fields:
            out[k] = np.bytes_(record[k])
        return out


class TrainPositions:
    """Sequence of one shard's training examples as (source index, global position), epoch after
    epoch (the order of the module docstring); ``num_epochs`` None = endless."""

    def __init__(self, n: int, batch_size: int, shard: grain.sharding.ShardOptions, seed: int,
                 num_epochs: int | None, weights: np.ndarray | None = None):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shard_index = shard.shard_index
        self.global_batch = batch_size * shard.shard_count
        self.steps_per_epoch = n // self.global_batch
        if self.steps_per_epoch == 0:
            raise InputError(f"the source has {n} examples, fewer than one global batch of "
                             f"{self.global_batch} ({shard.shard_count} shards x {batch_size})")
        self.per_epoch = self.steps_per_epoch * batch_size
        self.num_epochs = num_epochs
        self.p = None
        if weights is not None:
            w = np.asarray(weights, np.float64)
            if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise InputError(f"weights must be {n} finite non-negative numbers, not all 0")
            self.p = w / w.sum()
        self._orders: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getstate__(self):  # worker processes rebuild the cache; locks do not pickle
        state = dict(self.__dict__)
        state["_orders"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        epochs = self.num_epochs if self.num_epochs is not None else sys.maxsize // (4 * self.per_epoch)
        return self.per_epoch * epochs

    def order(self, epoch: int) -> np.ndarray:
        """Source indices of epoch `epoch`, in order (length n)."""
        with self._lock:
            if epoch not in self._orders:
                rng = np.random.default_rng([self.seed, 0, epoch])
                self._orders[epoch] = (rng.permutation(self.n) if self.p is None
                                       else rng.choice(self.n, self.n, p=self.p))
            order = self._orders[epoch]
            for old in sorted(self._orders)[:-3]:  # elements in flight span 2-3 epochs
                del self._orders[old]
            return order

    def __getitem__(self, j: int) -> tuple[int, int]:
        epoch, rest = divmod(int(j), self.per_epoch)
        step, r = divmod(rest, self.batch_size)
        row = self.shard_index * self.batch_size + r
        position = (epoch * self.steps_per_epoch + step) * self.global_batch + row
        return int(self.order(epoch)[step * self.global_batch + row]), position


class LoadTrainExample:
    """grain map transform: (source index, global position) -> element with its augmentation
    drawn from ``default_rng([seed, 1, position])`` and a ``"position"`` field."""

    def __init__(self, load: LoadExample, seed: int):
        self.load, self.seed = load, seed

    def __call__(self, item) -> dict:
        index, position = item
        out = self.load(index, np.random.default_rng([self.seed, 1, position]))
        out["position"] = np.int64(position)
        return out


class LoadEvalExample:
    """grain map transform: source index (-1 = padding) -> element, no augmentation."""

    def __init__(self, load: LoadExample):
        self.load = load

    def __call__(self, index) -> dict:
        return self.load(index, None)


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


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
    """grain worker_init_fn: the worker exits once the process that started it is gone, so a
    training process killed with SIGKILL does not leave its decoding workers running."""
    del worker_index, worker_count
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def make_loader(source, prep: Preprocessing, *, batch_size: int, train: bool = False,
                seed: int = 0, augment: AugmentConfig | None | str = DEFAULT,
                num_epochs: int | None = 1, shard_options: grain.sharding.ShardOptions | None = None,
                fields: Sequence[str] | None = None, text_fields: Sequence[str] = (),
                on_bad_image: str = "skip", normalize: bool = True, weights=None,
                worker_count: int = 0, read_threads: int = 4, prefetch: int = 2) -> grain.IterDataset:
    """A grain IterDataset of fixed-shape batches (see the module docstring).

    Args:
      source: random-access source of dicts with an ``image`` (encoded bytes) field
        (``open_dataset(...)[split]``, ``ImageFolderSource``, a list of dicts).
      prep: the model's input size and normalization.
      batch_size: rows per batch of this shard (process); a global batch is shard_count of them.
      train: exact epochs of shuffled (or class-balanced) global batches, augmented; otherwise
        the source once in order, padded, no augmentation.
      augment: AugmentConfig (default: the DDAMFN recipe when training), or None.
      num_epochs: training epochs (None = endless); evaluation passes once.
      shard_options: this process's shard (default: by ``jax.process_index()``).
      fields: label fields to carry (default: every numeric field of the source).
      text_fields: text fields to carry as numpy bytes arrays (B,), e.g. ("name",).
      on_bad_image: 'skip' (masked row) or 'error' (InputError naming the image).
      normalize: False = uint8 images + erasing boxes, normalized on the accelerator.
      weights: training: per-example sampling weights (class-balanced sampling); None = shuffle.
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
    shard = shard_options if shard_options is not None else grain.sharding.ShardByJaxProcess()
    first = source[0]
    fields = label_fields(first) if fields is None else list(fields)
    missing = [k for k in [*fields, *text_fields] if k not in first]
    if missing:
        raise InputError(f"the source has no field(s) {missing}; it has {sorted(first)}")
    template = {k: np.asarray(first[k]) for k in fields}
    load = LoadExample(source, prep, augment if train else None, fields, template, on_bad_image,
                       text_fields, normalize)

    if train:
        positions = TrainPositions(n, batch_size, shard, seed, num_epochs, weights)
        ds = grain.MapDataset.source(positions).map(LoadTrainExample(load, seed))
    else:
        start, end = _even_split(n, shard)
        # same number of batches on every shard: pad to the largest shard
        length = n // shard.shard_count if shard.drop_remainder else math.ceil(n / shard.shard_count)
        ds = grain.MapDataset.source(_ShardIndices(start, end, length)).map(LoadEvalExample(load))
    ds = ds.batch(batch_size, drop_remainder=False, batch_fn=PadBatch(batch_size, load))
    # Elements are whole batches here: each read thread assembles one batch at a time.
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                              prefetch_buffer_size=max(prefetch, read_threads)))
    if worker_count > 0:
        _enable_grain_workers()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                         per_worker_buffer_size=prefetch),
                            worker_init_fn=_exit_with_parent)
    return it


def num_batches(n: int, batch_size: int, shard_options: grain.sharding.ShardOptions,
                *, train: bool = False) -> int:
    """Batches per epoch that ``make_loader`` yields on this shard for a source of `n` examples."""
    if train:
        return n // (batch_size * shard_options.shard_count)
    if shard_options.drop_remainder:
        length = n // shard_options.shard_count
    else:
        length = math.ceil(n / shard_options.shard_count)
    return math.ceil(length / batch_size)


__all__ = ["ImageFolderSource", "LoadExample", "Preprocessing", "TrainPositions", "label_fields",
           "make_loader", "num_batches"]
