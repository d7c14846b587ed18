"""Tests for hsemo_jax.convert.torch_reader: torch-free, code-free checkpoint reading."""

import collections
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from hsemo_jax.convert.torch_reader import (
    InertObject,
    extract_state_dict,
    load_torch_file,
    read_state_dict,
)
from hsemo_jax.errors import CheckpointError, UnsafePickleError


def _assert_same(sd, ref):
    """sd: dict of np arrays; ref: dict of torch tensors. Same keys (order too), dtypes, values."""
    assert list(sd) == list(ref)
    for k, t in ref.items():
        a = sd[k]
        assert isinstance(a, np.ndarray), k
        assert a.shape == tuple(t.shape), k
        if t.dtype == torch.bfloat16:
            assert a.dtype.name == "bfloat16", k
            np.testing.assert_array_equal(a.astype(np.float32), t.float().numpy(), err_msg=k)
        else:
            assert a.dtype == t.numpy().dtype, k
            np.testing.assert_array_equal(a, t.numpy(), err_msg=k)


def _rewrite_zip(src, dst, edit):
    """Copy zip `src` to `dst`, mapping each (name, bytes) through edit(name, data) -> bytes | None (drop)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            data = edit(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)


def _torch_like_zip(path, data_pkl: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")


def _mixed_state_dict():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    return collections.OrderedDict(
        f32=torch.randn(3, 5, generator=g),
        f16=torch.randn(7, generator=g).half(),
        bf16=torch.randn(2, 3, generator=g).bfloat16(),
        f64=torch.randn(2, 2, generator=g).double(),
        i64=torch.arange(-5, 5),
        i32=torch.arange(6, dtype=torch.int32).reshape(2, 3),
        i16=torch.tensor([-3, 7], dtype=torch.int16),
        i8=torch.tensor([-128, 127], dtype=torch.int8),
        u8=torch.tensor([0, 255], dtype=torch.uint8),
        flag=torch.tensor([True, False, True]),
        base=base,
        transposed=base.t(),  # shares base's storage, non-contiguous
        window=base[1:, 2:5],  # storage offset + strides
        flat_view=base.view(-1)[3:9],  # third view of the same storage
        scalar=torch.tensor(2.5),  # 0-d
        empty=torch.zeros(0, 3),
    )


def test_round_trip_dtypes_views_shared_storage(tmp_path):
    ref = _mixed_state_dict()
    path = tmp_path / "sd.pt"
    torch.save(ref, path)
    with zipfile.ZipFile(path) as z:  # the views really do share one storage record
        assert len([n for n in z.namelist() if "/data/" in n]) == len(ref) - 3
    sd = read_state_dict(path)
    _assert_same(sd, ref)
    assert sd["scalar"].shape == ()
    assert not np.shares_memory(sd["base"], sd["transposed"])  # copies, not views


def test_big_endian_byteorder_record(tmp_path):
    ref = collections.OrderedDict(a=torch.randn(3, 2), b=torch.randn(4).bfloat16(), c=torch.arange(3))
    torch.save(ref, tmp_path / "le.pt")
    itemsize = {"0": 4, "1": 2, "2": 8}

    def to_big(name, data):
        if name.endswith("/byteorder"):
            return b"big"
        key = name.rsplit("/data/", 1)[-1] if "/data/" in name else None
        if key in itemsize:
            return np.frombuffer(data, f"<u{itemsize[key]}").astype(f">u{itemsize[key]}").tobytes()
        return data

    _rewrite_zip(tmp_path / "le.pt", tmp_path / "be.pt", to_big)
    _assert_same(read_state_dict(tmp_path / "be.pt"), ref)


def test_misc_objects_become_plain_values_or_markers(tmp_path):
    obj = {
        "size": torch.Size([2, 3]),
        "device": torch.device("cpu"),
        "dtype": torch.float16,
        "blob": b"\x00\xffabc",
        "empty": b"",
        "tags": {"a", "b"},
        "nested": [(1, 2.5, None), {"t": torch.ones(2)}],
        "param": nn.Parameter(torch.full((2,), 3.0)),
        "tagged": torch.arange(3),  # python attribute -> torch._tensor._rebuild_from_type_v2
        "tagged_param": nn.Parameter(torch.ones(1)),  # -> _rebuild_parameter_with_state
    }
    obj["tagged"].note = "hi"
    obj["tagged_param"].note = "hi"
    torch.save(obj, tmp_path / "misc.pt")
    out = load_torch_file(tmp_path / "misc.pt")
    assert out["size"] == (2, 3)
    assert isinstance(out["device"], InertObject) and out["device"].qualname == "torch.device"
    assert out["device"].args == ("cpu",)
    assert out["dtype"].qualname == "torch.float16"
    assert out["blob"] == b"\x00\xffabc" and out["empty"] == b""
    assert out["tags"] == {"a", "b"}
    assert out["nested"][0] == (1, 2.5, None)
    np.testing.assert_array_equal(out["nested"][1]["t"], np.ones(2, np.float32))
    np.testing.assert_array_equal(out["param"], np.full(2, 3.0, np.float32))
    np.testing.assert_array_equal(out["tagged"], np.arange(3))
    np.testing.assert_array_equal(out["tagged_param"], np.ones(1, np.float32))


class TinyNet(nn.Module):
    """Pickled by reference as `__main__.TinyNet`, as when a training script saves its model."""

    __module__ = "__main__"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)  # bias is a None parameter
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.PReLU(4)
        self.head = nn.Sequential(nn.Conv2d(4, 2, 1), nn.Sequential(nn.BatchNorm2d(2), nn.PReLU()))
        self.register_buffer("scale", torch.tensor([0.5, 2.0]))
        self.register_buffer("scratch", torch.zeros(3), persistent=False)
        self.register_buffer("unset", None)


def test_whole_pickled_module(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules["__main__"], "TinyNet", TinyNet, raising=False)
    model = TinyNet()
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-1, 1)
        model.bn.running_mean.uniform_(-1, 1)
        model.head[1][0].running_var.uniform_(0.5, 2)
    torch.save(model, tmp_path / "model.pt")

    obj = load_torch_file(tmp_path / "model.pt")
    assert isinstance(obj, InertObject) and obj.qualname == "__main__.TinyNet"
    assert obj.state["_modules"]["bn"].qualname == "torch.nn.modules.batchnorm.BatchNorm2d"
    sd = read_state_dict(tmp_path / "model.pt")
    assert "scratch" not in sd and "unset" not in sd and "conv.bias" not in sd
    _assert_same(sd, model.state_dict())


def test_whole_pickled_timm_model(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_b0", pretrained=False, num_classes=8)
    torch.save(model, tmp_path / "eff.pt")
    obj = load_torch_file(tmp_path / "eff.pt")
    assert type(obj).__mro__[1] is InertObject and obj.qualname == "timm.models.efficientnet.EfficientNet"
    _assert_same(read_state_dict(tmp_path / "eff.pt"), model.state_dict())


def test_ddamfn_wrapper_and_dataparallel_prefix(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    sd = model.state_dict()
    torch.save({"iter": 3, "model_state_dict": sd, "optimizer_state_dict": opt.state_dict()}, tmp_path / "d.pt")
    _assert_same(read_state_dict(tmp_path / "d.pt"), sd)

    wrapped = collections.OrderedDict(("module." + k, v) for k, v in sd.items())
    torch.save({"state_dict": wrapped, "epoch": 1}, tmp_path / "dp.pt")
    _assert_same(read_state_dict(tmp_path / "dp.pt"), sd)


@pytest.mark.parametrize(
    "obj, found",
    [({"iter": 3, "weights": 1}, "keys ['iter', 'weights']"), ([1, 2], "found list"), ({"model": {}}, "['model']")],
)
def test_extract_state_dict_rejects_other_objects(obj, found):
    with pytest.raises(CheckpointError, match="ckpt.pt") as e:
        extract_state_dict(obj, "ckpt.pt")
    assert found in str(e.value)


class _Evil:
    """Pickles as a call of `func(*args)`; unpickling it with plain pickle would run it."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    return [
        (_Evil(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
        (_Evil(exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
        (_Evil(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
        (_Evil(torch.load, str(marker)), "torch.serialization.load"),
    ]


@pytest.mark.parametrize("index", range(4))
def test_malicious_reduce_is_refused(tmp_path, index):
    marker = tmp_path / "MARKER"
    payload, qualname = _payloads(marker)[index]
    # (a) inside a real torch.save archive, next to real tensors
    torch.save({"w": torch.ones(2), "evil": payload}, tmp_path / "a.pt")
    # (b) a plain (protocol 5) pickle as the archive's data.pkl
    _torch_like_zip(tmp_path / "b.pt", pickle.dumps({"evil": payload}, protocol=5))
    for name in ("a.pt", "b.pt"):
        with pytest.raises(UnsafePickleError, match=f"refuses global '{qualname}'") as e:
            read_state_dict(tmp_path / name)
        assert name in str(e.value)
    # (c) a bare pickle file is not a torch checkpoint at all
    (tmp_path / "c.pt").write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="not a PyTorch zip checkpoint"):
        load_torch_file(tmp_path / "c.pt")
    assert not marker.exists()


@pytest.mark.parametrize(
    "data_pkl, qualname",
    [
        # getattr(__import__('os'), 'system')('touch MARKER'), protocol 0
        (b"c__builtin__\ngetattr\n(c__builtin__\n__import__\n(Vos\ntRVsystem\ntR(Vtouch {m}\ntR.", "builtins.getattr"),
        (b"cbuiltins\n__import__\n(Vos\ntR.", "builtins.__import__"),
        (b"cbuiltins\neval\n(V__import__('os').system('touch {m}')\ntR.", "builtins.eval"),
        (b"cposix\nsystem\n(Vtouch {m}\ntR.", "posix.system"),
        (b"cnumpy.core.multiarray\n_reconstruct\n.", "numpy.core.multiarray._reconstruct"),
        (b"ctorch.hub\nload\n.", "torch.hub.load"),
        (b"ctorch.nn\nfunctional\n.", "torch.nn.functional"),  # trusted prefix: placeholder, no error
    ],
)
def test_crafted_globals(tmp_path, data_pkl, qualname):
    marker = tmp_path / "MARKER"
    _torch_like_zip(tmp_path / "x.pt", data_pkl.replace(b"{m}", str(marker).encode()))
    if qualname.startswith("torch.nn."):
        assert load_torch_file(tmp_path / "x.pt").qualname == qualname
        return
    with pytest.raises(UnsafePickleError, match=f"refuses global '{qualname}'"):
        load_torch_file(tmp_path / "x.pt")
    assert not marker.exists()


def test_trusted_names_stay_inert(tmp_path):
    marker = tmp_path / "MARKER"
    # REDUCE on a trusted-looking class with a shell command, then BUILD with a state dict;
    # and an unimportable `models.` name, which would fail if anything were imported.
    data_pkl = (
        b"(ctimm.models.efficientnet\nEfficientNet\n(Vtouch " + str(marker).encode() + b"\ntR"
        b"(dVcmd\nVrm -rf /\nsb"
        b"cmodels.does_not_exist\nPayload\n)Rl."
    )
    _torch_like_zip(tmp_path / "t.pt", data_pkl)
    eff, payload = load_torch_file(tmp_path / "t.pt")
    assert isinstance(eff, InertObject) and eff.qualname == "timm.models.efficientnet.EfficientNet"
    assert eff.args == (f"touch {marker}",) and eff.state == {"cmd": "rm -rf /"}
    assert isinstance(payload, InertObject) and payload.qualname == "models.does_not_exist.Payload"
    assert "models.does_not_exist" not in sys.modules
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="t.pt.*found list"):
        read_state_dict(tmp_path / "t.pt")


def _legacy(path, obj):
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    return path.read_bytes()


def test_legacy_format_dtypes_views_shared_storage(tmp_path):
    """torch < 1.6 files (facenet-pytorch's MTCNN weights are such files) read like zip ones."""
    ref = _mixed_state_dict()
    _legacy(tmp_path / "old.pt", ref)
    sd = read_state_dict(tmp_path / "old.pt")
    _assert_same(sd, ref)
    assert sd["scalar"].shape == ()


@pytest.mark.parametrize("keep", [0.3, 0.9, -1])
def test_legacy_truncated_file_is_refused(tmp_path, keep):
    data = _legacy(tmp_path / "old.pt", {"w": torch.arange(1000.0), "v": torch.ones(300)})
    (tmp_path / "cut.pt").write_bytes(data[: int(len(data) * keep) if keep > 0 else keep])
    with pytest.raises(CheckpointError, match=r"cut\.pt: .*(legacy|holds)"):
        read_state_dict(tmp_path / "cut.pt")


def test_legacy_storage_claims_are_bounded_by_the_file(tmp_path):
    """A storage that claims more elements than the file holds is refused before it is allocated."""
    data = _legacy(tmp_path / "old.pt", {"w": torch.ones(3)})
    big = data.replace(b"K\x03N", b"J\xff\xff\xff\x3fN", 1)  # numel 3 -> 2**30 - 1 in the persistent id
    assert big != data
    (tmp_path / "big.pt").write_bytes(big)
    with pytest.raises(CheckpointError, match=r"big\.pt: storage .* more than the file holds"):
        read_state_dict(tmp_path / "big.pt")


def test_legacy_unsafe_global_is_refused(tmp_path):
    data = _legacy(tmp_path / "old.pt", {"w": torch.ones(2)})
    (tmp_path / "evil.pt").write_bytes(data.replace(b"collections\nOrderedDict", b"posix\nsystem", 1))
    with pytest.raises(UnsafePickleError, match=r"evil\.pt.*posix\.system"):
        read_state_dict(tmp_path / "evil.pt")


def test_bad_files(tmp_path):
    (tmp_path / "rand.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match=r"rand\.pt: not a PyTorch zip checkpoint"):
        read_state_dict(tmp_path / "rand.pt")

    with pytest.raises(CheckpointError, match="nope.pt"):
        read_state_dict(tmp_path / "nope.pt")

    torch.save({"w": torch.arange(100.0)}, tmp_path / "good.pt")
    good = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt.*truncated"):
        read_state_dict(tmp_path / "cut.pt")

    _rewrite_zip(tmp_path / "good.pt", tmp_path / "short.pt", lambda n, d: d[:40] if n.endswith("/data/0") else d)
    with pytest.raises(CheckpointError, match=r"short\.pt.*'good/data/0' is truncated.*400 bytes, found 40"):
        read_state_dict(tmp_path / "short.pt")

    _rewrite_zip(tmp_path / "good.pt", tmp_path / "nodata.pt", lambda n, d: None if n.endswith("/data/0") else d)
    with pytest.raises(CheckpointError, match=r"nodata\.pt: missing record 'good/data/0'"):
        read_state_dict(tmp_path / "nodata.pt")

    _rewrite_zip(tmp_path / "good.pt", tmp_path / "nopkl.pt", lambda n, d: None if n.endswith("data.pkl") else d)
    with pytest.raises(CheckpointError, match=r"nopkl\.pt: expected exactly one '<root>/data.pkl'"):
        read_state_dict(tmp_path / "nopkl.pt")

    _torch_like_zip(tmp_path / "garbage.pt", b"\x80\x02}q\x00(X")
    with pytest.raises(CheckpointError, match=r"garbage\.pt: malformed"):
        read_state_dict(tmp_path / "garbage.pt")


def test_records_must_be_stored_or_deflated(tmp_path):
    """bzip2 and lzma inflate without a bound per step in zipfile; torch.save never writes them."""
    torch.save({"w": torch.arange(4.0)}, tmp_path / "good.pt")
    with zipfile.ZipFile(tmp_path / "good.pt") as zin, zipfile.ZipFile(tmp_path / "bz.pt", "w") as zout:
        for info in zin.infolist():
            method = zipfile.ZIP_BZIP2 if info.filename.endswith("/data/0") else zipfile.ZIP_DEFLATED
            zout.writestr(info.filename, zin.read(info), compress_type=method)
    with pytest.raises(CheckpointError, match=r"bz\.pt: record 'good/data/0' is compressed with method 12"):
        read_state_dict(tmp_path / "bz.pt")
    _rewrite_zip(tmp_path / "bz.pt", tmp_path / "stored.pt", lambda n, d: d)  # deflated data.pkl: read
    np.testing.assert_array_equal(read_state_dict(tmp_path / "stored.pt")["w"], np.arange(4.0, dtype=np.float32))


def test_tensor_bytes_are_bounded_in_total(tmp_path, monkeypatch):
    """Storages read plus tensors copied out of them count against MAX_TENSOR_BYTES, before each
    allocation; a tensor that is its whole storage costs nothing more."""
    from hsemo_jax.convert import torch_reader

    base = torch.arange(100.0).reshape(10, 10)  # 400 bytes
    torch.save(collections.OrderedDict(a=base, b=base.t(), c=base.t()), tmp_path / "views.pt")
    monkeypatch.setattr(torch_reader, "MAX_TENSOR_BYTES", 1200)
    read_state_dict(tmp_path / "views.pt")  # the storage, then b and c copied out of it: 3 x 400 bytes
    monkeypatch.setattr(torch_reader, "MAX_TENSOR_BYTES", 1199)
    with pytest.raises(CheckpointError, match=r"views\.pt: tensor of size \(10, 10\) of 400 bytes would bring "
                                              r"the checkpoint's tensors to 1200 bytes, more than 1199"):
        read_state_dict(tmp_path / "views.pt")


def test_shared_module_is_listed_under_each_name_as_torch_does(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules["__main__"], "TinyNet", TinyNet, raising=False)
    net = TinyNet()
    net.twin = net.head  # one module, two names
    torch.save(net, tmp_path / "shared.pt")
    sd = read_state_dict(tmp_path / "shared.pt")
    _assert_same(sd, net.state_dict())
    assert np.shares_memory(sd["head.0.weight"], sd["twin.0.weight"])


def test_zip_members_outside_the_archive_folder_are_named_in_a_warning(tmp_path):
    from hsemo_jax.errors import InputWarning

    torch.save({"w": torch.ones(2)}, tmp_path / "good.pt")
    with zipfile.ZipFile(tmp_path / "good.pt", "a") as z:
        for name in ("../escape", "/etc/cron.d/x", "good/../../up", "other/file"):
            z.writestr(name, b"x")
    with pytest.warns(InputWarning) as seen:
        sd = read_state_dict(tmp_path / "good.pt")
    np.testing.assert_array_equal(sd["w"], np.ones(2, np.float32))
    assert len(seen) == 1
    msg = str(seen[0].message)
    assert msg.startswith(f"{tmp_path / 'good.pt'}: ignored 4 zip members outside 'good/'")
    for name in ("'../escape'", "'/etc/cron.d/x'", "'good/../../up'", "'other/file'"):
        assert name in msg
