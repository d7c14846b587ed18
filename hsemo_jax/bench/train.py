"""`hsemo-jax bench train`: training-step images/s, jitted Flax vs PyTorch eager, batch 64.
(`--dataset DIR`: the grain loader vs the train step on a dataset instead; `bench/train_data.py`.)

One step = forward in train mode (BatchNorm on batch statistics) + the multi-task pretraining loss
(class-weighted CE on the 8 logits + CCC loss on V/A, + 0.1 x the attention loss for DDAMFN) +
backward + Adam update, on uint8 images normalized inside the step. Both frameworks start from the
same weights (torch state dict converted to Flax) and get the same inputs. Each runs in its own
process, so that neither inherits the other's heap (sharing one, B0's step page-faulted ~1 M new
pages, 4 GB, on about one step in three after PyTorch had run: 9 s instead of 1.5 s), and the two
are timed interleaved, round by round; the table reports the median over rounds and the
Flax/PyTorch ratio. PyTorch references: timm for EfficientNet, the spec-written modules in the
repository's `tests/reference/` for MobileFaceNet and DDAMFN.
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time

import numpy as np

from hsemo_jax.bench.common import TABLE_HEADER, format_row, torch_reference

DEFAULT_ARCHS = ("tf_efficientnet_b0", "mobilefacenet", "ddamfn")
# untimed steps per framework before the rounds: the process heap grows to its peak over the first
# few (B0: one step of ~1 M page faults, +3.7 GB, at step 2 or later), which a long run pays once
WARMUP_STEPS = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), help="architectures to time")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    p.add_argument("--steps", type=int, default=2, help="train steps per measurement")
    p.add_argument("--no-torch", action="store_true", help="time Flax only")
    from hsemo_jax.bench import train_data

    train_data.add_arguments(p)


def _torch_step(model, arch: str, mean, std, class_weight, lr: float = 1e-4):
    """PyTorch eager train step on uint8 NHWC images; returns fn(images, expr, va) -> loss."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ce = torch.nn.CrossEntropyLoss(weight=torch.from_numpy(class_weight))
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)

    def ccc_loss(p, t):
        pm, tm = p.mean(), t.mean()
        cov = ((p - pm) * (t - tm)).mean()
        return 1 - 2 * cov / (p.var(unbiased=False) + t.var(unbiased=False) + (pm - tm) ** 2 + 1e-7)

    def step(images, expr, va):
        x = (images.permute(0, 3, 1, 2).float() / 255 - mean_t) / std_t
        out = model(x)
        heads = None
        if isinstance(out, tuple):  # DDAMNet: (out, features, heads)
            out, _, heads = out
        loss = ce(out[:, :8], expr) + 0.5 * (ccc_loss(out[:, 8], va[:, 0]) + ccc_loss(out[:, 9], va[:, 1]))
        if heads is not None:
            mse = torch.nn.functional.mse_loss(heads[0], heads[1])
            loss = loss + 0.1 * (1 / (mse + sys.float_info.epsilon))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    model.train()
    return step


def _flax_trainer(arch: str, sd: dict | None, class_weight):
    from hsemo_jax.models import registry
    from hsemo_jax import optim
    from hsemo_jax.train.loop import Trainer
    from hsemo_jax.train.objectives import BackboneObjective

    if sd is not None:
        from hsemo_jax.convert import convert_state_dict

        model = convert_state_dict(sd, arch, 10)
    else:
        model = registry.build(arch, 10)
    a = registry.get_arch(arch)
    obj = BackboneObjective(a.mean, a.std, class_weight=class_weight,
                            attention_weight=0.1 if a.family == "ddamfn" else 0.0)
    return Trainer(model, obj, optim.make_optimizer("adam", 1e-4)), a


def _rate(fn, steps: int, batch: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps * batch / (time.perf_counter() - t0)


def _inputs(arch: str, batch: int) -> dict:
    """The benchmark batch, the same in every process (seeded)."""
    from hsemo_jax.models import registry

    rng = np.random.default_rng(0)
    size = registry.get_arch(arch).input_size
    return {"images": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
            "expr": rng.integers(0, 8, batch).astype(np.int32), "expr_mask": np.ones(batch, bool),
            "va": rng.uniform(-1, 1, (batch, 2)).astype(np.float32), "va_mask": np.ones(batch, bool)}


def _flax_fn(arch: str, ref, batch_np: dict, class_weight):
    """(a step function, compile seconds) of the jitted Flax trainer."""
    import jax

    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()} if ref is not None else None
    trainer, _ = _flax_trainer(arch, sd, class_weight)
    t0 = time.perf_counter()
    jax.block_until_ready(trainer.step(batch_np))
    compile_s = time.perf_counter() - t0

    def fn():
        jax.block_until_ready(trainer.step(batch_np)["loss"])

    return fn, compile_s


def _torch_fn(arch: str, ref, batch_np: dict, class_weight):
    import torch

    from hsemo_jax.models import registry

    a = registry.get_arch(arch)
    step = _torch_step(ref, arch, a.mean, a.std, class_weight)
    images, expr = torch.from_numpy(batch_np["images"]), torch.from_numpy(batch_np["expr"].astype(np.int64))
    va = torch.from_numpy(batch_np["va"])
    return (lambda: step(images, expr, va)), 0.0


def _worker(framework: str, arch: str, batch: int, steps: int, conn) -> None:
    """A child process: build one framework's step, warm it up, then time one round per request."""
    from hsemo_jax import runtime

    runtime.configure(split_cpu=False)  # a fresh process: one CPU device, warm memory
    try:
        class_weight = np.linspace(1, 3, 8).astype(np.float32)
        ref = torch_reference(arch)
        if framework == "torch" and ref is None:
            conn.send(None)
            return
        batch_np = _inputs(arch, batch)
        fn, compile_s = (_flax_fn if framework == "flax" else _torch_fn)(arch, ref, batch_np, class_weight)
        for _ in range(WARMUP_STEPS):
            fn()
        conn.send(compile_s)
        while conn.recv():
            conn.send(_rate(fn, steps, batch))
    except Exception as e:  # reported by the parent, with the framework's name
        conn.send(e)


def _answer(conn, framework: str, arch: str):
    try:
        value = conn.recv()
    except EOFError:
        raise RuntimeError(f"the {framework} worker for {arch} exited (out of memory?)") from None
    if isinstance(value, Exception):
        raise RuntimeError(f"{framework} train step for {arch} failed: {value!r}") from value
    return value


def measure(arch: str, batch: int, rounds: int, steps: int, use_torch: bool) -> dict:
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter and heap per framework
    workers = {}
    try:
        for framework in ("flax", "torch") if use_torch else ("flax",):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(framework, arch, batch, steps, child), daemon=True)
            proc.start()
            workers[framework] = (proc, parent, None)  # stopped in `finally` if it fails to start
            # one at a time: builds and compiles do not overlap
            workers[framework] = (proc, parent, _answer(parent, framework, arch))
        rates = {f: [] for f in workers if workers[f][2] is not None}
        for _ in range(rounds):
            for framework in rates:
                conn = workers[framework][1]
                conn.send(True)
                rates[framework].append(_answer(conn, framework, arch))
    finally:
        for proc, conn, _ in workers.values():
            try:
                conn.send(False)
            except OSError:  # the worker is gone already
                pass
            proc.join(timeout=30)
    return {"arch": arch, "batch": batch, "flax": statistics.median(rates["flax"]),
            "compile_s": workers["flax"][2],
            "torch": statistics.median(rates["torch"]) if "torch" in rates else None}


def run(args: argparse.Namespace) -> int:
    if args.dataset:
        from hsemo_jax.bench import train_data

        return train_data.run(args)
    import jax

    print(f"# train step (fwd + multi-task loss + bwd + Adam): images/s, median of {args.rounds} interleaved "
          f"rounds of {args.steps} steps, jax {jax.__version__} on {jax.default_backend()} "
          f"x{jax.device_count()}")
    print(TABLE_HEADER)
    for arch in args.archs:
        print(format_row(measure(arch, args.batch_size, args.rounds, args.steps, not args.no_torch)), flush=True)
    return 0
