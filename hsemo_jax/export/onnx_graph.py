"""Rewrites of jax2onnx's graphs that leave each value as it was, for runtimes' layout passes.

jax2onnx writes every broadcast of a dynamic-batch program as a chain Shape -> Gather -> Concat ->
Expand and every reshape as Reshape to a computed shape. Runtimes cannot move a layout transpose
through either (onnxruntime keeps Transposes beside such nodes at load time), so

- `drop_expands`: an Expand whose consumers broadcast anyway (elementwise ops whose other operands
  already give the full shape) or that keeps its input's shape is removed;
- `static_reshapes`: a Reshape to a computed shape that only inserts unit dimensions becomes an
  Unsqueeze; another whose output shape is known up to one symbolic dimension gets a constant
  shape (0 keeps an input dimension, -1 infers the one left);
- `unsqueeze_transposes`: a Transpose of an Unsqueeze that keeps the original dimensions in order
  (what onnxruntime leaves of a per-sample gate (N, C) moved to NCHW) becomes one Unsqueeze;
- `prelus`: where(x >= 0, x, a * x) with a constant slope `a`, as a PReLU traces, becomes one
  PRelu node (one pass for the runtime instead of three);
- `prelus_as_convolutions`: a PRelu of an NCHW map with per-channel slopes a <= 1 (what the layout
  pass leaves of the above) becomes a * x + Relu((1 - a) * x), both products depthwise 1x1 Convs.
  onnxruntime has no blocked-layout (NCHWc) PRelu: it reordered every PRelu's input out of its
  NCHWc layout and back and ran its PRelu kernel at ~2-3 GB/s (a quarter of a MobileFaceNet call,
  as much in torch's export). As Convs all of it stays NCHWc, the Relu fuses into the first and
  the Add into the second Conv;
- `affine_products`: a product x @ W with a constant W (MatMul, or Gemm without transposes) followed
  by a per-column constant Mul and/or Add (a linear layer's bias, batch norm, a mean's 1 / n:
  jax2onnx writes each on its own, a Gemm with a zero bias first) becomes one Gemm with the
  scale folded into W and the shift into its bias, which onnxruntime fuses with an activation
  (a scalar Mul or Div of x before it, as a mean over reduced sums, folds into W too);
- `mixed_depthwise`: a mixed depthwise convolution (DDAMFN's MDConv: channel slices of one NCHW map,
  each through its own k x k depthwise Conv, concatenated in order) becomes one depthwise Conv
  with every kernel zero-padded to the largest, centred: onnxruntime keeps it in its blocked
  layout, where the Slices and the Concat of unaligned channel groups left it;
- `blocked_squeeze_excite`: EfficientNet's squeeze-excite on an NCHW map x, x * sigmoid(silu(sum(x)
  @ W1 + b1) @ W2 + b2)[:, :, None, None], becomes GlobalAveragePool, two 1x1 Convs (the reduced
  width zero-padded to a multiple of 16) and the gate broadcast by a nearest Resize to x's shape,
  annotated with x's dimensions: onnxruntime then keeps the gate's Mul in its blocked layout (it
  needs two operands of one provable shape), where the broadcast Mul reordered x out and back;

and the shape computations left unused, and imports of operator domains no node uses, are removed. Shapes are compared as jax2onnx annotates
them (integers and named symbolic dimensions); anything unknown is left alone.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, RemoveUnusedOpsetsPass

_BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Less", "LessOrEqual",
                 "Greater", "GreaterOrEqual", "And", "Or"}


def simplify(model: ir.Model) -> ir.Model:
    """The rewrites above, in place, on the main graph; returns `model`."""
    graph = model.graph
    drop_expands(graph)
    static_reshapes(graph)
    unsqueeze_transposes(graph)
    prelus(graph)
    prelus_as_convolutions(graph)
    affine_products(graph)
    RemoveUnusedNodesPass()(model)  # the patterns below count uses
    mixed_depthwise(graph)
    blocked_squeeze_excite(graph)
    RemoveUnusedNodesPass()(model)
    RemoveUnusedOpsetsPass()(model)  # onnxruntime's saved models import every domain it knows
    return model


def _dims(value: ir.Value) -> tuple | None:
    """The shape as ints and symbol names, or None where any part of it is unknown."""
    if value.shape is None:
        return None
    out = []
    for d in value.shape:
        if isinstance(d, int):
            out.append(d)
        elif getattr(d, "value", None) is not None:
            out.append(("symbol", str(d.value)))
        else:
            return None
    return tuple(out)


def _broadcast(a: tuple | None, b: tuple | None) -> tuple | None:
    if a is None or b is None:
        return None
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    out = []
    for x, y in zip(a, b):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(out)


def _is_default_domain(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def _expand_is_redundant(node: ir.Node) -> bool:
    src, out = node.inputs[0], node.outputs[0]
    if out.is_graph_output():
        return False
    if _dims(src) is not None and _dims(src) == _dims(out):
        return True
    for user, index in out.uses():
        if user.op_type not in _BROADCASTING or not _is_default_domain(user):
            return False
        shape = _dims(src)
        for i, other in enumerate(user.inputs):
            if i != index:
                shape = _broadcast(shape, _dims(other))
        if shape is None or shape != _dims(user.outputs[0]):
            return False
    return True


def drop_expands(graph: ir.Graph) -> int:
    """Remove the Expands that change nothing their consumers see; returns how many."""
    count = 0
    for node in list(graph):
        if node.op_type == "Expand" and _is_default_domain(node) and _expand_is_redundant(node):
            node.outputs[0].replace_all_uses_with(node.inputs[0])
            count += 1
    return count


def _constant(graph: ir.Graph, name: str, values) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(np.asarray(values, np.int64), name=name))
    graph.register_initializer(value)
    return value


def _unit_axes(src: tuple, out: tuple) -> list[int] | None:
    """Where `out` has unit dimensions inserted into `src` (and nothing else), their axes."""
    axes, j = [], 0
    for i, d in enumerate(out):
        if j < len(src) and d == src[j]:
            j += 1
        elif d == 1:
            axes.append(i)
        else:
            return None
    return axes if j == len(src) and axes else None


def static_reshapes(graph: ir.Graph) -> int:
    """Give Reshapes to computed shapes a constant shape or make them Unsqueezes; returns how many."""
    count = 0
    for node in list(graph):
        if node.op_type != "Reshape" or not _is_default_domain(node) or node.inputs[1].const_value is not None:
            continue
        src, out = node.inputs[0], node.outputs[0]
        si, so = _dims(src), _dims(out)
        if si is None or so is None:
            continue
        axes = _unit_axes(si, so)
        if axes is not None:
            unsqueeze = ir.Node("", "Unsqueeze", [src, _constant(graph, f"{out.name}_axes", axes)],
                                name=f"{node.name}_unsqueeze")
            graph.insert_before(node, unsqueeze)
            unsqueeze.outputs[0].shape, unsqueeze.outputs[0].type = out.shape, out.type
            out.replace_all_uses_with(unsqueeze.outputs[0], replace_graph_outputs=True)
            count += 1
            continue
        symbolic = [i for i, d in enumerate(so) if not isinstance(d, int)]
        allowzero = node.attributes.get("allowzero")
        target = []
        for i, d in enumerate(so):
            if isinstance(d, int):
                target.append(d)
            elif i < len(si) and si[i] == d and not (allowzero is not None and allowzero.as_int()):
                target.append(0)  # this input dimension, as it is
            elif len(symbolic) == 1:
                target.append(-1)
            else:
                break
        else:
            node.replace_input_with(1, _constant(graph, f"{out.name}_shape", target))
            count += 1
    return count


def unsqueeze_transposes(graph: ir.Graph) -> int:
    """Replace Transpose(Unsqueeze(x)) by one Unsqueeze of x where the permutation only moves
    the inserted unit dimensions; returns how many."""
    count = 0
    for node in list(graph):
        if node.op_type != "Transpose" or not _is_default_domain(node) or "perm" not in node.attributes:
            continue
        producer = node.inputs[0].producer()
        if (producer is None or producer.op_type != "Unsqueeze" or not _is_default_domain(producer)
                or len(producer.inputs) < 2 or producer.inputs[1].const_value is None):
            continue
        perm = list(node.attributes["perm"].as_ints())
        inserted = {int(a) % len(perm) for a in producer.inputs[1].const_value.numpy().ravel()}
        kept = [p for p in perm if p not in inserted]
        if kept != sorted(kept):
            continue
        axes = [k for k, p in enumerate(perm) if p in inserted]
        out = node.outputs[0]
        unsqueeze = ir.Node("", "Unsqueeze", [producer.inputs[0], _constant(graph, f"{out.name}_axes", axes)],
                            name=f"{node.name}_unsqueeze")
        graph.insert_before(node, unsqueeze)
        unsqueeze.outputs[0].shape, unsqueeze.outputs[0].type = out.shape, out.type
        out.replace_all_uses_with(unsqueeze.outputs[0], replace_graph_outputs=True)
        count += 1
    return count


def _is_constant(value: ir.Value | None, test) -> bool:
    return value is not None and value.const_value is not None and bool(test(value.const_value.numpy()))


def prelus(graph: ir.Graph) -> int:
    """Replace Where(x >= 0 (or x > 0), x, a * x) with a constant `a` by PRelu(x, a); returns how many."""
    count = 0
    for node in list(graph):
        if node.op_type != "Where" or not _is_default_domain(node):
            continue
        cond, x, neg = node.inputs
        test, scaled = cond.producer(), neg.producer()
        if (test is None or scaled is None or test.op_type not in ("GreaterOrEqual", "Greater")
                or test.inputs[0] is not x or not _is_constant(test.inputs[1], lambda v: v.size == 1 and v.item() == 0)
                or scaled.op_type != "Mul" or x not in scaled.inputs):
            continue
        slope = scaled.inputs[1] if scaled.inputs[0] is x else scaled.inputs[0]
        if not _is_constant(slope, lambda v: True) or _broadcast(_dims(slope), _dims(x)) != _dims(x):
            continue
        prelu = ir.Node("", "PRelu", [x, slope], name=f"{node.name}_prelu")
        graph.insert_before(node, prelu)
        out = node.outputs[0]
        prelu.outputs[0].shape, prelu.outputs[0].type = out.shape, out.type
        out.replace_all_uses_with(prelu.outputs[0], replace_graph_outputs=True)
        count += 1
    return count


def _channel_slopes(prelu: ir.Node) -> np.ndarray | None:
    """The per-channel slopes (C,) of a PRelu of a rank-4 map x (N, C, H, W) whose constant slope
    broadcasts along axis 1 only ((C, 1, 1) or (1, C, 1, 1)), else None."""
    x, slope = prelu.inputs
    dims = _dims(x)
    if dims is None or len(dims) != 4 or not isinstance(dims[1], int) or slope is None or slope.const_value is None:
        return None
    a = slope.const_value.numpy()
    if a.dtype != np.float32 or a.shape not in ((dims[1], 1, 1), (1, dims[1], 1, 1)):
        return None
    return a.reshape(-1)


def prelus_as_convolutions(graph: ir.Graph) -> int:
    """Replace PRelu(x, a) of an NCHW map with per-channel constant slopes, all <= 1, by
    Add(Conv(x, a), Relu(Conv(x, 1 - a))) with depthwise 1x1 Convs (Relu(s * x) = s * Relu(x) needs
    s = 1 - a >= 0; a PRelu with a slope above 1 stays); returns how many."""
    count = 0
    for node in list(graph):
        if node.op_type != "PRelu" or not _is_default_domain(node):
            continue
        a = _channel_slopes(node)
        if a is None or not (a <= 1).all():
            continue
        x, out = node.inputs[0], node.outputs[0]
        channels = a.size

        def depthwise(scale, tag):
            w = ir.Value(name=f"{out.name}_{tag}", const_value=ir.tensor(
                scale.reshape(channels, 1, 1, 1).astype(np.float32), name=f"{out.name}_{tag}"))
            graph.register_initializer(w)
            attributes = [ir.AttrInt64("group", channels), ir.AttrInt64s("kernel_shape", [1, 1])]
            conv = ir.Node("", "Conv", [x, w], attributes=attributes, name=f"{node.name}_{tag}")
            graph.insert_before(node, conv)
            return conv.outputs[0]

        def like_x(value):
            value.shape, value.type = x.shape, x.type
            return value

        linear = like_x(depthwise(a, "slope"))
        rest = ir.Node("", "Relu", [like_x(depthwise(1 - a, "rest"))], name=f"{node.name}_relu")
        graph.insert_before(node, rest)
        add = ir.Node("", "Add", [linear, like_x(rest.outputs[0])], name=f"{node.name}_add")
        graph.insert_before(node, add)
        _take_over(out, add.outputs[0])
        graph.remove(node, safe=True)
        count += 1
    return count


def _take_over(out: ir.Value, new: ir.Value) -> None:
    """`new` (a rewrite's output) replaces `out` everywhere, with its shape and type."""
    new.shape, new.type = out.shape, out.type
    out.replace_all_uses_with(new, replace_graph_outputs=True)


def _single_user(value: ir.Value) -> ir.Node | None:
    users = value.uses()
    if value.is_graph_output() or len(users) != 1:
        return None
    return next(iter(users))[0]


def _column_constant(node: ir.Node, value: ir.Value, n: int) -> np.ndarray | None:
    """The other operand of the binary `node` (whose one operand is `value`, shape (M, n)) as a
    float32 row of n, where it is a constant broadcasting along the columns only."""
    if len(node.inputs) != 2 or not _is_default_domain(node):
        return None
    other = node.inputs[1] if node.inputs[0] is value else node.inputs[0]
    if other is None or other is value or other.const_value is None:
        return None
    c = other.const_value.numpy()
    if c.dtype != np.float32 or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1) or c.size not in (1, n):
        return None
    return np.broadcast_to(c.reshape(-1), (n,))


def _plain_product(node: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(W (K, N), bias (N,)) of a rank-2 x @ W [+ bias] with constant W and bias, else None."""
    if not _is_default_domain(node) or node.op_type not in ("MatMul", "Gemm"):
        return None
    x, w = node.inputs[0], node.inputs[1]
    if w is None or w.const_value is None or w.const_value.numpy().ndim != 2 or _dims(x) is None or len(_dims(x)) != 2:
        return None
    weight = w.const_value.numpy()
    if weight.dtype != np.float32:
        return None
    bias = np.zeros(weight.shape[1], np.float32)
    if node.op_type == "Gemm":
        attrs = {k: (v.value if v is not None else None) for k, v in node.attributes.items()}
        if attrs.get("transA", 0) or attrs.get("transB", 0) or attrs.get("alpha", 1.0) != 1.0:
            return None
        if len(node.inputs) > 2 and node.inputs[2] is not None and attrs.get("beta", 1.0) != 0.0:
            c = node.inputs[2].const_value
            if c is None or c.numpy().size not in (1, weight.shape[1]) or c.numpy().ndim > 2:
                return None
            bias = bias + attrs.get("beta", 1.0) * np.broadcast_to(c.numpy().reshape(-1), bias.shape)
    return weight, bias


def affine_products(graph: ir.Graph) -> int:
    """Replace x @ W [+ b] followed by per-column constant Muls and Adds by one Gemm
    (x, W * s, b * s + t), and x = y * c or y / c (a scalar constant c) before it by y; returns how
    many products were rewritten."""
    count = 0
    for node in list(graph):
        product = _plain_product(node)
        if product is None:
            continue
        weight, bias = product
        n = weight.shape[1]
        scale, shift = np.ones(n, np.float32), bias.astype(np.float32)
        out, folded = node.outputs[0], 0
        while (user := _single_user(out)) is not None and user.op_type in ("Mul", "Add"):
            c = _column_constant(user, out, n)
            if c is None:
                break
            if user.op_type == "Mul":
                scale, shift = scale * c, shift * c
            else:
                shift = shift + c
            out, folded = user.outputs[0], folded + 1
        x = node.inputs[0]
        pre = x.producer()
        if pre is not None and pre.op_type in ("Mul", "Div") and _single_user(x) is node:
            c = _column_constant(pre, pre.inputs[0], 1) if pre.inputs[1] is not None else None
            if c is not None and pre.inputs[0].const_value is None and (pre.op_type == "Mul" or c[0] != 0):
                x, weight, folded = pre.inputs[0], weight * (c[0] if pre.op_type == "Mul" else 1 / c[0]), folded + 1
        if not folded:
            continue  # nothing to fold (onnxruntime turns MatMul + Add into a Gemm itself)
        w = ir.Value(name=f"{out.name}_weight", const_value=ir.tensor(
            (weight * scale).astype(np.float32), name=f"{out.name}_weight"))
        b = ir.Value(name=f"{out.name}_bias", const_value=ir.tensor(shift.astype(np.float32), name=f"{out.name}_bias"))
        graph.register_initializer(w)
        graph.register_initializer(b)
        gemm = ir.Node("", "Gemm", [x, w, b], name=f"{node.name}_affine")
        graph.insert_before(node, gemm)
        _take_over(out, gemm.outputs[0])
        count += 1
    return count


def _ints(value: ir.Value | None) -> list[int] | None:
    if value is None or value.const_value is None:
        return None
    return [int(v) for v in value.const_value.numpy().ravel()]


def _channel_slice(node: ir.Node | None) -> tuple[ir.Value, int, int] | None:
    """(x, start, end) of a Slice of x's axis 1 (rank 4) with constant bounds and step 1."""
    if node is None or node.op_type != "Slice" or not _is_default_domain(node) or len(node.inputs) < 4:
        return None
    x = node.inputs[0]
    dims = _dims(x)
    starts, ends, axes = (_ints(v) for v in node.inputs[1:4])
    steps = _ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
    if dims is None or len(dims) != 4 or not isinstance(dims[1], int) or None in (starts, ends, axes):
        return None
    if len(axes) != 1 or axes[0] % 4 != 1 or steps != [1]:
        return None
    c = dims[1]
    start, end = (v + c if v < 0 else v for v in (starts[0], ends[0]))
    return x, min(start, c), min(end, c)


def _depthwise_conv(node: ir.Node | None) -> tuple[np.ndarray, int, tuple] | None:
    """(weights (C, 1, k, k), k, strides) of a bias-free square depthwise Conv padded k // 2 on
    every side, undilated, else None."""
    if node is None or node.op_type != "Conv" or not _is_default_domain(node) or len(node.inputs) != 2:
        return None
    w = node.inputs[1].const_value
    if w is None:
        return None
    w = w.numpy()
    attrs = {k: v.value for k, v in node.attributes.items()}
    if w.ndim != 4 or w.shape[1] != 1 or w.shape[2] != w.shape[3] or w.shape[2] % 2 == 0:
        return None
    k = w.shape[2]
    if attrs.get("group") != w.shape[0] or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return None
    if list(attrs.get("pads", [0] * 4)) != [k // 2] * 4 or list(attrs.get("dilations", [1, 1])) != [1, 1]:
        return None
    return w, k, tuple(attrs.get("strides", (1, 1)))


def mixed_depthwise(graph: ir.Graph) -> int:
    """Replace Concat(axis 1) of depthwise Convs of consecutive channel Slices of one map that
    cover it in order by one depthwise Conv with the kernels zero-padded to the largest;
    returns how many."""
    count = 0
    for node in list(graph):
        if node.op_type != "Concat" or not _is_default_domain(node) or node.attributes.get("axis") is None:
            continue
        if node.attributes["axis"].value % 4 != 1 or len(node.inputs) < 2:
            continue
        parts, source, end = [], None, 0
        for value in node.inputs:
            conv = value.producer() if value is not None and _single_user(value) is node else None
            geometry = _depthwise_conv(conv)
            piece = _channel_slice(conv.inputs[0].producer()) if geometry is not None else None
            if piece is None or (source is not None and piece[0] is not source) or piece[1] != end:
                break
            w, _, strides = geometry
            if piece[2] - piece[1] != w.shape[0] or (parts and strides != parts[0][2]):
                break
            source, end = piece[0], piece[2]
            parts.append(geometry)
        else:
            if end != _dims(source)[1]:
                continue
            k = max(p[1] for p in parts)
            weights = np.zeros((end, 1, k, k), np.float32)
            start = 0
            for w, kw, _ in parts:
                o = (k - kw) // 2
                weights[start:start + w.shape[0], :, o:o + kw, o:o + kw] = w
                start += w.shape[0]
            out = node.outputs[0]
            name = f"{out.name}_mixed_weight"
            wv = ir.Value(name=name, const_value=ir.tensor(weights, name=name))
            graph.register_initializer(wv)
            attributes = [ir.AttrInt64("group", end), ir.AttrInt64s("kernel_shape", [k, k]),
                          ir.AttrInt64s("pads", [k // 2] * 4), ir.AttrInt64s("strides", list(parts[0][2]))]
            conv = ir.Node("", "Conv", [source, wv], attributes=attributes, name=f"{node.name}_mixed")
            graph.insert_before(node, conv)
            _take_over(out, conv.outputs[0])
            graph.remove(node, safe=True)
            count += 1
    return count


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = None if value is None else value.producer()
    return node if node is not None and node.op_type == op_type and _is_default_domain(node) else None


def _squeeze_excite(mul: ir.Node):
    """(x, W1 (C, r), b1, W2 (r, C), b2, [nodes]) where `mul` is x * Unsqueeze(sigmoid(silu(
    ReduceSum(x, (2, 3)) @ W1 + b1) @ W2 + b2), (2, 3)) with x (N, C, H, W), else None."""
    if len(mul.inputs) != 2:
        return None
    for x, g4 in (mul.inputs, mul.inputs[::-1]):
        unsqueeze = _producer(g4, "Unsqueeze")
        sig = _producer(unsqueeze.inputs[0], "Sigmoid") if unsqueeze is not None else None
        expand = _producer(sig.inputs[0], "Gemm") if sig is not None else None
        silu = _producer(expand.inputs[0], "Mul") if expand is not None else None
        if silu is None or _ints(unsqueeze.inputs[1]) not in ([2, 3], [-2, -1]):
            continue
        s1, inner = silu.inputs
        inner_sig = _producer(inner, "Sigmoid")
        if inner_sig is None or inner_sig.inputs[0] is not s1:
            s1, inner = inner, s1
            inner_sig = _producer(inner, "Sigmoid")
        reduce_fc = _producer(s1, "Gemm")
        if inner_sig is None or inner_sig.inputs[0] is not s1 or reduce_fc is None:
            continue
        pool = _producer(reduce_fc.inputs[0], "ReduceSum")
        dims = _dims(x)
        if (pool is None or pool.inputs[0] is not x or _ints(pool.inputs[1]) not in ([2, 3], [-2, -1])
                or pool.attributes.get("keepdims") is None or pool.attributes["keepdims"].value != 0
                or dims is None or len(dims) != 4 or not all(isinstance(d, int) for d in dims[1:])):
            continue
        first, second = _plain_product(reduce_fc), _plain_product(expand)
        if first is None or second is None:
            continue
        inner_values = [pool.outputs[0], reduce_fc.outputs[0], inner_sig.outputs[0], silu.outputs[0],
                        expand.outputs[0], sig.outputs[0], unsqueeze.outputs[0]]
        if any(v.is_graph_output() for v in inner_values) or len(s1.uses()) != 2 or any(
                len(v.uses()) != 1 for v in inner_values if v is not s1):
            continue
        return x, first[0], first[1], second[0], second[1]
    return None


def blocked_squeeze_excite(graph: ir.Graph) -> int:
    """Rewrite EfficientNet's squeeze-excite gates (`_squeeze_excite`) as GlobalAveragePool, 1x1
    Convs and a nearest Resize of the gate to x's shape; returns how many."""
    count = 0
    for node in list(graph):
        if node.op_type != "Mul" or not _is_default_domain(node):
            continue
        found = _squeeze_excite(node)
        if found is None:
            continue
        x, w1, b1, w2, b2 = found
        _, c, h, w = _dims(x)
        r = w1.shape[1]
        padded = -(-r // 16) * 16
        k1 = np.zeros((padded, c, 1, 1), np.float32)
        k1[:r, :, 0, 0] = (w1 * (h * w)).T  # the pool is a mean, the graph's reduction was a sum
        k2 = np.zeros((c, padded, 1, 1), np.float32)
        k2[:, :r, 0, 0] = w2.T
        out = node.outputs[0]
        consts = {}
        for tag, v in (("k1", k1), ("b1", np.pad(b1, (0, padded - r))), ("k2", k2), ("b2", b2),
                       ("scales", np.array([1, 1, h, w], np.float32))):
            name = f"{out.name}_se_{tag}"
            consts[tag] = ir.Value(name=name, const_value=ir.tensor(np.asarray(v, np.float32), name=name))
            graph.register_initializer(consts[tag])
        new = [ir.Node("", "GlobalAveragePool", [x], name=f"{node.name}_se_pool")]
        new.append(ir.Node("", "Conv", [new[-1].outputs[0], consts["k1"], consts["b1"]], name=f"{node.name}_se_reduce"))
        reduced = new[-1].outputs[0]
        new.append(ir.Node("", "Sigmoid", [reduced], name=f"{node.name}_se_sigmoid1"))
        new.append(ir.Node("", "Mul", [reduced, new[-1].outputs[0]], name=f"{node.name}_se_silu"))
        new.append(ir.Node("", "Conv", [new[-1].outputs[0], consts["k2"], consts["b2"]], name=f"{node.name}_se_expand"))
        new.append(ir.Node("", "Sigmoid", [new[-1].outputs[0]], name=f"{node.name}_se_gate"))
        resize_attrs = [ir.AttrString("mode", "nearest"), ir.AttrString("coordinate_transformation_mode", "asymmetric"),
                        ir.AttrString("nearest_mode", "floor")]
        new.append(ir.Node("", "Resize", [new[-1].outputs[0], None, consts["scales"]], attributes=resize_attrs,
                           name=f"{node.name}_se_broadcast"))
        new.append(ir.Node("", "Mul", [x, new[-1].outputs[0]], name=f"{node.name}_se_apply"))
        n = _dims(x)[0]
        shapes = [(n, c, 1, 1), (n, padded, 1, 1), (n, padded, 1, 1), (n, padded, 1, 1), (n, c, 1, 1), (n, c, 1, 1)]
        for op, dims in zip(new, shapes + [None, None]):
            graph.insert_before(node, op)
            op.outputs[0].type = x.type
            op.outputs[0].shape = x.shape if dims is None else ir.Shape([
                d if isinstance(d, int) else x.shape[0] for d in dims])
        out.replace_all_uses_with(new[-1].outputs[0], replace_graph_outputs=True)
        graph.remove(node, safe=True)
        count += 1
    return count
