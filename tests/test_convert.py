"""`hsemo-jax convert`: architecture inference, key/shape checking, atomic output, refusals."""
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from hsemo_jax.checkpoint import META_FILE
from hsemo_jax.cli import main as cli_main
from hsemo_jax.convert import convert_state_dict, export_torch_state, infer_arch
from hsemo_jax.errors import CheckpointError
from hsemo_jax.models import registry


@pytest.fixture(scope="module")
def mbf_state():
    """A MobileFaceNet state dict in torch layout (keys, shapes and order of the original)."""
    model = registry.build("mobilefacenet", 10, seed=1)
    return {k: torch.from_numpy(v.copy()) for k, v in export_torch_state(model, "mobilefacenet").items()}


def _convert(src, out, *extra):
    return cli_main(["convert", str(src), "--out", str(out), *extra])


def test_round_trip_through_cli(tmp_path, mbf_state, capsys):
    src = tmp_path / "mbf.pt"
    torch.save(mbf_state, src)
    assert _convert(src, tmp_path / "m") == 0
    meta = json.loads((tmp_path / "m" / META_FILE).read_text())
    assert meta["arch"] == "mobilefacenet" and meta["input_size"] == 112
    assert meta["outputs"][-2:] == ["valence", "arousal"] and meta["mean"] == [0.5, 0.5, 0.5]
    assert len(meta["source"]["sha256"]) == 64
    assert "mobilefacenet" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["missing", "unexpected", "shape"])
def test_key_errors_name_the_keys_and_leave_nothing(tmp_path, mbf_state, capsys, damage):
    sd = dict(mbf_state)
    if damage == "missing":
        del sd["conv_sep.layers.2.weight"]
    elif damage == "unexpected":
        sd["conv_sep.extra.weight"] = torch.zeros(3)
    else:
        sd["fc.weight"] = torch.zeros(10, 256)
    src = tmp_path / "bad.pt"
    torch.save(sd, src)
    out = tmp_path / "m"
    assert _convert(src, out) == 2
    err = capsys.readouterr().err
    # one line, keys named as the checkpoint names them (the missing PReLU weight is not `.alpha`),
    # and a key of the wrong shape is not listed again as missing
    key = {"missing": "missing (1): conv_sep.layers.2.weight", "unexpected": "conv_sep.extra.weight",
           "shape": "fc.weight"}
    assert key[damage] in err and str(src) in err and err.count("\n") == 1, err
    assert damage != "shape" or "missing" not in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".m.")]


def test_arch_given_for_unrecognized_keys_is_not_told_to_pass_arch(tmp_path, mbf_state, capsys):
    sd = dict(mbf_state)
    del sd["conv_sep.layers.0.weight"]  # one of the keys that tell MobileFaceNet apart
    src = tmp_path / "bad.pt"
    torch.save(sd, src)
    assert _convert(src, tmp_path / "m", "--arch", "mobilefacenet") == 2
    err = capsys.readouterr().err
    assert "not those of --arch mobilefacenet" in err and "pass --arch" not in err, err


def test_existing_output_is_kept_unless_overwrite(tmp_path, mbf_state, capsys):
    src = tmp_path / "mbf.pt"
    torch.save(mbf_state, src)
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert _convert(src, out) == 2
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert _convert(src, out, "--overwrite") == 2  # a folder of other things is never replaced
    assert "not an hsemo-jax model directory" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert _convert(src, tmp_path / "m2") == 0
    (tmp_path / "m2" / "stale.txt").write_text("x")
    assert _convert(src, tmp_path / "m2", "--overwrite") == 0  # a model directory is
    assert (tmp_path / "m2" / META_FILE).exists() and not (tmp_path / "m2" / "stale.txt").exists()


@pytest.mark.parametrize("where", ["out_is_src", "out_holds_src", "out_is_a_file"])
def test_overwrite_never_deletes_the_source_or_a_file(tmp_path, mbf_state, capsys, monkeypatch, where):
    """`convert x.pt --out x.pt --overwrite` replaced the checkpoint with the model directory, and
    `--out FOLDER --overwrite` deleted the whole folder holding it; both are refused before reading."""
    import hsemo_jax.convert as conv

    folder = tmp_path / "project"
    folder.mkdir()
    src = folder / "mbf.pt"
    torch.save(mbf_state, src)
    (folder / "notes.txt").write_text("mine")
    out = {"out_is_src": src, "out_holds_src": folder, "out_is_a_file": folder / "notes.txt"}[where]
    monkeypatch.setattr(conv, "load_torch_file", lambda *a: pytest.fail("the checkpoint was read"))
    assert _convert(src, out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err
    assert src.is_file() and (folder / "notes.txt").read_text() == "mine"


def test_unsafe_pickle_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    src = tmp_path / "evil.pt"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"model_state_dict": Payload()}, protocol=2))
        zf.writestr("archive/version", "3\n")
    assert _convert(src, tmp_path / "m") == 2
    err = capsys.readouterr().err
    assert "system" in err and str(src) in err
    assert not marker.exists() and not (tmp_path / "m").exists()


def test_zip_members_outside_the_archive_are_one_warning_line(tmp_path, mbf_state, capsys):
    src = tmp_path / "mbf.pt"
    torch.save(mbf_state, src)
    with zipfile.ZipFile(src, "a") as zf:
        zf.writestr("../../etc/x", b"x")
    assert _convert(src, tmp_path / "m") == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"hsemo-jax convert: warning: {src}: ignored 1 zip member outside 'mbf/', which "
                   "torch.save never writes: '../../etc/x'"]


def test_legacy_format_converts(tmp_path, mbf_state):
    src = tmp_path / "old.pt"
    torch.save(mbf_state, src, _use_new_zipfile_serialization=False)
    assert _convert(src, tmp_path / "m") == 0
    assert json.loads((tmp_path / "m" / META_FILE).read_text())["arch"] == "mobilefacenet"


def test_arch_inference_and_mismatch(mbf_state):
    sd = {k: v.numpy() for k, v in mbf_state.items()}
    assert infer_arch(sd) == ("mobilefacenet", 10, 2)
    with pytest.raises(CheckpointError, match="cannot tell the architecture"):
        infer_arch({"foo.weight": np.zeros(3)})
    enet = export_torch_state(registry.build("tf_efficientnet_b0", 8), "efficientnet")
    enet8 = {k.replace("classifier.", "classifier.0."): v for k, v in enet.items()}
    assert infer_arch(enet8) == ("tf_efficientnet_b0", 8, 2)
    convert_state_dict(enet8, "tf_efficientnet_b0", 8)  # Sequential classifier keys load
    ddam = export_torch_state(registry.build("ddamfn", 7), "ddamfn")
    assert infer_arch(ddam) == ("ddamfn", 7, 2)


def test_arch_flag_must_match_keys(tmp_path, mbf_state, capsys):
    src = tmp_path / "mbf.pt"
    torch.save(mbf_state, src)
    assert _convert(src, tmp_path / "m", "--arch", "ddamfn") == 2
    assert "--arch ddamfn" in capsys.readouterr().err


@pytest.fixture(scope="module")
def timm_b0(tmp_path_factory):
    """Whole pickled timm B0s: TF "same" padding (Conv2dSame, eps 1e-3), symmetric padding (eps
    1e-5), and symmetric padding with eps 1e-3 (a model neither architecture is)."""
    timm = pytest.importorskip("timm")
    folder = tmp_path_factory.mktemp("timm")
    paths = {}
    for name, arch, eps in [("tf", "tf_efficientnet_b0", None), ("sym", "efficientnet_b0", None),
                            ("sym_eps3", "efficientnet_b0", 1e-3)]:
        model = timm.create_model(arch, pretrained=False, num_classes=8)
        for m in model.modules():
            if eps and isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eps = eps
        paths[name] = folder / f"{name}.pt"
        torch.save(model, paths[name])
    return paths


def test_arch_flag_contradicting_padding_or_eps_is_refused(tmp_path, timm_b0, capsys):
    """`--arch efficientnet_b0` on a TF-padded checkpoint used to convert, scores off by up to 0.37."""
    out = tmp_path / "m"
    assert _convert(timm_b0["tf"], out, "--arch", "efficientnet_b0") == 2
    err = capsys.readouterr().err
    assert err == (f"hsemo-jax convert: error: {timm_b0['tf']}: --arch efficientnet_b0 contradicts the "
                   "checkpoint: its modules show TF 'same' padding modules (timm.layers.conv2d_same.Conv2dSame)"
                   " and batch-norm eps 0.001, efficientnet_b0 has symmetric padding and eps 1e-05; the "
                   "checkpoint is tf_efficientnet_b0\n")
    assert _convert(timm_b0["sym"], out, "--arch", "tf_efficientnet_b0") == 2
    err = capsys.readouterr().err
    assert ("its modules show no padding modules (symmetric padding) and batch-norm eps 1e-05, "
            "tf_efficientnet_b0 has TF 'same' padding and eps 0.001; the checkpoint is efficientnet_b0") in err
    assert _convert(timm_b0["sym_eps3"], out) == 2
    err = capsys.readouterr().err
    assert "none of them has" in err and "tf_efficientnet_b0 or efficientnet_b0" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []

    sd = {k: v.numpy() for k, v in torch.load(timm_b0["sym"], weights_only=False).state_dict().items()}
    with pytest.raises(CheckpointError, match=r"b0\.pt: --arch tf_efficientnet_b2 contradicts the checkpoint: "
                                              r"its keys are those of tf_efficientnet_b0 or efficientnet_b0"):
        infer_arch(sd, None, "b0.pt", "tf_efficientnet_b2")
    assert infer_arch(sd, None, "b0.pt", "efficientnet_b0")[0] == "efficientnet_b0"  # a state dict: as told
    assert _convert(timm_b0["sym"], out) == 0  # inferred from the modules
    assert json.loads((out / META_FILE).read_text())["arch"] == "efficientnet_b0"


def test_every_subcommand_has_help(capsys):
    from hsemo_jax.cli import COMMANDS

    for name in ["--help", *[f"{c} --help" for c in COMMANDS]]:
        with pytest.raises(SystemExit) as e:
            cli_main(name.split())
        assert e.value.code == 0
    assert "convert" in capsys.readouterr().out


def test_parameter_counts_match_the_originals():
    """Spec §1: backbones without classifier, and DDAMFN with its never-used parameters."""
    from flax import nnx

    def count(arch, n):
        m = registry.build(arch, n)
        return sum(int(np.prod(v[...].shape)) for _, v in nnx.to_flat_state(nnx.state(m, nnx.Param)))

    assert count("tf_efficientnet_b0", None) == 4_007_548
    assert count("tf_efficientnet_b2", None) == 7_700_994
    assert count("mobilefacenet", None) == 2_059_520
    assert count("ddamfn", 8) == 4_187_936
    assert count("ddamfn", 7) == 4_187_421


def test_damaged_model_directories_are_one_line_errors(tmp_path):
    """A model directory whose hsemo_model.json was overwritten by another file (binary: a
    UnicodeDecodeError traceback), is not an object, lacks a field or names no known architecture,
    or whose array files were truncated (orbax's bare Exception) is a CheckpointError naming it."""
    import shutil

    from hsemo_jax.checkpoint import ModelInfo, load_model, save_model

    good = save_model(registry.build("tiny_cnn", 10, seed=0), ModelInfo.for_arch("tiny_cnn", 10), tmp_path / "good")
    meta = json.loads((good / META_FILE).read_text())
    cases = {"binary": b"\x00\xe4\xff" * 40, "list": b"[1, 2]",
             "no_outputs": json.dumps({k: v for k, v in meta.items() if k != "outputs"}).encode(),
             "bad_arch": json.dumps({**meta, "arch": "resnet50"}).encode()}
    expected = {"binary": "invalid JSON", "list": "expected format", "no_outputs": "no 'outputs' field",
                "bad_arch": "unknown architecture 'resnet50'"}
    for name, data in cases.items():
        d = tmp_path / name
        shutil.copytree(good, d)
        (d / META_FILE).write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{META_FILE}: {expected[name]}"):
            load_model(d)
    d = tmp_path / "truncated"
    shutil.copytree(good, d)
    for f in (d / "state").glob("ocdbt.process_*/d/*"):  # the arrays' data, not their metadata
        f.write_bytes(f.read_bytes()[:10])
    with pytest.raises(CheckpointError, match="truncated: cannot restore the model state"):
        load_model(d)


def test_class_order_for_a_checkpoint_without_8_expression_logits_is_refused(tmp_path, mbf_state, capsys):
    """A 7-class checkpoint converted with --class-order affectnet got HSEmotion's 7 names silently."""
    sd = dict(mbf_state)
    sd["fc.weight"], sd["fc.bias"] = sd["fc.weight"][:7], sd["fc.bias"][:7]
    torch.save(sd, tmp_path / "m7.pt")
    assert _convert(tmp_path / "m7.pt", tmp_path / "m", "--class-order", "affectnet") == 2
    assert "--class-order affectnet orders 8 expression logits" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    assert _convert(tmp_path / "m7.pt", tmp_path / "m") == 0
