"""Shared by the benchmarks: the PyTorch reference models and the Flax-vs-PyTorch table."""
from __future__ import annotations

import sys
from pathlib import Path

TABLE_HEADER = ("| arch | batch | Flax (jit) img/s | PyTorch eager img/s | Flax / PyTorch | Flax compile s |\n"
                "|---|---|---|---|---|---|")


def torch_reference(arch: str):
    """The PyTorch original of `arch` with 10 outputs (train mode, random init), or None when
    torch/timm or the repository's spec-written references (`tests/reference/`) are missing."""
    try:
        import torch
    except ImportError:
        return None
    if arch.startswith(("tf_efficientnet", "efficientnet")):
        import timm

        return timm.create_model(arch, pretrained=False, num_classes=10)
    ref_dir = Path(__file__).resolve().parents[2] / "tests" / "reference"
    if not ref_dir.is_dir():
        return None
    if str(ref_dir) not in sys.path:
        sys.path.insert(0, str(ref_dir))
    if arch == "mobilefacenet":
        import mobilefacenet

        m = mobilefacenet.get_mbf(False, 512)
        m.fc = torch.nn.Linear(512, 10)
        return m
    import ddamfn

    return ddamfn.DDAMNet(num_class=10, num_head=2, pretrained=False)


def format_row(r: dict) -> str:
    """A TABLE_HEADER row from {arch, batch, flax, torch (or None), compile_s}."""
    torch_s = f"{r['torch']:.1f}" if r["torch"] else "-"
    ratio = f"{r['flax'] / r['torch']:.2f}x" if r["torch"] else "-"
    return f"| {r['arch']} | {r['batch']} | {r['flax']:.1f} | {torch_s} | {ratio} | {r['compile_s']:.1f} |"
