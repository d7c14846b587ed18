"""`hsemo-jax export --format onnx`: onnxruntime runs the exported graph to the live model's
outputs on real faces (max |ort - jax| <= 1e-4 * max |jax|, batch 1 and 4 through one
dynamic-batch graph), the graph is NCHW from the first convolution on (the layout passes did
their work), the in-graph preprocessing equals the host path, the metadata travels with it.

EfficientNet-B0 and MobileFaceNet (a 224-px and a 112-px model) run in every suite; the other
backbones are marked slow (about a minute each on two cores), CI runs them too."""
import numpy as np
import pytest

pytest.importorskip("jax2onnx")
ort = pytest.importorskip("onnxruntime")

from hsemo_jax.export import export_model, read_metadata  # noqa: E402
from hsemo_jax.models import preprocess, registry  # noqa: E402
from hsemo_jax.models.inference import make_forward  # noqa: E402

from export_fixtures import SOURCE, calibrated_model, faces  # noqa: E402

FAST = ("tf_efficientnet_b0", "mobilefacenet")
ARCHS = [a if a in FAST else pytest.param(a, marks=pytest.mark.slow) for a in registry.BACKBONES]


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _close(got, want, what, rel=1e-4):
    err, scale = np.abs(got - want).max(), np.abs(want).max()
    assert np.isfinite(want).all() and scale > 1e-3, f"{what}: degenerate reference"
    assert err <= rel * scale, f"{what}: max|ort - jax| = {err:.3g} > {rel} * {scale:.3g}"



def _optimized_ops(path, tmp_path):
    """Op counts of the graph onnxruntime runs (ORT_ENABLE_ALL) for the ONNX file at `path`."""
    import onnx
    from collections import Counter

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """arch -> (model, info, path of its plain ONNX export), each exported once."""
    cache = {}

    def get(arch):
        if arch not in cache:
            model, info = calibrated_model(arch)
            path = tmp_path_factory.mktemp("onnx") / f"{arch}.onnx"
            export_model(model, info, "onnx", path)
            cache[arch] = model, info, path
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_onnxruntime_equals_the_model_on_real_faces(arch, exported):
    model, info, path = exported(arch)
    x = preprocess(arch, faces())
    want = np.asarray(make_forward(model)(x))  # the live model (CPU kernels and all)
    session = _session(path)
    assert session.get_inputs()[0].shape == ["batch", info.input_size, info.input_size, 3]
    _close(session.run(None, {"x": x})[0], want, f"{arch} batch {len(x)}")
    _close(session.run(None, {"x": x[:1]})[0], want[:1], f"{arch} batch 1")
    assert np.ptp(want[:, :8], axis=0).max() > 1e-2, "scores that do not depend on the face test nothing"


def test_the_graph_is_nchw_with_batch_norms_folded(exported, tmp_path):
    """B0's graph: standard operators (opset 18) only, one Transpose (the NHWC input), no
    dynamic-shape arithmetic (Shape, Expand, Gather, Concat), batch norms folded into the
    convolutions (no BatchNormalization, no Sub), every 1x1 convolution a Conv, SiLU as Sigmoid * x,
    each squeeze-excite as GlobalAveragePool, two 1x1 Convs and a Resize of the gate; onnxruntime
    then runs it all in its blocked NCHWc layout (one reorder left, before the head's pooling)."""
    import onnx
    from collections import Counter

    path = exported("tf_efficientnet_b0")[2]
    proto = onnx.load(path)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 18)]  # standard operators only
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["Transpose"] == 1
    assert not {"Shape", "Expand", "Gather", "Concat", "Reshape", "BatchNormalization", "Sub"} & set(ops), ops
    # 16 blocks: 1 + 16 * 3 - 1 + 1 convolutions, 2 per squeeze-excite
    assert ops["Conv"] == 49 + 32 and ops["Sigmoid"] == 65 and ops["GlobalAveragePool"] == ops["Resize"] == 16, ops
    optimized = _optimized_ops(path, tmp_path)
    assert optimized["ReorderInput"] + optimized["ReorderOutput"] <= 1, optimized


@pytest.mark.slow
def test_the_mobilevit_transformer_runs_nchw(exported):
    """Transposes only at the input and for the unfold and fold of each of the three MobileViT
    blocks (two each): none around the transformers' 1x1 convolutions."""
    import onnx

    nodes = onnx.load(exported("mobilevitv2_150")[2]).graph.node
    assert sum(n.op_type == "Transpose" for n in nodes) <= 1 + 3 * 2 + 2


def test_prelus_become_depthwise_convolutions_onnxruntime_keeps_blocked(exported, tmp_path):
    """MobileFaceNet's 33 PReLUs (slopes in [0, 0.5]) as a * x + Relu((1 - a) * x) with depthwise
    1x1 Convs, no Where/GreaterOrEqual; onnxruntime then runs the whole network in its blocked
    NCHWc layout: of the 65 reorders around its PRelus a few are left (the input, the one grouped
    convolution, the head)."""
    import onnx
    from collections import Counter

    path = exported("mobilefacenet")[2]
    ops = Counter(n.op_type for n in onnx.load(path).graph.node)
    assert ops["PRelu"] == 0 and ops["Relu"] == 33 and not {"Where", "GreaterOrEqual"} & set(ops), ops
    optimized = _optimized_ops(path, tmp_path)
    assert optimized["ReorderInput"] + optimized["ReorderOutput"] <= 4, optimized


@pytest.mark.parametrize("top", [1.0, 1.5])
def test_prelu_as_convolutions_equals_prelu(top):
    """The rewrite on a lone NCHW PRelu (slopes from -0.5 to `top`): equal to PRelu; a slope
    above 1 (where Relu((1 - a) x) != (1 - a) Relu(x)) leaves the PRelu as it is."""
    import onnx
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    from hsemo_jax.export import onnx_graph

    c = 16
    a = np.linspace(-0.5, top, c, dtype=np.float32).reshape(1, c, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "a"], ["y"])], "prelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c, 5, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", c, 5, 6])],
        [numpy_helper.from_array(a, "a")])
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    model = ir.from_proto(proto)
    assert onnx_graph.prelus_as_convolutions(model.graph) == (top <= 1)
    out = ir.to_proto(onnx_graph.simplify(model))
    assert _op_counts(out) == ({"Conv": 2, "Relu": 1, "Add": 1} if top <= 1 else {"PRelu": 1})
    x = np.random.default_rng(0).standard_normal((3, c, 5, 6)).astype(np.float32)
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, np.where(x >= 0, x, a * x), rtol=1e-6, atol=1e-7)


def test_affine_products_fold_into_one_gemm():
    """(x / 49) @ W * s + t, as jax2onnx writes a pooled mean into a linear layer with batch norm,
    becomes one Gemm with the same output; a Mul whose constant varies along rows stays."""
    import onnx
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    from hsemo_jax.export import onnx_graph

    rng = np.random.default_rng(0)
    consts = {"n": np.float32(49), "w": rng.standard_normal((8, 5)).astype(np.float32),
              "s": rng.standard_normal((1, 5)).astype(np.float32), "t": rng.standard_normal(5).astype(np.float32),
              "r": rng.standard_normal((3, 1)).astype(np.float32)}
    nodes = [helper.make_node("Div", ["x", "n"], ["m"]), helper.make_node("MatMul", ["m", "w"], ["p"]),
             helper.make_node("Mul", ["p", "s"], ["q"]), helper.make_node("Add", ["t", "q"], ["y"]),
             helper.make_node("Mul", ["y", "r"], ["z"])]
    graph = helper.make_graph(nodes, "affine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [3, 5])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    out = ir.to_proto(onnx_graph.simplify(ir.from_proto(proto)))
    assert _op_counts(out) == {"Gemm": 1, "Mul": 1}
    x = rng.standard_normal((3, 8)).astype(np.float32)
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = ((x / 49) @ consts["w"] * consts["s"] + consts["t"]) * consts["r"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_mixed_depthwise_becomes_one_convolution():
    """Channel slices 0:4, 4:10, 10:16 of one NCHW map through 3x3, 5x5 and 3x3 depthwise Convs
    (stride 2), concatenated: one 5x5 depthwise Conv with the same output; slices out of order
    (the concatenation then permutes channels) are left alone."""
    import onnx
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    from hsemo_jax.export import onnx_graph

    rng = np.random.default_rng(0)

    def model(bounds):
        nodes, inits, outs = [], [], []
        for i, ((start, end), k) in enumerate(zip(bounds, (3, 5, 3))):
            inits += [numpy_helper.from_array(np.array([v], np.int64), f"{n}{i}") for n, v in
                      (("s", start), ("e", end), ("a", 1))]
            w = rng.standard_normal((end - start, 1, k, k)).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes += [helper.make_node("Slice", ["x", f"s{i}", f"e{i}", f"a{i}"], [f"x{i}"]),
                      helper.make_node("Conv", [f"x{i}", f"w{i}"], [f"y{i}"], group=end - start,
                                       pads=[k // 2] * 4, strides=[2, 2], kernel_shape=[k, k])]
            outs.append(f"y{i}")
        nodes.append(helper.make_node("Concat", outs, ["y"], axis=1))
        graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, 9, 9])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))

    x = rng.standard_normal((2, 16, 9, 9)).astype(np.float32)

    def run(proto):
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    for bounds, merged in (([(0, 4), (4, 10), (10, 16)], True), ([(4, 10), (0, 4), (10, 16)], False)):
        proto = model(bounds)
        out = ir.to_proto(onnx_graph.simplify(ir.from_proto(proto)))
        assert (_op_counts(out) == {"Conv": 1}) == merged, _op_counts(out)
        np.testing.assert_allclose(run(out), run(proto), rtol=1e-5, atol=1e-5)


def _op_counts(proto) -> dict:
    from collections import Counter

    return dict(Counter(n.op_type for n in proto.graph.node))


def test_metadata_travels_in_metadata_props(exported):
    _, info, path = exported("mobilefacenet")
    meta = read_metadata(path, "onnx")
    assert meta["arch"] == "mobilefacenet" and meta["class_order"] == "hse"
    assert meta["outputs"] == list(info.outputs) and meta["classes"] == list(info.outputs[:8])
    assert (meta["input_size"], meta["mean"], meta["std"]) == (112, [0.5] * 3, [0.5] * 3)
    assert meta["source_sha256"] == SOURCE["sha256"] and meta["source"] == SOURCE
    assert meta["input"]["shape"] == ["batch", 112, 112, 3] and meta["input"]["layout"] == "NHWC"
    assert meta["graph_outputs"] == [{"name": "scores", "shape": ["batch", 10], "columns": list(info.outputs)}]


def _crops():
    """Face crops of three shapes: shrunk wider than tall, shrunk much taller than wide (Pillow
    >= 13 resizes those height first), and enlarged."""
    from skimage import data

    img = data.astronaut()
    return [img[20:220, 160:330], img[0:300, 180:260], faces()[1]]


def test_with_preprocess_equals_the_host_path(tmp_path):
    """One graph for every crop size: uint8 crops in, probabilities and valence/arousal out,
    equal to softmax(model(preprocess(crop))) on the host (Pillow-exact resize)."""
    from hsemo_jax.export.preprocess import read_out

    model, info = calibrated_model("mobilefacenet")
    path = tmp_path / "mbf_pre.onnx"
    export_model(model, info, "onnx", path, with_preprocess=True)
    session = _session(path)
    assert [i.shape for i in session.get_inputs()] == [["batch", "height", "width", 3]]
    assert [o.name for o in session.get_outputs()] == ["probabilities", "valence_arousal"]
    forward = make_forward(model)
    for crop in _crops():
        probs, va = session.run(None, {"crops": np.stack([crop, crop[:, ::-1]])})
        want_probs, want_va = (np.asarray(a) for a in read_out(forward(preprocess("mobilefacenet", [crop, crop[:, ::-1]])), True))
        assert np.abs(probs - want_probs).max() <= 1e-5, crop.shape
        _close(va, want_va, f"valence/arousal of a {crop.shape} crop")
