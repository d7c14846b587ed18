"""`hsemo-jax bench train --dataset DIR`: can the grain loader feed the train step on this machine?

DIR is a TFDS build (`hsemo-jax build-dataset`), or an AffectNet copy (official CSV or folder
layout, e.g. `python -m data_pipelines.make_synthetic_affectnet DIR`) that is built first into
`--build-dir` (default DIR_tfds beside it; reused when already there). Then, on its train split:

* the loader exactly as `hsemo-jax pretrain` runs it (decode with OpenCV, PIL-exact resize, the
  recipe's augmentation, uint8 batches) at each size, recipe and worker count: images/s, and
  images per CPU-second of this process and its grain workers ("per core": what one core
  sustains, the number to size a TPU host's `data.workers` with);
* the train step of the architecture of each size (Trainer + BackboneObjective: forward, loss,
  backward, Adam) on the same batches' shapes: images/s after compilation;
* loader/step: the best loader images/s at that size and recipe over the step's images/s, each
  measured alone on the machine (goal >= 3: decoding then needs at most a third of the CPU the
  step would need).

`--train-epoch ARCH` also trains ARCH for one epoch from the build end to end (`run_pretrain`,
validation on the build's validation split) and reports its wall time and validation metrics.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

RECIPES = ("hsemotion", "ddamfn", "ddamfn++")
STEP_ARCHS = {112: "mobilefacenet", 224: "tf_efficientnet_b0"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("with --dataset (loader vs train step)")
    g.add_argument("--dataset", metavar="DIR", help="a TFDS build, or an AffectNet copy to build first")
    g.add_argument("--build-dir", metavar="DIR", help="where an AffectNet copy is built (default: DIR_tfds)")
    g.add_argument("--sizes", nargs="+", type=int, default=[112, 224], help="model input sides")
    g.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES, help="augmentation recipes")
    g.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2], help="grain worker process counts")
    g.add_argument("--read-threads", type=int, default=2, help="threads per process assembling batches")
    g.add_argument("--seconds", type=float, default=5.0, help="timed seconds per measurement")
    g.add_argument("--no-train-step", action="store_true", help="time the loader only")
    g.add_argument("--train-epoch", metavar="ARCH", help="also train ARCH one epoch from the build (e.g. tiny_cnn)")


def dataset_dir(path: str, build_dir: str | None) -> Path:
    """A TFDS build directory for `path`: itself, or its AffectNet build (built if missing)."""
    from data_pipelines.build import build_dataset, find_version_dir
    from hsemo_jax.errors import InputError

    try:
        find_version_dir(path)
        return Path(path)
    except InputError:
        pass
    out = Path(build_dir) if build_dir else Path(str(Path(path).absolute()) + "_tfds")
    if (out / "affectnet").is_dir():
        return out / "affectnet"
    t0 = time.perf_counter()
    (result,) = build_dataset("affectnet", path, out, progress=False)
    report = result.report
    print(f"# built {result.path} in {time.perf_counter() - t0:.0f} s: "
          + ", ".join(f"{s} {r['written']} written, {r['skipped']} skipped" for s, r in report.items()), flush=True)
    return out / "affectnet"


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process and its live children (grain workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def loader_rate(source, size: int, recipe: str, workers: int, batch: int, threads: int,
                seconds: float) -> dict:
    """{images_per_s, per_core (images per CPU-second), first_batch_s} of the pretraining loader."""
    import grain

    from data_pipelines.augment import PRESETS
    from data_pipelines.loaders import Preprocessing, make_loader

    prep = Preprocessing(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    ds = make_loader(source, prep, batch_size=batch, train=True, seed=0, augment=PRESETS[recipe], num_epochs=None,
                     shard_options=grain.sharding.NoSharding(), normalize=False, worker_count=workers,
                     read_threads=threads, prefetch=2)
    it = iter(ds)
    t0 = time.perf_counter()
    next(it)
    first = time.perf_counter() - t0
    for _ in range(2 * max(workers, 1)):  # every worker up and its buffer filled
        next(it)
    n, cpu0, t0 = 0, _cpu_seconds(), time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        next(it)
        n += 1
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    it.close()
    return {"images_per_s": n * batch / wall, "per_core": n * batch / max(cpu, 1e-9), "first_batch_s": first}


def step_rate(arch: str, batch: int, seconds: float) -> dict:
    """{images_per_s, compile_s} of the pretraining train step of `arch` (uint8 batches + erasing boxes)."""
    import jax

    from hsemo_jax.models import registry
    from hsemo_jax import optim
    from hsemo_jax.train.loop import Trainer
    from hsemo_jax.train.objectives import BackboneObjective

    a = registry.get_arch(arch)
    trainer = Trainer(registry.build(arch, 10), BackboneObjective(
        a.mean, a.std, attention_weight=0.1 if a.family == "ddamfn" else 0.0), optim.make_optimizer("adam", 1e-4))
    rng = np.random.default_rng(0)
    s = a.input_size
    b = {"images": rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8), "erase": np.zeros((batch, 4), np.int32),
         "expr": rng.integers(0, 8, batch).astype(np.int32), "expr_mask": np.ones(batch, bool),
         "va": rng.uniform(-1, 1, (batch, 2)).astype(np.float32), "va_mask": np.ones(batch, bool)}
    t0 = time.perf_counter()
    jax.block_until_ready(trainer.step(b))
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(trainer.step(b))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        jax.block_until_ready(trainer.step(b)["loss"])
        n += 1
    return {"images_per_s": n * batch / (time.perf_counter() - t0), "compile_s": compile_s}


def train_epoch(data: Path, arch: str, batch: int, workers: int) -> dict:
    """One epoch of `hsemo-jax pretrain` from the build; {seconds, steps, validation metrics}."""
    from hsemo_jax.train.config import load_config
    from hsemo_jax.train.runners import run_pretrain

    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as run:
        cfg = load_config(None, [f'model.arch="{arch}"', f'data.train="{data}"', f'data.val="{data}"',
                                 f"train.batch_size={batch}", "train.epochs=1", f"data.workers={workers}",
                                 'data.augment="ddamfn"', f'run_dir="{run}/run"', "train.progress=false",
                                 "checkpoint.save_every=0"])
        t0 = time.perf_counter()
        metrics = run_pretrain(cfg)
        return {"seconds": time.perf_counter() - t0, **metrics}


def run(args: argparse.Namespace) -> int:
    import jax

    from data_pipelines.build import open_dataset
    from hsemo_jax.runtime import cpu_core_count

    data = dataset_dir(args.dataset, args.build_dir)
    source = open_dataset(data, "train")
    cores = cpu_core_count()
    batch = args.batch_size
    print(f"# {data}: {len(source)} training images; batch {batch}, {args.read_threads} read threads per "
          f"process, {cores} CPU cores, jax {jax.__version__} on {jax.default_backend()}")
    print("# per core = images per CPU-second of the loader's processes (main + grain workers)")
    steps = {}
    if not args.no_train_step:
        for size in args.sizes:
            arch = STEP_ARCHS.get(size)
            if arch is not None:
                steps[size] = (arch, step_rate(arch, batch, args.seconds))
    print("| size | recipe | workers | loader img/s | img/s per core | first batch s | train step | step img/s "
          "| loader/step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for recipe in args.recipes:
            for w in args.workers:
                r = loader_rate(source, size, recipe, w, batch, args.read_threads, args.seconds)
                arch, step = steps.get(size, ("-", None))
                cells = [size, recipe, w, f"{r['images_per_s']:.0f}", f"{r['per_core']:.0f}",
                         f"{r['first_batch_s']:.1f}", arch,
                         f"{step['images_per_s']:.1f}" if step else "-",
                         f"{r['images_per_s'] / step['images_per_s']:.1f}" if step else "-"]
                print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
    for size, (arch, step) in steps.items():
        print(f"# train step {arch} @{size}: {step['images_per_s']:.1f} images/s (compile {step['compile_s']:.0f} s)")
    if args.train_epoch:
        res = train_epoch(data, args.train_epoch, batch, max(args.workers))
        shown = ", ".join(f"{k} {v:.4g}" for k, v in res.items() if k != "seconds")
        print(f"# one epoch of {args.train_epoch} on {len(source)} images: {res['seconds']:.0f} s; validation: {shown}")
    return 0


__all__ = ["add_arguments", "run", "loader_rate", "step_rate", "dataset_dir", "train_epoch"]
