"""`hsemo-jax bench backbones`: images/s of jitted Flax vs PyTorch eager and onnxruntime, batch 1 and 32.

All engines run the same architecture with the same (random) weights on the same inputs,
interleaved round by round in one process (every other round in reverse order, so a drift in the
machine's load favours none); the table reports the median rate over rounds and, for each ratio,
the median of the per-round ratios (the two engines timed back to back under the same load; on a
shared machine that is much steadier than the ratio of two medians). onnxruntime runs the PyTorch module exported with
`torch.onnx.export` at each batch size and, beside it, the Flax model exported by `hsemo-jax export`
(jax2onnx, one graph with a dynamic batch): "our ONNX" and its ratio to torch's export under
onnxruntime. PyTorch, onnxruntime and jax2onnx are optional (the `bench` extra);
the MobileFaceNet and DDAMFN references are the spec-written modules in `tests/reference/`.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from hsemo_jax.bench.common import format_row, onnxruntime_reference, our_onnxruntime, torch_reference

DEFAULT_ARCHS = ("tf_efficientnet_b0", "mobilefacenet", "ddamfn", "mobilevitv2_150")
HEADER = ("| arch | batch | Flax (jit) img/s | PyTorch eager img/s | Flax / PyTorch | onnxruntime img/s "
          "| Flax / onnxruntime | our ONNX under onnxruntime img/s | our ONNX / torch's ONNX | Flax compile s |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), help="architectures to time")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median reported)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement, at least")
    p.add_argument("--no-torch", action="store_true", help="time Flax only")
    p.add_argument("--no-onnx", action="store_true", help="leave out onnxruntime")
    p.add_argument("--ort-threads", type=int, default=0,
                   help="onnxruntime's intra-op threads for both ONNX sessions (0: its default); 1 makes "
                        "our-vs-torch's ONNX comparisons on a loaded machine steadier")


def _rate(fn, batch: int, min_time: float) -> float:
    """Images/s of `fn()` (which processes `batch` images and blocks until done)."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time and n >= 2:
            return n * batch / dt


def measure(arch: str, batch_sizes, rounds: int, min_time: float, use_torch: bool,
            use_onnx: bool = True, ort_threads: int = 0) -> list[dict]:
    import tempfile
    from pathlib import Path

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
    ours = our_onnxruntime(model, arch, 10, threads=ort_threads) if ref is not None and use_onnx else None
    rows = []
    for batch in batch_sizes:
        x = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)
        xj = jax.device_put(jnp.asarray(x))
        t0 = time.perf_counter()
        forward(xj).block_until_ready()
        compile_s = time.perf_counter() - t0
        engines = {"flax": lambda: forward(xj).block_until_ready()}
        if ref is not None:
            import torch

            xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
            engines["torch"] = lambda: ref(xt)
            if use_onnx:
                with tempfile.TemporaryDirectory() as tmp:
                    ort_fn = onnxruntime_reference(ref, xt, Path(tmp) / f"{arch}_{batch}.onnx", threads=ort_threads)
                if ort_fn is not None:
                    xn = xt.numpy()
                    want = ref(xt)
                    want = (want[0] if isinstance(want, tuple) else want).numpy()  # DDAMNet: (scores, ...)
                    if not np.allclose(ort_fn(xn), want, rtol=1e-3, atol=1e-4 * np.abs(want).max()):
                        raise RuntimeError(f"{arch}: the onnxruntime export disagrees with PyTorch")
                    engines["ort"] = lambda: ort_fn(xn)
                if ours is not None:
                    flax_out = np.asarray(forward(xj))
                    if not np.allclose(ours(x), flax_out, rtol=1e-3, atol=1e-4 * np.abs(flax_out).max()):
                        raise RuntimeError(f"{arch}: our ONNX export disagrees with the Flax model")
                    engines["ours"] = lambda: ours(x)
        for fn in engines.values():
            fn()
        rates = {name: [] for name in engines}
        for i in range(rounds):
            for name in list(engines)[::-1 if i % 2 else 1]:
                rates[name].append(_rate(engines[name], batch, min_time))
        row = {"arch": arch, "batch": batch, "compile_s": compile_s, "torch": None, "ort": None, "ours": None}
        row.update({name: statistics.median(r) for name, r in rates.items()})
        row["ratios"] = {(a, b): statistics.median(x / y for x, y in zip(rates[a], rates[b]))
                         for a, b in (("flax", "torch"), ("flax", "ort"), ("ours", "ort")) if a in rates and b in rates}
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def run(args: argparse.Namespace) -> int:
    import jax

    threads = f", onnxruntime {args.ort_threads} thread(s)" if args.ort_threads else ""
    print(f"# backbones: images/s, median of {args.rounds} interleaved rounds (ratios: median of the per-round "
          f"ratios), jax {jax.__version__} on {jax.default_backend()}{threads}")
    print(HEADER)
    for arch in args.archs:
        measure(arch, args.batch_sizes, args.rounds, args.min_time, not args.no_torch, not args.no_onnx,
                args.ort_threads)
    return 0
