"""Checks of the test-only PyTorch reference models (tests/reference/) against the spec.

* state_dict key names, order, shapes and dtypes == the spec's key list
  (``shared/spec/original_state_dict_keys.txt``, copied to ``tests/reference/``);
* parameter / entry / buffer counts == the spec's measured numbers (embedded here, always run);
* forward semantics that the key list cannot show (dead modules, shapes per stage, return values);
* ``randomize_`` gives deterministic, O(1), input-dependent outputs (also for timm EfficientNet);
* whole-module pickling round-trips through the top-level ``mobilefacenet`` module.
"""

from __future__ import annotations

import ast
import copy
import io
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import ddamfn  # noqa: E402  (tests/reference is put on sys.path by conftest.py)
import mobilefacenet  # noqa: E402
import randomize  # noqa: E402

SPEC_KEYS = Path(__file__).resolve().parent / "reference" / "original_state_dict_keys.txt"

# Measured numbers from shared/spec/original_pipeline.md sections 1b / 1c.
MBF_BACKBONE_PARAMS = 2_059_520
MBF_FC_PARAMS = 2_064_650
MBF_FC_ENTRIES = 335
MBF_FC_TOTAL_ELEMENTS = 2_088_508
DDAM_PARAMS = {8: 4_187_936, 10: 4_188_966, 7: 4_187_421}
DDAM_TOTAL_ELEMENTS = {8: 4_245_429, 10: 4_246_463}
DDAM_ENTRIES = 1190
DDAM_BUFFER_ELEMENTS_C8 = 57_493
DDAM_DEAD_PARAMS = 81_424
MFN_PARAMS = 4_193_448


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    # Many tiny convs: intra-op threading buys nothing here, and on a shared, oversubscribed CPU
    # OpenMP spin-waiting made these tests ~5x slower (measured). Restored afterwards.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def n_elements(m):
    return sum(t.numel() for t in m.state_dict().values())


def n_nbt(m):
    return sum(k.endswith("num_batches_tracked") for k in m.state_dict())


def sd_signature(m):
    return [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in m.state_dict().items()]


# --------------------------------------------------------------------------------------------
# spec key lists


def _parse_spec(path: Path):
    sections, cur = {}, None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            cur = line[3:].strip()
            sections[cur] = {"keys": [], "meta": {}}
        elif cur is None or not line.strip():
            continue
        elif line.startswith("#"):
            for tok in line[1:].split():
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    if v.isdigit():
                        sections[cur]["meta"][k] = int(v)
        else:
            key, shape, dtype = line.split("\t")
            sections[cur]["keys"].append((key, tuple(ast.literal_eval(shape)), dtype))
    return sections


@pytest.fixture(scope="module")
def spec_sections():
    return _parse_spec(SPEC_KEYS)


def _section(sections, prefix):
    hits = [name for name in sections if name.startswith(prefix)]
    assert len(hits) == 1, (prefix, list(sections))
    return sections[hits[0]]


SPEC_CASES = {
    "mbf_va_mtl": lambda: mobilefacenet.get_mbf_mtl(10),
    "DDAMNet(num_class=8, num_head=2)": lambda: ddamfn.DDAMNet(num_class=8, num_head=2),
    "DDAMNet(num_class=10, num_head=2)": lambda: ddamfn.DDAMNet(num_class=10, num_head=2),
}


@pytest.mark.parametrize("section", list(SPEC_CASES))
def test_state_dict_matches_spec(spec_sections, section):
    spec = _section(spec_sections, section)
    model = SPEC_CASES[section]()
    got = sd_signature(model)
    want = spec["keys"]
    assert [k for k, _, _ in got] == [k for k, _, _ in want], "key names/order differ"
    assert got == want, [(g, w) for g, w in zip(got, want) if g != w][:5]
    meta = spec["meta"]
    assert len(got) == meta["entries"]
    assert n_params(model) == meta["trainable_params"]
    assert n_elements(model) == meta["total_elements"]


# --------------------------------------------------------------------------------------------
# counts (always run)


def test_mobilefacenet_counts():
    bb = mobilefacenet.get_mbf(False, 512)
    assert n_params(bb) == MBF_BACKBONE_PARAMS
    assert not hasattr(bb, "fc")
    m = mobilefacenet.get_mbf_mtl()
    assert n_params(m) == MBF_FC_PARAMS
    assert len(m.state_dict()) == MBF_FC_ENTRIES
    assert n_elements(m) == MBF_FC_TOTAL_ELEMENTS
    assert n_nbt(m) == 50
    assert sum(isinstance(x, torch.nn.PReLU) for x in m.modules()) == 33
    assert all(x.num_parameters == x.weight.numel() > 1 for x in m.modules() if isinstance(x, torch.nn.PReLU))
    assert all(x.eps == 1e-5 for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm))
    sd = m.state_dict()
    assert sd["layers.1.layers.0.weight"].shape == (128, 2, 3, 3)  # groups=64, not depthwise
    assert sd["layers.6.layers.0.layers.0.weight"].shape == (512, 256, 1, 1)  # inner 512
    assert list(sd)[-2:] == ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("num_class", [8, 10, 7])
def test_ddamnet_counts(num_class):
    m = ddamfn.DDAMNet(num_class=num_class, num_head=2)
    assert n_params(m) == DDAM_PARAMS[num_class]
    assert len(m.state_dict()) == DDAM_ENTRIES
    assert n_nbt(m) == 149
    if num_class in DDAM_TOTAL_ELEMENTS:
        assert n_elements(m) == DDAM_TOTAL_ELEMENTS[num_class]
    if num_class == 8:
        assert sum(b.numel() for b in m.buffers()) == DDAM_BUFFER_ELEMENTS_C8
    assert all(x.eps == 1e-5 for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm))


def test_mixedfeaturenet_structure():
    mfn = ddamfn.MixedFeatureNet()
    assert n_params(mfn) == MFN_PARAMS
    assert len(list(mfn.children())) == 13  # DDAMNet keeps children[:-4]
    # MDConv kernels / splits per stage, as in the spec table.
    want = {
        "conv_23": ([3, 5, 7], [64, 32, 32], 8),
        "conv_3": ([3, 5], [96, 32], 8),
        "conv_34": ([3, 5, 7], [128, 64, 64], 8),
        "conv_4": ([3, 5], [192, 64], 8),
        "conv_45": ([3, 5, 7, 9], [256, 256, 256, 256], 32),
        "conv_5": ([3, 5, 7], [172, 170, 170], 16),
    }
    for name, (ks, split, mip) in want.items():
        stage = getattr(mfn, name)
        blocks = list(stage.model) if isinstance(stage, ddamfn.Mix_Residual) else [stage]
        for b in blocks:
            convs = b.conv_dw.mixed_depthwise_conv
            assert [c.kernel_size[0] for c in convs] == ks
            assert [c.padding[0] for c in convs] == [k // 2 for k in ks]
            assert [c.out_channels for c in convs] == split
            assert all(c.groups == c.in_channels == c.out_channels for c in convs)
            assert b.CA.conv1.out_channels == mip
    assert [len(mfn.conv_3.model), len(mfn.conv_4.model), len(mfn.conv_5.model)] == [9, 16, 6]
    assert ddamfn.split_channels(512, 3) == [172, 170, 170]


# --------------------------------------------------------------------------------------------
# forward semantics after randomize_


def _input(seed, n=2, size=112):
    g = torch.Generator().manual_seed(seed)
    return randomize.synthetic_images(g, 3, size)[:n] if n <= 3 else torch.randn(n, 3, size, size, generator=g)


def _check_output(y):
    assert torch.isfinite(y).all()
    s = y.std().item()
    assert 1e-2 < s < 1e3, s
    # depends on the input: the two samples give clearly different outputs
    assert (y[0] - y[1]).abs().max().item() > 1e-2 * s


@pytest.fixture(scope="module")
def mbf():
    return randomize.randomize_(mobilefacenet.get_mbf_mtl(), seed=0).eval()


@pytest.fixture(scope="module")
def ddam8():
    return randomize.randomize_(ddamfn.DDAMNet(num_class=8, num_head=2), seed=1).eval()


def test_mobilefacenet_forward(mbf):
    x = _input(0)
    with torch.no_grad():
        y = mbf(x)
        e = mbf.embed(x)
        _check_output(y)
        _check_output(e)
        assert y.shape == (2, 10) and e.shape == (2, 512)
        torch.testing.assert_close(y, mbf.fc(e), rtol=0, atol=0)
        # torch.nn.functional pipeline by hand for the GDC head: 7x7 dw valid conv -> BN -> linear -> BN1d
        feats = mbf.conv_sep(torch.nn.Sequential(*mbf.layers)(x))
        assert feats.shape == (2, 512, 7, 7)
        torch.testing.assert_close(mbf.features(feats), e)


def test_mobilefacenet_stage_shapes(mbf):
    x = _input(1)
    sizes = []
    with torch.no_grad():
        for layer in mbf.layers:
            x = layer(x)
            sizes.append(tuple(x.shape[1:]))
    assert sizes == [
        (128, 56, 56), (128, 56, 56), (128, 28, 28), (128, 28, 28),
        (256, 14, 14), (256, 14, 14), (256, 7, 7), (256, 7, 7),
    ]


def test_mobilefacenet_fc_identity_gives_embedding(mbf):
    m = copy.deepcopy(mbf)
    x = _input(2)
    with torch.no_grad():
        e = m.embed(x)
        m.fc = torch.nn.Identity()  # what EmotiEffLib does after reading fc.weight/bias
        torch.testing.assert_close(m(x), e, rtol=0, atol=0)
        del m.fc  # an original-class pickle without fc
        torch.testing.assert_close(m(x), e, rtol=0, atol=0)


def test_ddamnet_forward(ddam8):
    x = _input(0)
    with torch.no_grad():
        out, feat, heads = ddam8(x)
        e = ddam8.embed(x)
    assert out.shape == (2, 8) and feat.shape == (2, 512, 7, 7) and e.shape == (2, 512)
    assert isinstance(heads, list) and len(heads) == 2
    for h in heads:
        assert h.shape == (2, 512, 7, 7)
        assert (h >= 0).all() and (h <= 1).all()
        # attention map a_w * a_h: neither constant nor (mostly) saturated
        assert h.std().item() > 1e-2
        assert ((h > 1e-3) & (h < 0.999)).float().mean().item() > 0.9
    assert not torch.equal(heads[0], heads[1])
    _check_output(out)
    _check_output(e)
    torch.testing.assert_close(out, ddam8.fc(e), rtol=0, atol=0)
    # by hand: y = x * max(A0, A1) -> depthwise 7x7 Linear_block -> flatten -> fc; bn unused
    with torch.no_grad():
        y = ddam8.Linear(feat * torch.maximum(heads[0], heads[1])).flatten(1)
        torch.testing.assert_close(ddam8.fc(y), out)
        torch.testing.assert_close(ddam8.features(x), feat, rtol=0, atol=0)


def test_ddamnet_dead_params():
    """Exactly the spec's 81,424 params never influence the output (MDConv bn/prelu, head Linear, bn)."""
    m = ddamfn.DDAMNet(num_class=8, num_head=2)
    randomize.randomize_(m, seed=2, calib_input=None).eval()
    out, _, _ = m(_input(4, n=1))
    out.sum().backward()
    dead = {n: p.numel() for n, p in m.named_parameters() if p.grad is None}
    assert sum(dead.values()) == DDAM_DEAD_PARAMS
    for n in dead:
        assert (
            ".conv_dw.bn." in n
            or ".conv_dw.prelu." in n
            or ".CoordAtt.Linear." in n
            or n.startswith("bn.")
        ), n
    assert len([n for n in dead if n.endswith("conv_dw.prelu.weight")]) == 34


def test_ddamnet_stage_shapes(ddam8):
    x = _input(5)
    sizes = []
    with torch.no_grad():
        for layer in ddam8.features:
            x = layer(x)
            sizes.append(tuple(x.shape[1:]))
    assert sizes == [
        (64, 56, 56), (64, 56, 56), (64, 28, 28), (64, 28, 28), (128, 14, 14),
        (128, 14, 14), (256, 7, 7), (256, 7, 7), (512, 7, 7),
    ]


def test_mixedfeaturenet_forward_is_l2_normalised():
    mfn = randomize.randomize_(ddamfn.MixedFeatureNet(), seed=0, calib_input=None).eval()
    with torch.no_grad():
        y = mfn(_input(6))
    assert y.shape == (2, 256)
    torch.testing.assert_close(y.norm(dim=1), torch.ones(2))


# --------------------------------------------------------------------------------------------
# randomize_


def test_randomize_deterministic_and_total():
    a = mobilefacenet.get_mbf_mtl()
    before = {k: v.clone() for k, v in a.state_dict().items()}
    randomize.randomize_(a, seed=7)
    b = randomize.randomize_(mobilefacenet.get_mbf_mtl(), seed=7)
    c = randomize.randomize_(mobilefacenet.get_mbf_mtl(), seed=8)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0)
        if k.endswith("num_batches_tracked"):
            continue
        assert not torch.equal(v, before[k]), f"{k} not randomised"
        assert not torch.equal(v, c.state_dict()[k]), f"{k} does not depend on the seed"
        assert torch.isfinite(v).all()
        if v.numel() > 1:
            assert v.std() > 0, k
        if k.endswith("running_var"):
            assert (v > 0).all()
    assert a.training  # mode is preserved


def test_randomize_ddam_dead_bn_still_random(ddam8):
    sd = ddam8.state_dict()
    for k in ["bn.running_mean", "features.2.conv_dw.bn.running_var", "cat_head1.CoordAtt.Linear.bn.running_mean"]:
        v = sd[k]
        assert not torch.equal(v, torch.zeros_like(v)) and not torch.equal(v, torch.ones_like(v)), k


def test_randomize_no_calibration_option():
    m = randomize.randomize_(mobilefacenet.get_mbf(False, 512), seed=0, calib_input=None).eval()
    with torch.no_grad():
        assert torch.isfinite(m(_input(0))).all()


@pytest.mark.parametrize("kind", ["randn", "uniform"])
def test_randomize_ddam_other_inputs(ddam8, kind):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 112, 112, generator=g) if kind == "randn" else torch.rand(2, 3, 112, 112, generator=g) * 2 - 1
    with torch.no_grad():
        _check_output(ddam8(x)[0])


def test_randomize_timm_efficientnet():
    timm = pytest.importorskip("timm")
    m = timm.create_model("tf_efficientnet_b0", pretrained=False, num_classes=10)
    randomize.randomize_(m, seed=0).eval()
    before_bn = m.bn1.running_var.clone()
    assert not torch.equal(before_bn, torch.ones_like(before_bn))
    with torch.no_grad():
        _check_output(m(_input(0)))
        _check_output(m(torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))))


# --------------------------------------------------------------------------------------------
# pickling


def test_mobilefacenet_pickle_roundtrip(mbf):
    buf = io.BytesIO()
    torch.save(mbf, buf)
    raw = buf.getvalue()
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        pkl = b"".join(zf.read(n) for n in zf.namelist() if n.endswith("data.pkl"))
    assert b"mobilefacenet\nMobileFaceNet" in pkl  # GLOBAL 'mobilefacenet MobileFaceNet'
    loaded = torch.load(io.BytesIO(raw), weights_only=False)
    assert type(loaded).__module__ == "mobilefacenet" and type(loaded).__name__ == "MobileFaceNet"
    x = _input(8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), mbf(x), rtol=0, atol=0)


def test_ddamnet_checkpoint_roundtrip(ddam8):
    buf = io.BytesIO()
    torch.save({"iter": 9, "model_state_dict": ddam8.state_dict(), "optimizer_state_dict": {}}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    m = ddamfn.DDAMNet(num_class=8, num_head=2)
    m.load_state_dict(ckpt["model_state_dict"], strict=True)
    m.bn = torch.nn.Identity()  # what HSE does after loading; a no-op for forward
    m.eval()
    x = _input(9)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], ddam8(x)[0], rtol=0, atol=0)
