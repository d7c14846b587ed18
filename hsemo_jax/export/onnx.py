"""ONNX from the Flax model through jax2onnx, in the layout ONNX runtimes run fastest.

1. The program is traced with every op in its XLA form and, where ONNX runtimes want another, in
   that one (`ops.xla_forms(onnx=True)`: 1x1 convolutions as Conv, global pooling as a mean over
   NCHW, eval batch norm as x * scale + shift, MobileViT's unfold and fold from NCHW): standard
   ONNX operators on NHWC tensors, each Conv between two Transposes as jax2onnx writes it.
2. `onnx_graph.simplify` removes the dynamic-batch broadcasts and computed reshapes that would pin
   those Transposes in place, and turns PReLUs into PRelu nodes.
3. onnxruntime's basic, hardware-independent graph optimizations run once, offline: constants
   folded (batch norms into the convolutions' weights and biases), Transpose pairs cancelled, so
   the saved graph is NCHW from the first convolution to the pooling; with the shapes inferred
   again, `onnx_graph.simplify` once more tidies what they moved and rewrites what onnxruntime
   would run outside its blocked NCHWc layout (PReLUs, mixed depthwise convolutions,
   squeeze-excite gates) in forms it keeps blocked. A runtime loads the graph as it is.

The model's metadata goes into `metadata_props`, one key per field, each value JSON text.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

from hsemo_jax import ops
from hsemo_jax.errors import InputError
from hsemo_jax.export import onnx_graph
from hsemo_jax.export.program import Program

OPSET = 18


def check_dtype(dtype: str) -> None:
    if dtype != "float32":
        raise InputError(f"--dtype {dtype}: ONNX export is float32 only (onnxruntime's CPU provider has no "
                         "bfloat16 convolution); use --format stablehlo for bfloat16")


def export_onnx(program: Program) -> bytes:
    """The serialized ModelProto of `program` (float32), with its metadata."""
    import onnx
    import onnx_ir as ir
    from jax2onnx import to_onnx

    check_dtype(program.metadata["dtype"])
    with ops.xla_forms(onnx=True), _quiet("jax2onnx", "onnx_ir"):
        model = to_onnx(program.fn, [program.input_spec], model_name=program.metadata["arch"], opset=OPSET,
                        input_names=[program.input_name], output_names=list(program.output_names),
                        return_mode="ir")
        proto = _optimize(ir.to_proto(onnx_graph.simplify(model)))
        proto = onnx.shape_inference.infer_shapes(proto)  # onnxruntime saves no intermediate shapes
        proto = ir.to_proto(onnx_graph.simplify(ir.from_proto(proto)))  # what the optimizer moved
    onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in program.metadata.items()})
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


@contextlib.contextmanager
def _quiet(*names):
    """The converters' loggers at ERROR: their notes on every value of unknown type would bury
    the command's one line of output."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _optimize(proto):
    """`proto` through onnxruntime's basic (portable) graph optimizations, saved and read back."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3  # no notes about the initializers it folded away
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(Path(options.optimized_model_filepath))


def read_metadata(path) -> dict:
    """The metadata an exported ONNX file carries."""
    import onnx

    proto = onnx.load(Path(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in proto.metadata_props}
