"""Read TensorFlow Lite model files (`.tflite` flatbuffers) without TensorFlow.

A `.tflite` file is a flatbuffer of the schema `tensorflow/lite/schema/schema.fbs`: a model holds
buffers (constant data), and a main subgraph of tensors and operators in execution order. This
reader decodes the parts the converters need with the `flatbuffers` runtime alone: every tensor
(name, shape, type, constant data), every operator (builtin name, input and output tensors, the
options of the convolution, pooling, resize and add operators) and the subgraph's inputs and
outputs. `Graph.constant` returns a weight as float32, through the DEQUANTIZE operator that turns
a float16 weight into the float32 tensor its consumer reads.

A table field is found through its vtable slot: the n-th field declared in the schema (a union
takes two, its type and its value) is at vtable offset 4 + 2n.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flatbuffers import number_types as N
from flatbuffers.table import Table

from hsemo_jax.errors import CheckpointError

FILE_IDENTIFIER = b"TFL3"

# TensorType -> numpy dtype (the types a weight or shape tensor can have)
TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16",
                9: "int8", 10: "float64"}
TYPE_NAMES = {0: "FLOAT32", 1: "FLOAT16", 2: "INT32", 3: "UINT8", 4: "INT64", 5: "STRING", 6: "BOOL",
              7: "INT16", 8: "COMPLEX64", 9: "INT8", 10: "FLOAT64"}

# BuiltinOperator codes of the operators that image models use; others are named BUILTIN_<code>.
BUILTIN_NAMES = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL", 19: "RELU",
    21: "RELU6", 22: "RESHAPE", 23: "RESIZE_BILINEAR", 25: "SOFTMAX", 28: "TANH", 32: "CUSTOM",
    34: "PAD", 39: "TRANSPOSE", 40: "MEAN", 41: "SUB", 54: "PRELU", 60: "PADV2", 97: "RESIZE_NEAREST_NEIGHBOR",
    114: "QUANTIZE", 124: "DENSIFY",
}
PADDINGS = {0: "SAME", 1: "VALID"}
ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}


class _Fields:
    """One flatbuffer table, its fields read by schema position."""

    def __init__(self, buf: bytearray, pos: int):
        self.t = Table(buf, pos)

    def _offset(self, slot: int) -> int:
        return self.t.Offset(4 + 2 * slot)

    def scalar(self, slot: int, flags, default=0):
        o = self._offset(slot)
        return self.t.Get(flags, o + self.t.Pos) if o else default

    def string(self, slot: int) -> str:
        o = self._offset(slot)
        return self.t.String(o + self.t.Pos).decode("utf-8", "replace") if o else ""

    def table(self, slot: int) -> _Fields | None:
        o = self._offset(slot)
        return _Fields(self.t.Bytes, self.t.Indirect(o + self.t.Pos)) if o else None

    def tables(self, slot: int) -> list[_Fields]:
        o = self._offset(slot)
        if not o:
            return []
        start = self.t.Vector(o)
        return [_Fields(self.t.Bytes, self.t.Indirect(start + 4 * i)) for i in range(self.t.VectorLen(o))]

    def numbers(self, slot: int, flags) -> np.ndarray:
        o = self._offset(slot)
        return self.t.GetVectorAsNumpy(flags, o) if o else np.zeros(0, np.int64)

    def union(self, slot: int) -> _Fields | None:
        o = self._offset(slot)
        if not o:
            return None
        inner = Table(bytearray(), 0)
        self.t.Union(inner, o)
        return _Fields(self.t.Bytes, inner.Pos)


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    type: str  # TensorType name: FLOAT32, FLOAT16, INT32, ...
    data: np.ndarray | None  # constant data in `shape`, None for a tensor computed at run time


@dataclass(frozen=True)
class Operator:
    op: str  # builtin operator name: CONV_2D, DEPTHWISE_CONV_2D, ...
    inputs: tuple[int, ...]  # tensor indices; -1 for an optional input left out
    outputs: tuple[int, ...]
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Graph:
    """The main subgraph of a `.tflite` file."""

    source: str
    tensors: tuple[Tensor, ...]
    operators: tuple[Operator, ...]  # in execution order
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def producer(self, tensor: int) -> Operator | None:
        return next((op for op in self.operators if tensor in op.outputs), None)

    def constant(self, tensor: int) -> np.ndarray:
        """The value of a constant tensor as float32: its data, or the data a DEQUANTIZE operator
        reads to produce it (float16 weights)."""
        t = self.tensors[tensor]
        if t.data is None:
            op = self.producer(tensor)
            if op is None or op.op != "DEQUANTIZE":
                raise CheckpointError(f"{self.source}: tensor {t.name!r} is computed at run time; "
                                      "expected a constant weight")
            return self.constant(op.inputs[0])
        if t.type not in ("FLOAT32", "FLOAT16"):
            raise CheckpointError(f"{self.source}: weight {t.name!r} is {t.type}; expected float32 or float16 "
                                  "(integer-quantized models are not supported)")
        return t.data.astype(np.float32)


def _options(op: str, opts: _Fields | None) -> dict:
    """The builtin options of the operators the converters look at (schema field order)."""
    if opts is None:
        return {}
    i8, i32, b = N.Int8Flags, N.Int32Flags, N.BoolFlags
    act = lambda slot: ACTIVATIONS.get(opts.scalar(slot, i8), "?")  # noqa: E731
    if op == "CONV_2D":
        return {"padding": PADDINGS.get(opts.scalar(0, i8), "?"), "stride": (opts.scalar(2, i32), opts.scalar(1, i32)),
                "activation": act(3), "dilation": (opts.scalar(5, i32, 1), opts.scalar(4, i32, 1))}
    if op == "DEPTHWISE_CONV_2D":
        return {"padding": PADDINGS.get(opts.scalar(0, i8), "?"), "stride": (opts.scalar(2, i32), opts.scalar(1, i32)),
                "depth_multiplier": opts.scalar(3, i32), "activation": act(4),
                "dilation": (opts.scalar(6, i32, 1), opts.scalar(5, i32, 1))}
    if op in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        return {"padding": PADDINGS.get(opts.scalar(0, i8), "?"), "stride": (opts.scalar(2, i32), opts.scalar(1, i32)),
                "window": (opts.scalar(4, i32), opts.scalar(3, i32)), "activation": act(5)}
    if op == "RESIZE_BILINEAR":
        return {"align_corners": bool(opts.scalar(2, b)), "half_pixel_centers": bool(opts.scalar(3, b))}
    if op in ("ADD", "SUB", "MUL"):
        return {"activation": act(0)}
    if op == "CONCATENATION":
        return {"axis": opts.scalar(0, i32), "activation": act(1)}
    return {}


def _tensor(t: _Fields, buffers: list[_Fields], raw: bytes, source: str) -> Tensor:
    name = t.string(3)
    shape = tuple(int(d) for d in t.numbers(0, N.Int32Flags))
    code = t.scalar(1, N.Int8Flags)
    type_name = TYPE_NAMES.get(code, f"TYPE_{code}")
    index = t.scalar(2, N.Uint32Flags)
    data = None
    if 0 < index < len(buffers):
        buf = buffers[index]
        blob = buf.numbers(0, N.Uint8Flags).tobytes()
        offset, size = buf.scalar(1, N.Uint64Flags), buf.scalar(2, N.Uint64Flags)
        if not blob and offset > 1:  # stored after the flatbuffer (large models)
            blob = raw[offset:offset + size]
        if blob:
            if code not in TENSOR_TYPES:
                raise CheckpointError(f"{source}: constant tensor {name!r} has type {type_name}, which this "
                                      "reader does not decode")
            dtype = np.dtype(TENSOR_TYPES[code]).newbyteorder("<")
            if len(blob) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise CheckpointError(f"{source}: tensor {name!r} holds {len(blob)} bytes; shape {shape} of "
                                      f"{type_name} needs {int(np.prod(shape)) * dtype.itemsize}")
            data = np.frombuffer(blob, dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return Tensor(name, shape, type_name, data)


def read_tflite(path: str | os.PathLike) -> Graph:
    """Parse a `.tflite` file; CheckpointError (one line naming the file) if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    raw = path.read_bytes()
    if len(raw) < 8 or raw[4:8] != FILE_IDENTIFIER:
        raise CheckpointError(f"{path}: not a TensorFlow Lite model (expected a flatbuffer with the "
                              f"identifier {FILE_IDENTIFIER.decode()})")
    try:
        return _parse(bytearray(raw), raw, str(path))
    except CheckpointError:
        raise
    except Exception as e:  # a truncated or corrupt flatbuffer: offsets point outside the file
        raise CheckpointError(f"{path}: corrupt TensorFlow Lite model ({type(e).__name__}: {e})") from None


def _parse(buf: bytearray, raw: bytes, source: str) -> Graph:
    model = _Fields(buf, int.from_bytes(raw[:4], "little"))  # the root table's offset
    codes = []
    for code in model.tables(1):  # OperatorCode: deprecated_builtin_code (int8), ..., builtin_code (int32)
        value = max(code.scalar(0, N.Int8Flags), code.scalar(3, N.Int32Flags))
        codes.append(BUILTIN_NAMES.get(value, f"BUILTIN_{value}") if value != 32 else f"CUSTOM:{code.string(1)}")
    subgraphs = model.tables(2)
    if not subgraphs:
        raise CheckpointError(f"{source}: the TensorFlow Lite model has no subgraph")
    buffers = model.tables(4)
    graph = subgraphs[0]
    tensors = tuple(_tensor(t, buffers, raw, source) for t in graph.tables(0))
    operators = []
    for op in graph.tables(3):
        index = op.scalar(0, N.Uint32Flags)
        if index >= len(codes):
            raise CheckpointError(f"{source}: an operator refers to operator code {index} of {len(codes)}")
        name = codes[index]
        operators.append(Operator(name, tuple(int(i) for i in op.numbers(1, N.Int32Flags)),
                                  tuple(int(i) for i in op.numbers(2, N.Int32Flags)), _options(name, op.union(4))))
    ints = lambda slot: tuple(int(i) for i in graph.numbers(slot, N.Int32Flags))  # noqa: E731
    return Graph(source, tensors, tuple(operators), ints(1), ints(2))
