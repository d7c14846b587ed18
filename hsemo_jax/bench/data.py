"""`hsemo-jax bench data`: decoded + augmented images/s of the grain loader vs worker count,
next to the images/s of a training step of the model it feeds, on this machine.

The source is in memory (JPEG face crops encoded with OpenCV, by default 112x112 like the
Aff-Wild2 ``cropped_aligned`` frames; ``--source-size 256`` is closer to AffectNet crops), so the
numbers measure decoding, resizing, augmentation and batching, not disk reads. The training step
is a jitted forward + backward of cross-entropy with an SGD update on a randomly initialized
model (optimizer math is negligible next to the backward pass): the loader keeps up when its
rate is above the step's.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="ddamfn", help="model whose preprocessing (and train step) to use")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2],
                   help="grain worker process counts to time (0 = in-process threads)")
    p.add_argument("--threads", type=int, default=2, help="read threads per process")
    p.add_argument("--num-images", type=int, default=512, help="distinct images in the source")
    p.add_argument("--source-size", type=int, default=112, help="side of the stored JPEG crops")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per setting")
    p.add_argument("--no-augment", action="store_true", help="decode + preprocess only")
    p.add_argument("--no-train-step", action="store_true", help="skip timing the training step")


def jpeg_source(n: int, size: int) -> list[dict]:
    """`n` in-memory records {"image": JPEG bytes, "label"}: size x size face-sized crops of one
    photo (deterministic), the loader's input for `bench data` and the roofline's loader rate."""
    import cv2

    try:
        from skimage import data

        base = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    except ImportError:  # a smooth synthetic picture compresses like a photo
        yy, xx = np.mgrid[0:512, 0:512]
        base = np.stack([xx // 2, yy // 2, (xx + yy) // 4], -1).astype(np.uint8)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        s = int(rng.integers(size, 2 * size)) if size < 256 else size
        y, x = rng.integers(0, 512 - s, 2)
        crop = cv2.resize(base[y:y + s, x:x + s], (size, size), interpolation=cv2.INTER_AREA)
        out.append({"image": cv2.imencode(".jpg", crop)[1].tobytes(), "label": np.int64(i % 8)})
    return out


def loader_rate(source, arch: str, batch: int, workers: int, threads: int, seconds: float,
                augment: bool) -> tuple[float, float]:
    """(images/s after warm-up, seconds to the first batch)."""
    import grain

    from data_pipelines.loaders import Preprocessing, make_loader

    ds = make_loader(source, Preprocessing.for_arch(arch), batch_size=batch, train=True, seed=0,
                     augment="default" if augment else None, num_epochs=None,
                     shard_options=grain.sharding.NoSharding(), worker_count=workers,
                     read_threads=threads)
    it = iter(ds)
    t0 = time.perf_counter()
    next(it)
    first = time.perf_counter() - t0
    for _ in range(max(workers, 1)):  # let every worker fill its buffer
        next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        next(it)
        n += 1
    rate = n * batch / (time.perf_counter() - t0)
    if hasattr(it, "close"):
        it.close()
    return rate, first


def train_step_rate(arch: str, batch: int, seconds: float) -> float:
    """Images/s of a jitted forward + backward + SGD update (cross-entropy, 8 classes)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from hsemo_jax.models import build, get_arch

    model = build(arch, 8)
    model.train()  # batch statistics, as in training
    size = get_arch(arch).input_size

    @nnx.jit
    def step(model, x, y):
        def loss_fn(m):
            logits = m.head(m.features(x))
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        params = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads))
        return loss

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, size, size, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 8, batch))
    step(model, x, y).block_until_ready()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        step(model, x, y).block_until_ready()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> int:
    import os

    source = jpeg_source(args.num_images, args.source_size)
    what = "decode + preprocess" + ("" if args.no_augment else " + DDAMFN augmentation")
    print(f"# data loader: {what}, {args.arch} input, {args.source_size}px JPEG source, "
          f"batch {args.batch_size}, {args.threads} read threads/process, {os.cpu_count()} CPUs")
    print("| workers | images/s | first batch s |")
    print("|---|---|---|")
    for w in args.workers:
        rate, first = loader_rate(source, args.arch, args.batch_size, w, args.threads, args.seconds,
                                  not args.no_augment)
        print(f"| {w} | {rate:.0f} | {first:.2f} |", flush=True)
    if not args.no_train_step:
        import jax

        rate = train_step_rate(args.arch, args.batch_size, args.seconds)
        print(f"\ntrain step ({args.arch}, batch {args.batch_size}, fwd+bwd+SGD, "
              f"{jax.default_backend()}): {rate:.1f} images/s")
    return 0
