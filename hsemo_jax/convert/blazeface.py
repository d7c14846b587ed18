"""BlazeFace weights from MediaPipe's `.tflite` files (the bundled ones, or a file given by path).

The files' convolutions, in execution order, are the model's `conv_layers()` in order: each is
checked (depthwise or dense, kernel and bias shapes, stride, "SAME" padding, no fused activation,
no dilation) before its weights are copied, TFLite's OHWI kernels (depthwise: 1HWC) transposed to
HWIO. The other operators the model hard-codes are checked too (2x2 max pooling, channel padding
at the end, half-pixel bilinear upsampling), so a file that is not one of the two BlazeFace models
is refused with a one-line error instead of being loaded into the wrong layers.
"""
from __future__ import annotations

import os
from pathlib import Path

import jax

from hsemo_jax.convert.tflite_reader import Graph, read_tflite
from hsemo_jax.errors import CheckpointError, InputError
from hsemo_jax.models import blazeface, registry
from hsemo_jax.models.detection import ssd_anchors


def _variant_of(graph: Graph) -> str:
    """The BlazeFace variant a graph is, from its input and output shapes."""
    ins = [graph.tensors[i].shape for i in graph.inputs]
    outs = sorted(graph.tensors[i].shape for i in graph.outputs)
    for name, v in blazeface.VARIANTS.items():
        anchors = len(ssd_anchors(v))
        if ins == [(1, v.input_size, v.input_size, 3)] and outs == [(1, anchors, 1), (1, anchors, 16)]:
            return name
    raise CheckpointError(f"{graph.source}: not a BlazeFace model (input {ins}, outputs {outs}; expected "
                          "input (1, 128, 128, 3) with outputs (1, 896, 16) and (1, 896, 1), or (1, 192, 192, 3) "
                          "with (1, 2304, 16) and (1, 2304, 1))")


def _check_structure(graph: Graph) -> None:
    """The fixed operators of the model are what `models.blazeface` computes."""
    for op in graph.operators:
        where = f"{graph.source}: {op.op} producing {graph.tensors[op.outputs[0]].name!r}"
        if op.op == "MAX_POOL_2D" and (op.options.get("window"), op.options.get("stride")) != ((2, 2), (2, 2)):
            raise CheckpointError(f"{where} is {op.options}; BlazeFace pools 2x2 with stride 2")
        if op.op == "PAD":
            pads = graph.tensors[op.inputs[1]].data
            if pads is None or pads.shape != (4, 2) or pads[:3].any() or pads[3, 0] != 0:
                raise CheckpointError(f"{where} pads {None if pads is None else pads.tolist()}; BlazeFace appends "
                                      "zero channels only")
        if op.op == "RESIZE_BILINEAR" and (op.options.get("align_corners"), op.options.get("half_pixel_centers")) \
                != (False, True):
            raise CheckpointError(f"{where} has {op.options}; BlazeFace upsamples with half-pixel centres")


def _load_conv(graph: Graph, op, conv, index: int) -> None:
    kernel = graph.constant(op.inputs[1])
    bias = graph.constant(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    kh, kw, cin_g, cout = conv.kernel[...].shape
    depthwise = conv.groups > 1
    where = f"{graph.source}: convolution {index} ({graph.tensors[op.inputs[1]].name!r})"
    if op.op != ("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D"):
        raise CheckpointError(f"{where} is {op.op}; expected {'a depthwise' if depthwise else 'a dense'} convolution")
    # TFLite kernels: dense (out, kh, kw, in); depthwise (1, kh, kw, channels)
    hwio = kernel.transpose(1, 2, 0, 3) if depthwise else kernel.transpose(1, 2, 3, 0)
    expected = dict(padding="SAME", stride=conv.strides, activation="NONE", dilation=(1, 1))
    got = {k: op.options.get(k) for k in expected}
    if (kh, kw) == (1, 1) and got["padding"] == "VALID":  # the same convolution for a 1x1 kernel
        got["padding"] = "SAME"
    if hwio.shape != (kh, kw, cin_g, cout) or bias is None or bias.shape != (cout,) or got != expected:
        raise CheckpointError(f"{where}: kernel {kernel.shape}, bias {None if bias is None else bias.shape}, "
                              f"{got}; expected the HWIO kernel {(kh, kw, cin_g, cout)}, bias ({cout},), {expected}")
    conv.kernel[...] = jax.device_put(hwio)
    conv.bias[...] = jax.device_put(bias)


def load_weights(model, graph: Graph):
    """Fill `model` (a `models.blazeface` network of the graph's variant) from the graph."""
    convs = [op for op in graph.operators if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    layers = model.conv_layers()
    if len(convs) != len(layers):
        raise CheckpointError(f"{graph.source}: {len(convs)} convolutions; BlazeFace {model.variant} has {len(layers)}")
    _check_structure(graph)
    for i, (op, conv) in enumerate(zip(convs, layers)):
        _load_conv(graph, op, conv, i)
    return model


def load_blazeface(source: str | os.PathLike = "blazeface"):
    """A BlazeFace network with MediaPipe's weights: `source` is a detector name of
    `models.registry.DETECTORS` (the bundled files) or the path of a BlazeFace `.tflite` file."""
    if isinstance(source, str) and source in registry.DETECTORS:
        path = blazeface.VARIANTS[registry.get_detector(source).variant].weights_path
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{source}: no such file, and not a detector name "
                             f"(expected one of {', '.join(registry.DETECTORS)} or a BlazeFace .tflite file)")
    graph = read_tflite(path)
    return load_weights(blazeface.build(_variant_of(graph)), graph)

