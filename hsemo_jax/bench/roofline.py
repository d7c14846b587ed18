"""`hsemo-jax bench roofline`: figures on paper, not measurements. For each backbone's bf16 train
step, the images/s its FLOPs and bytes would allow on a TPU v5e chip and an H100, and the host
cores its data loader would need to keep up.

The step is `pretrain`'s (`Trainer` with `BackboneObjective`: forward in train mode, multi-task
loss, backward, Adam on fp32 master weights; bfloat16 compute), traced with the XLA forms (what a
TPU or GPU runs; `ops.xla_forms()`) at a per-chip batch. FLOPs and bytes are XLA's cost analysis
of that program as lowered (`Lowered.cost_analysis()`), per image:
- FLOPs count every multiply-add as 2, elementwise work included.
- Bytes are counted before fusion: every operation reads its operands from memory and writes its
  result. A TPU or GPU compiler fuses elementwise chains into their producers and consumers, so
  the program it runs moves fewer bytes: these memory-bound figures are conservative, by a
  factor of a few (for B0's float32 step XLA:CPU's fused program moves 2.75x fewer bytes than
  this count of it).
  The analysis of the program compiled for CPU is no stand-in for an accelerator's: XLA:CPU runs
  bfloat16 convolutions and dots in float32 (its bf16 B0 step moves more bytes than its float32
  one) and expands grouped convolutions into dense ones (B0: 10x the FLOPs).

Roofline images/s = min(peak FLOP/s / FLOPs, bandwidth / bytes) per image. Cores to feed it =
that rate / the loader's images/s on one core: measured here (the grain loader of
`data_pipelines.loaders.make_loader` in-process on one read thread, JPEG decode + DDAMFN
augmentation + normalization of synthetic face-sized crops at the model's input size) unless
`--loader-rate` gives it.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np

DEFAULT_ARCHS = ("tf_efficientnet_b0", "efficientnet_b0", "tf_efficientnet_b2", "mobilefacenet", "ddamfn",
                 "mobilevitv2_150")


@dataclass(frozen=True)
class Chip:
    name: str
    flops: float  # peak dense bfloat16 FLOP/s
    bandwidth: float  # memory bytes/s


CHIPS = (Chip("TPU v5e", 197e12, 819e9), Chip("H100 SXM", 989e12, 3.35e12))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), help="architectures")
    p.add_argument("--batch-size", type=int, default=128, help="images per chip per step")
    p.add_argument("--loader-rate", type=float, default=None,
                   help="loader images/s per host core (default: measured on this machine)")
    p.add_argument("--loader-seconds", type=float, default=3.0, help="timed seconds per loader measurement")


def step_cost(arch: str, batch: int) -> dict:
    """{"flops", "bytes"} per image of the bf16 train step of `arch` at its input size, from XLA's
    cost analysis of the lowered program (XLA forms)."""
    import jax

    from hsemo_jax import ops
    from hsemo_jax.models import registry
    from hsemo_jax import optim
    from hsemo_jax.train import distributed
    from hsemo_jax.train.loop import Trainer
    from hsemo_jax.train.objectives import BackboneObjective

    a = registry.get_arch(arch)
    objective = BackboneObjective(a.mean, a.std, attention_weight=0.1 if a.family == "ddamfn" else 0.0,
                                  compute_dtype="bfloat16")
    trainer = Trainer(registry.build(arch, 10), objective, optim.make_optimizer("adam", 1e-4),
                      mesh=distributed.make_mesh(jax.devices()[:1]), compute_dtype="bfloat16")
    s = a.input_size
    spec = jax.ShapeDtypeStruct
    batch_spec = {"images": spec((batch, s, s, 3), np.uint8), "expr": spec((batch,), np.int32),
                  "expr_mask": spec((batch,), bool), "va": spec((batch, 2), np.float32),
                  "va_mask": spec((batch,), bool)}
    with ops.xla_forms():
        cost = jax.jit(trainer._train_step).lower(trainer.state, batch_spec).cost_analysis()
    return {"flops": cost["flops"] / batch, "bytes": cost["bytes accessed"] / batch}


def roofline(flops: float, nbytes: float, chip: Chip) -> tuple[float, str]:
    """(images/s, "compute" or "memory"): the lower of the two ceilings and which one it is."""
    compute, memory = chip.flops / flops, chip.bandwidth / nbytes
    return (compute, "compute") if compute <= memory else (memory, "memory")


def loader_rate_per_core(arch: str, seconds: float, batch: int = 32) -> float:
    """Images/s of the grain loader feeding `arch` on one core: in-process, one read thread, JPEG
    crops of the input size decoded, DDAMFN-augmented and normalized."""
    from hsemo_jax.bench.data import jpeg_source, loader_rate
    from hsemo_jax.models import registry

    size = registry.get_arch(arch).input_size
    rate, _ = loader_rate(jpeg_source(4 * batch, size), arch, batch, workers=0, threads=1, seconds=seconds,
                          augment=True)
    return rate


def rows(archs, batch: int, loader_rate: float | None = None, loader_seconds: float = 3.0) -> list[dict]:
    """One dict per arch: size, flops, bytes, loader (images/s per core), and per chip
    `<chip>` (images/s), `<chip> bound`, `<chip> cores`."""
    from hsemo_jax.models import registry

    measured: dict[int, float] = {}
    out = []
    for arch in archs:
        size = registry.get_arch(arch).input_size
        cost = step_cost(arch, batch)
        if loader_rate is None and size not in measured:  # the loader's work depends on the size only
            measured[size] = loader_rate_per_core(arch, loader_seconds)
        per_core = loader_rate if loader_rate is not None else measured[size]
        row = {"arch": arch, "size": size, **cost, "loader": per_core}
        for chip in CHIPS:
            rate, bound = roofline(cost["flops"], cost["bytes"], chip)
            row.update({chip.name: rate, f"{chip.name} bound": bound,
                        f"{chip.name} cores": math.ceil(rate / per_core)})
        out.append(row)
    return out


def format_table(table: list[dict]) -> str:
    head = ["arch", "px", "GFLOP/img", "MB/img", "FLOP/B", "loader img/s/core"]
    for chip in CHIPS:
        head += [f"{chip.name} img/s (bound)", f"{chip.name} cores"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [r["arch"], r["size"], f"{r['flops'] / 1e9:.2f}", f"{r['bytes'] / 1e6:.0f}",
                 f"{r['flops'] / r['bytes']:.1f}", f"{r['loader']:.0f}"]
        for chip in CHIPS:
            cells += [f"{r[chip.name]:,.0f} ({r[f'{chip.name} bound']})", r[f"{chip.name} cores"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def header(batch: int, loader_rate: float | None) -> str:
    import jax

    chips = "; ".join(f"{c.name}: {c.flops / 1e12:g} TFLOP/s bf16, {c.bandwidth / 1e9:g} GB/s "
                      f"(ridge {c.flops / c.bandwidth:.0f} FLOP/B)" for c in CHIPS)
    loader = (f"{loader_rate:g} images/s per core (given)" if loader_rate is not None else
              "measured on this machine: grain loader, 1 core, JPEG decode + DDAMFN augmentation at the input size")
    return ("# ON PAPER, NOT MEASURED: roofline images/s of the bf16 train step (fwd + multi-task loss + bwd + "
            f"Adam, fp32 master weights), batch {batch} per chip, XLA forms.\n"
            f"# FLOPs and bytes per image: XLA's cost analysis of the lowered program (jax {jax.__version__}); "
            "bytes counted before fusion, so the memory-bound figures are conservative.\n"
            f"# images/s = min(peak FLOP/s / FLOPs, bandwidth / bytes); {chips}.\n"
            f"# cores: host cores the loader needs to feed that rate; loader rate {loader}.")


def run(args: argparse.Namespace) -> int:
    table = rows(args.archs, args.batch_size, args.loader_rate, args.loader_seconds)
    print(header(args.batch_size, args.loader_rate))
    print(format_table(table))
    return 0
