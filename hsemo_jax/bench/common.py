"""Shared by the benchmarks: the PyTorch reference models and the Flax-vs-PyTorch table."""
from __future__ import annotations

import sys
from pathlib import Path

TABLE_HEADER = ("| arch | batch | Flax (jit) img/s | PyTorch eager img/s | Flax / PyTorch | Flax compile s |\n"
                "|---|---|---|---|---|---|")


def torch_reference(arch: str):
    """The PyTorch original of `arch` with 10 outputs (train mode, random init, normalization
    layers as trained: `_trained_like_norms`), or None when torch/timm or the repository's
    spec-written references (`tests/reference/`) are missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    module = _random_reference(arch)
    _trained_like_norms(module)
    return module


def _trained_like_norms(module, seed: int = 0):
    """Seeded random affine parameters and running statistics for every normalization layer, in
    place. At initialization they are all ones and zeros, which a compiler with the weights as
    constants sees as one value per layer (XLA then broadcasts it anew on every call, ~30
    broadcasts in a B0 call) and which no trained checkpoint has."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)):
            with torch.no_grad():
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def _random_reference(arch: str):
    import torch
    if arch.startswith(("tf_efficientnet", "efficientnet", "mobilevit")):
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


def _ort_options(threads: int = 0):
    """All graph optimizations; `threads` intra-op threads (0: onnxruntime's default), one inter-op."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return options


def onnxruntime_reference(module, x_nchw, path, threads: int = 0):
    """`fn(x_nchw) -> scores`: `module` exported with `torch.onnx.export` (fixed input shape) and
    run by onnxruntime's CPU provider with all graph optimizations and its default threading, as
    hsemotion-onnx / EmotiEffLib run it (or `threads` intra-op threads). None when
    onnx/onnxruntime/onnxscript are missing."""
    import contextlib
    import importlib.util
    import io

    try:
        import onnxruntime as ort
        import torch
    except ImportError:
        return None
    if importlib.util.find_spec("onnxscript") is None:  # torch.onnx.export's exporter needs it
        return None

    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each pass
        torch.onnx.export(module, (x_nchw,), str(path), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), _ort_options(threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def our_onnxruntime(model, arch: str, num_classes: int, threads: int = 0):
    """`fn(x_nhwc) -> scores`: `model` exported by `hsemo_jax.export` to ONNX (dynamic batch) and
    run by onnxruntime as `onnxruntime_reference` runs torch's export. None when jax2onnx or
    onnxruntime is missing."""
    try:
        import jax2onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError:
        return None
    from hsemo_jax.checkpoint import ModelInfo
    from hsemo_jax.export import build_program, export_onnx

    program = build_program(model, ModelInfo.for_arch(arch, num_classes))
    session = ort.InferenceSession(export_onnx(program), _ort_options(threads), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {program.input_name: x})[0]


def format_row(r: dict) -> str:
    """A table row from {arch, batch, flax, torch (or None), compile_s}: TABLE_HEADER's columns,
    plus onnxruntime's two when the row has an `ort` key and our ONNX export's two (its rate and
    its ratio to onnxruntime on torch's export) when it has `ours`. A ratio is `ratios[(a, b)]`
    where the row has it (the median of per-round ratios), else the ratio of the two rates."""
    ratios = r.get("ratios", {})

    def ratio(a, b):
        return f"{ratios.get((a, b), r[a] / r[b]):.2f}x"

    cells = [r["arch"], r["batch"], f"{r['flax']:.1f}"]
    for ref in ("torch", "ort") if "ort" in r else ("torch",):
        cells += [f"{r[ref]:.1f}", ratio("flax", ref)] if r[ref] else ["-", "-"]
    if "ours" in r:
        cells += [f"{r['ours']:.1f}" if r["ours"] else "-", ratio("ours", "ort") if r["ours"] and r["ort"] else "-"]
    cells.append(f"{r['compile_s']:.1f}")
    return "| " + " | ".join(str(c) for c in cells) + " |"
