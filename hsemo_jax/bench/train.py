"""`hsemo-jax bench train`: training-step images/s, jitted Flax vs PyTorch eager, batch 64.

One step = forward in train mode (BatchNorm on batch statistics) + the multi-task pretraining loss
(class-weighted CE on the 8 logits + CCC loss on V/A, + 0.1 x the attention loss for DDAMFN) +
backward + Adam update, on uint8 images normalized inside the step. Both frameworks start from the
same weights (torch state dict converted to Flax) and get the same inputs; they are timed
interleaved, round by round, in one process, and the table reports the median over rounds and the
Flax/PyTorch ratio. PyTorch references: timm for EfficientNet, the spec-written modules in the
repository's `tests/reference/` for MobileFaceNet and DDAMFN.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from hsemo_jax.bench.common import TABLE_HEADER, format_row, torch_reference

DEFAULT_ARCHS = ("tf_efficientnet_b0", "mobilefacenet", "ddamfn")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), help="architectures to time")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    p.add_argument("--steps", type=int, default=2, help="train steps per measurement")
    p.add_argument("--no-torch", action="store_true", help="time Flax only")


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
    from hsemo_jax.train import optim
    from hsemo_jax.train.loop import Trainer
    from hsemo_jax.train.objectives import BackboneObjective

    if sd is not None:
        from hsemo_jax.convert import convert_state_dict

        model = convert_state_dict(sd, arch, 10)
    else:
        model = registry.build(arch, 10)
    a = registry.get_arch(arch)
    obj = BackboneObjective(a.mean, a.std, class_weight=class_weight, hflip=False,
                            attention_weight=0.1 if a.family == "ddamfn" else 0.0)
    return Trainer(model, obj, optim.make_optimizer("adam", 1e-4)), a


def _rate(fn, steps: int, batch: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps * batch / (time.perf_counter() - t0)


def measure(arch: str, batch: int, rounds: int, steps: int, use_torch: bool) -> dict:
    import jax

    rng = np.random.default_rng(0)
    class_weight = np.linspace(1, 3, 8).astype(np.float32)
    ref = None
    if use_torch:
        try:
            import torch
        except ImportError:
            torch = None
        ref = torch_reference(arch) if torch is not None else None
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()} if ref is not None else None
    trainer, a = _flax_trainer(arch, sd, class_weight)
    size = a.input_size
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    batch_np = {"images": images, "expr": rng.integers(0, 8, batch).astype(np.int32),
                "expr_mask": np.ones(batch, bool), "va": rng.uniform(-1, 1, (batch, 2)).astype(np.float32),
                "va_mask": np.ones(batch, bool)}
    t0 = time.perf_counter()
    jax.block_until_ready(trainer.step(batch_np))
    compile_s = time.perf_counter() - t0

    def flax_fn():
        jax.block_until_ready(trainer.step(batch_np)["loss"])

    flax_fn()
    torch_fn = None
    if ref is not None:
        step = _torch_step(ref, arch, a.mean, a.std, class_weight)
        ti = torch.from_numpy(images)
        te = torch.from_numpy(batch_np["expr"].astype(np.int64))
        tv = torch.from_numpy(batch_np["va"])
        torch_fn = lambda: step(ti, te, tv)  # noqa: E731
        torch_fn()
    flax_rates, torch_rates = [], []
    for _ in range(rounds):
        flax_rates.append(_rate(flax_fn, steps, batch))
        if torch_fn is not None:
            torch_rates.append(_rate(torch_fn, steps, batch))
    return {"arch": arch, "batch": batch, "flax": statistics.median(flax_rates), "compile_s": compile_s,
            "torch": statistics.median(torch_rates) if torch_rates else None}


def run(args: argparse.Namespace) -> int:
    import jax

    print(f"# train step (fwd + multi-task loss + bwd + Adam): images/s, median of {args.rounds} interleaved "
          f"rounds of {args.steps} steps, jax {jax.__version__} on {jax.default_backend()} "
          f"x{jax.device_count()}")
    print(TABLE_HEADER)
    for arch in args.archs:
        print(format_row(measure(arch, args.batch_size, args.rounds, args.steps, not args.no_torch)), flush=True)
    return 0
