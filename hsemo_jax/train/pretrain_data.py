"""Pretraining data: a TFDS build (`hsemo-jax build-dataset`) read through grain, as the objective's batches.

    train = open_split(cfg.data.train, cfg.data.train_split, "data.train", num_outputs=10, image_size=224)
    loader = TrainBatches(train, prep, global_batch=256, seed=0, augment=DDAMFN, workers=2)
    batch = next(loader)      # this process's rows of global batch 0:
                              # images uint8 (B, S, S, 3), erase int32 (B, 4), mask, expr, expr_mask, va, va_mask
    loader.state(); loader.grain_iterator       # checkpointed with the train state (see loop.fit)
    val = EvalBatches(open_split(..., "validation", "data.val", ...), prep, global_batch=256)

A dataset is a TFDS build directory: ``DATA_DIR/<name>[/<config>]`` or its version folder, local
or on cloud storage (``gs://...``, read through tfds / etils paths), with the features

    image       encoded image bytes (JPEG/PNG; decoded with OpenCV, resized to the model's input)
    label       8-class ClassLabel, classes named as HSE's (any order; or AffectNet codes "0".."7")
    or expression  int, Aff-Wild2 order 0..7, -1 = missing (+ optional expression_mask)
    va          float (2,) valence, arousal (+ optional va_mask, () or (2,)); outside [-1, 1] =
                missing; needed when the model has VA outputs (model.num_outputs = 10)

which the builders write: AffectNet (`label` in HSE order, `va`, `va_mask`), s-Aff-Wild2 and
Aff-Wild2 (`expression` in the Aff-Wild2 order, mapped to the model's HSE order with Other ->
Contempt as HSEmotion does, `va` with -5 = missing). Anything else is refused with an InputError
naming the config field, the dataset and its feature, before a model is built.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hsemo_jax.errors import InputError
from hsemo_jax.labels import HSE_CLASSES_8, HSE_TO_AFFWILD

NUM_EXPR = 8
SCAN_CHUNK = 1024


@dataclass(frozen=True)
class LabelSpec:
    """Which features hold the labels and how they map to the objective's fields."""

    expr_field: str                   # "label" or "expression"
    expr_to_hse: np.ndarray | None    # dataset class -> HSE index (None: already HSE order)
    expr_mask_field: str | None
    va_field: str | None
    va_mask_field: str | None

    @property
    def fields(self) -> list[str]:
        return [f for f in (self.expr_field, self.expr_mask_field, self.va_field, self.va_mask_field) if f]

    def expr(self, values, mask=None) -> tuple[np.ndarray, np.ndarray]:
        """Dataset labels (N,) (+ their mask) -> (HSE index (N,) int32, labelled (N,) bool)."""
        y = np.asarray(values).astype(np.int64)
        ok = (y >= 0) & (y < NUM_EXPR)
        if mask is not None:
            ok &= np.asarray(mask, bool)
        y = np.where(ok, y, 0)
        if self.expr_to_hse is not None:
            y = self.expr_to_hse[y]
        return y.astype(np.int32), ok

    def va(self, values, mask=None) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2) floats (+ mask () or (2,) per row) -> (va (N, 2) float32, labelled (N,) bool)."""
        v = np.asarray(values, np.float32)
        ok = (np.abs(v) <= 1).all(axis=1)
        if mask is not None:
            m = np.asarray(mask, bool)
            ok &= m.all(axis=1) if m.ndim == 2 else m
        return np.where(ok[:, None], v, 0).astype(np.float32), ok

    def batch(self, b: dict) -> dict:
        """A loader batch -> the objective's fields (rows with mask False get no label)."""
        mask = np.asarray(b["mask"], bool)
        expr, expr_mask = self.expr(b[self.expr_field], b[self.expr_mask_field] if self.expr_mask_field else None)
        if self.va_field:
            va, va_mask = self.va(b[self.va_field], b[self.va_mask_field] if self.va_mask_field else None)
        else:
            va, va_mask = np.zeros((len(mask), 2), np.float32), np.zeros(len(mask), bool)
        out = {"images": b["image"], "mask": mask, "expr": expr, "expr_mask": expr_mask & mask,
               "va": va, "va_mask": va_mask & mask}
        if "erase" in b:
            out["erase"] = b["erase"]
        return out


def _class_map(names: list[str], where: str) -> np.ndarray | None:
    """ClassLabel names -> HSE index per class (None if already the HSE order)."""
    from data_pipelines.affectnet import folder_label

    if [n.lower() for n in names] == [n.lower() for n in HSE_CLASSES_8]:
        return None
    mapped = [folder_label(n) for n in names]
    if len(names) != NUM_EXPR or None in mapped or len(set(mapped)) != NUM_EXPR:
        raise InputError(f"{where}: feature 'label' has {len(names)} classes ({', '.join(names)}); the model's "
                         f"{NUM_EXPR} expression outputs need HSE's {NUM_EXPR} ({', '.join(HSE_CLASSES_8)}), "
                         "named so, or AffectNet codes 0..7")
    return np.asarray(mapped, np.int64)


def label_spec(features, where: str, num_outputs: int) -> LabelSpec:
    """The LabelSpec of a dataset's tfds FeaturesDict; InputError if it does not fit the model."""
    import tensorflow_datasets as tfds

    def tensor(name, shapes, kinds):
        f = features[name]
        dtype = np.dtype(getattr(f, "np_dtype", object))
        if tuple(f.shape) not in shapes or dtype.kind not in kinds:
            raise InputError(f"{where}: feature {name!r} is {dtype.name} {tuple(f.shape)}; expected "
                             f"{' or '.join(str(s) for s in shapes)} of kind {kinds}")
        return name

    names = set(features.keys())
    expr_field = expr_map = expr_mask = None
    if "label" in names:
        f = features["label"]
        if isinstance(f, tfds.features.ClassLabel):
            expr_map = _class_map(list(f.names), where)
        else:
            tensor("label", [()], "iu")
        expr_field = "label"
    elif "expression" in names:
        expr_field = tensor("expression", [()], "iu")
        expr_map = np.asarray(HSE_TO_AFFWILD, np.int64)  # Aff-Wild2 class j -> HSE index
        if "expression_mask" in names:
            expr_mask = tensor("expression_mask", [()], "b")
    else:
        raise InputError(f"{where}: no expression label: expected a feature 'label' (HSE classes) or "
                         f"'expression' (Aff-Wild2 order); the dataset has {', '.join(sorted(names))}")
    va_field = va_mask = None
    if "va" in names:
        va_field = tensor("va", [(2,)], "f")
        if "va_mask" in names:
            va_mask = tensor("va_mask", [(), (2,)], "b")
    elif num_outputs == 10:
        raise InputError(f"{where}: no feature 'va' (valence, arousal), which model.num_outputs = 10 trains; "
                         "use a dataset with VA labels or model.num_outputs = 8")
    return LabelSpec(expr_field, expr_map, expr_mask, va_field, va_mask)


def _check_image(features, where: str, size: int) -> None:
    import tensorflow_datasets as tfds

    if "image" not in features.keys():
        raise InputError(f"{where}: no feature 'image'; the dataset has {', '.join(sorted(features.keys()))}")
    f = features["image"]
    encoded = (not isinstance(f, tfds.features.Image) and tuple(f.shape) == ()
               and np.dtype(f.np_dtype).kind in "OSU")
    if not encoded:
        shape = tuple(getattr(f, "shape", ()))
        raise InputError(f"{where}: feature 'image' holds decoded {np.dtype(f.np_dtype).name} {shape} arrays; "
                         f"pretraining reads encoded images (JPEG/PNG bytes, as `hsemo-jax build-dataset` writes "
                         f"them) and resizes them to the model's {size}x{size}")


@dataclass
class Split:
    """One split of a TFDS build: its random-access source, where it came from, its label spec."""

    source: object
    where: str     # "data.train: DIR (split train)" for messages
    spec: LabelSpec

    def __len__(self) -> int:
        return len(self.source)

    def scan_labels(self) -> dict[str, np.ndarray]:
        """Every example's labels (reads each record once): expr, expr_mask, va_mask."""
        n = len(self.source)
        exprs, masks, vas, va_masks = [], [], [], []
        fields = self.spec.fields
        for start in range(0, n, SCAN_CHUNK):
            records = self.source.__getitems__(list(range(start, min(n, start + SCAN_CHUNK))))
            cols = {k: [r[k] for r in records] for k in fields}
            e, m = self.spec.expr(cols[self.spec.expr_field], cols.get(self.spec.expr_mask_field))
            exprs.append(e)
            masks.append(m)
            if self.spec.va_field:
                _, vm = self.spec.va(np.stack(cols[self.spec.va_field]), cols.get(self.spec.va_mask_field))
                va_masks.append(vm)
        expr, mask = np.concatenate(exprs), np.concatenate(masks)
        va_mask = np.concatenate(va_masks) if va_masks else np.zeros(n, bool)
        return {"expr": expr, "expr_mask": mask, "va_mask": va_mask}


def open_split(path: str, split: str, field: str, *, num_outputs: int, image_size: int) -> Split:
    """The split `split` of the TFDS build at `path` (named by config field `field` in errors),
    checked against the model: its image feature, label features and first image."""
    from data_pipelines.build import open_dataset, find_version_dir
    from data_pipelines.images import BadImage, decode_rgb

    if not path:
        raise InputError(f"{field}: no dataset given (a directory written by `hsemo-jax build-dataset`)")
    try:
        version_dir = find_version_dir(path)
    except InputError as e:
        raise InputError(f"{field}: {e}") from None
    where = f"{field}: {path}"
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder_from_directory(str(version_dir))
    except Exception as e:  # a broken dataset_info.json / features.json
        raise InputError(f"{where}: not a readable TFDS build ({type(e).__name__}: {e})") from None
    if split not in builder.info.splits:
        raise InputError(f"{where}: no split {split!r} (splits: {', '.join(builder.info.splits) or 'none'})")
    features = builder.info.features
    _check_image(features, where, image_size)
    spec = label_spec(features, where, num_outputs)
    source = open_dataset(version_dir, split)
    where = f"{where} (split {split})"
    if len(source) == 0:
        raise InputError(f"{where}: no examples")
    first = source[0]
    name = first.get("name", b"example 0")
    try:
        decode_rgb(first["image"], name.decode(errors="replace") if isinstance(name, bytes) else str(name))
    except BadImage as e:
        raise InputError(f"{where}: feature 'image' of example 0 is not a decodable image ({e})") from None
    return Split(source, where, spec)


def _shard(global_batch: int):
    """(rows per process, this process's grain ShardOptions) of a global batch."""
    import grain
    import jax

    count, index = jax.process_count(), jax.process_index()
    if global_batch % count:
        raise InputError(f"the global batch {global_batch} is not a multiple of the {count} processes")
    return global_batch // count, grain.sharding.ShardOptions(index, count)


class TrainBatches:
    """Endless training batches for `loop.fit`: this process's rows of each global batch (exact
    epochs, see `data_pipelines.loaders`), with the position `state()` / `restore()` and the grain
    iterator (`grain_iterator`) that the checkpoints save."""

    def __init__(self, split: Split, prep, *, global_batch: int, seed: int, augment, weights=None,
                 workers: int = 0, read_threads: int = 4, prefetch: int = 2):
        from data_pipelines.loaders import make_loader

        self.split = split
        self.global_batch, self.seed = global_batch, seed
        self.rows = len(split)
        self.batches_per_epoch = self.rows // global_batch
        if self.batches_per_epoch == 0:
            raise InputError(f"{split.where}: {self.rows} examples, fewer than one global batch "
                             f"(train.batch_size = {global_batch})")
        self.local_batch, shard = _shard(global_batch)
        self.sampling = "class_balanced" if weights is not None else "shuffle"
        self.dataset = make_loader(split.source, prep, batch_size=self.local_batch, train=True, seed=seed,
                                   augment=augment, num_epochs=None, shard_options=shard, fields=split.spec.fields,
                                   normalize=False, weights=weights, worker_count=workers,
                                   read_threads=read_threads, prefetch=prefetch)
        self.grain_iterator = iter(self.dataset)
        self.consumed = 0  # global batches taken

    @property
    def epoch(self) -> int:
        return self.consumed // self.batches_per_epoch

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        b = next(self.grain_iterator)
        t = int(b["position"][0]) // self.global_batch
        if t != self.consumed:
            raise RuntimeError(f"the data iterator is at global batch {t}, the run at {self.consumed}: "
                               "its checkpointed state does not match the run's")
        self.consumed += 1
        return self.split.spec.batch(b)

    def state(self) -> dict:
        return {"epoch": self.epoch, "batch": self.consumed % self.batches_per_epoch, "seed": self.seed,
                "rows": self.rows, "global_batch": self.global_batch, "sampling": self.sampling}

    def restore(self, state: dict) -> None:
        """Take the position of a checkpoint's `state()` (the grain iterator is restored with it)."""
        mine = self.state()
        for k in ("seed", "rows", "global_batch", "sampling"):
            if state.get(k, mine[k]) != mine[k]:
                raise InputError(f"the checkpointed data position ({k} = {state.get(k)}) does not match this "
                                 f"run's data ({k} = {mine[k]})")
        self.consumed = int(state["epoch"]) * self.batches_per_epoch + int(state["batch"])

    def close(self) -> None:
        close = getattr(self.grain_iterator, "close", None)
        if close is not None:
            close()


class EvalBatches:
    """A validation split as this process's fixed-shape batches ("mask" flags real rows), in
    order, every process the same number (`Trainer.evaluate` gathers them)."""

    def __init__(self, split: Split, prep, *, global_batch: int, workers: int = 0, read_threads: int = 4,
                 prefetch: int = 2):
        from data_pipelines.loaders import make_loader

        self.split = split
        self.local_batch, shard = _shard(global_batch)
        self.dataset = make_loader(split.source, prep, batch_size=self.local_batch, train=False,
                                   shard_options=shard, fields=split.spec.fields, normalize=False,
                                   worker_count=workers, read_threads=read_threads, prefetch=prefetch)

    def __len__(self) -> int:
        return len(self.split)

    def __iter__(self):
        it = iter(self.dataset)
        try:
            for b in it:
                yield self.split.spec.batch(b)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()


def balanced_weights(expr: np.ndarray, expr_mask: np.ndarray) -> np.ndarray:
    """DDAMFN's ImbalancedDatasetSampler weights: 1 / (examples of the row's class); rows with no
    expression label count as one more class."""
    groups = np.where(expr_mask, expr, NUM_EXPR)
    counts = np.bincount(groups, minlength=NUM_EXPR + 1)
    return 1.0 / counts[groups]
