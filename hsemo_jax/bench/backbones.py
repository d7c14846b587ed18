"""`hsemo-jax bench backbones`: images/s of jitted Flax vs PyTorch eager, batch 1 and 32.

Both frameworks run the same architecture with the same (random) weights on the same inputs,
interleaved round by round in one process; the table reports the median over rounds and the
Flax/PyTorch ratio. PyTorch is optional (the `test` extra); the MobileFaceNet and DDAMFN
references are the spec-written modules in the repository's `tests/reference/`.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from hsemo_jax.bench.common import TABLE_HEADER, format_row, torch_reference

DEFAULT_ARCHS = ("tf_efficientnet_b0", "mobilefacenet", "ddamfn")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), help="architectures to time")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median reported)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement, at least")
    p.add_argument("--no-torch", action="store_true", help="time Flax only")


def _rate(fn, batch: int, min_time: float) -> float:
    """Images/s of `fn()` (which processes `batch` images and blocks until done)."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time and n >= 2:
            return n * batch / dt


def measure(arch: str, batch_sizes, rounds: int, min_time: float, use_torch: bool) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from hsemo_jax.convert import convert_state_dict
    from hsemo_jax.models import registry
    from hsemo_jax.models.inference import make_forward

    size = registry.get_arch(arch).input_size
    ref = torch_reference(arch) if use_torch else None
    if ref is not None:  # same weights in both frameworks
        import torch

        torch.set_grad_enabled(False)
        ref.eval()
        sd = {k: v.numpy() for k, v in ref.state_dict().items()}
        model = convert_state_dict(sd, arch, 10)
    else:
        model = registry.build(arch, 10)
    forward = make_forward(model)
    rows = []
    for batch in batch_sizes:
        x = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)
        xj = jax.device_put(jnp.asarray(x))
        t0 = time.perf_counter()
        forward(xj).block_until_ready()
        compile_s = time.perf_counter() - t0
        flax_fn = lambda: forward(xj).block_until_ready()  # noqa: E731
        if ref is not None:
            import torch

            xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
            torch_fn = lambda: ref(xt)  # noqa: E731
            torch_fn()
        flax_rates, torch_rates = [], []
        for _ in range(rounds):
            flax_rates.append(_rate(flax_fn, batch, min_time))
            if ref is not None:
                torch_rates.append(_rate(torch_fn, batch, min_time))
        row = {"arch": arch, "batch": batch, "flax": statistics.median(flax_rates), "compile_s": compile_s,
               "torch": statistics.median(torch_rates) if torch_rates else None}
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def run(args: argparse.Namespace) -> int:
    import jax

    print(f"# backbones: images/s, median of {args.rounds} interleaved rounds, "
          f"jax {jax.__version__} on {jax.default_backend()}")
    print(TABLE_HEADER)
    for arch in args.archs:
        measure(arch, args.batch_sizes, args.rounds, args.min_time, not args.no_torch)
    return 0
