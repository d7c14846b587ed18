"""`hsemo-jax export` on bad input: a clear one-line error (exit 2) and nothing written at
--out, where a file already there is kept as it was and no temporary file is left beside it."""
import jax
import numpy as np
import pytest
from flax import nnx

from hsemo_jax.checkpoint import ModelInfo
from hsemo_jax.cli import main as cli_main
from hsemo_jax.commands import export as export_command
from hsemo_jax.export import metadata_path


def _fails(tmp_path, capsys, *args, name="model.out"):
    """Run the command with an existing file at --out; returns its one error line."""
    out = tmp_path / name
    out.write_text("old")
    assert cli_main(["export", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hsemo-jax export: error: "), err
    assert out.read_text() == "old" and not metadata_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "a temporary file was left behind"
    return err[0]


def test_unknown_format(tmp_path, capsys):
    assert "unknown format 'tflite'; expected one of onnx, stablehlo" in _fails(
        tmp_path, capsys, "mobilefacenet", "--format", "tflite")


@pytest.mark.parametrize("batch", ["0", "-2", "many"])
def test_bad_batch(tmp_path, capsys, batch):
    assert f"--batch: expected a positive integer or 'dynamic', got '{batch}'" in _fails(
        tmp_path, capsys, "mobilefacenet", "--format", "stablehlo", "--batch", batch)


def test_unknown_dtype(tmp_path, capsys):
    assert "--dtype: expected one of float32, bfloat16, got 'float16'" in _fails(
        tmp_path, capsys, "mobilefacenet", "--format", "stablehlo", "--dtype", "float16")


def test_unknown_model(tmp_path, capsys):
    assert "no_such_model: unknown model" in _fails(tmp_path, capsys, "no_such_model", "--format", "onnx")


def test_bfloat16_onnx_is_refused(tmp_path, capsys):
    pytest.importorskip("jax2onnx")
    err = _fails(tmp_path, capsys, "mobilefacenet", "--format", "onnx", "--dtype", "bfloat16")
    assert "ONNX export is float32 only" in err and "--format stablehlo" in err


def test_a_model_jax2onnx_cannot_convert(tmp_path, capsys, monkeypatch):
    """Traced without the XLA forms, the model holds `lax.platform_dependent`, which jax2onnx
    has no converter for: the converter's own message, on one line."""
    pytest.importorskip("jax2onnx")
    from hsemo_jax import ops

    monkeypatch.setattr(ops, "xla_forms", lambda **_: __import__("contextlib").nullcontext())
    err = _fails(tmp_path, capsys, "mobilefacenet", "--format", "onnx")
    assert "mobilefacenet: cannot export to onnx:" in err and "platform_index" in err


class _HostCallback(nnx.Module):
    """A model whose forward calls back into Python, which no artifact can carry."""

    def __call__(self, x):
        spec = jax.ShapeDtypeStruct((x.shape[0], 10), x.dtype)
        return jax.pure_callback(lambda a: np.zeros((a.shape[0], 10), a.dtype), spec, x)


def test_a_model_jax_export_cannot_serialize(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export_command, "load", lambda spec: (_HostCallback(), ModelInfo.for_arch("mobilefacenet", 10)))
    err = _fails(tmp_path, capsys, "mobilefacenet", "--format", "stablehlo")
    assert "mobilefacenet: cannot export to stablehlo:" in err


@pytest.mark.parametrize("where", ["the_pt_file", "inside_the_model_dir", "the_pt_file_spelled_otherwise"])
def test_out_that_would_replace_the_model_is_refused(tmp_path, capsys, monkeypatch, where):
    """`export model.pt --out model.pt` replaced the checkpoint, `--out DIR/hsemo_model.json` wrote into
    the model directory; both are refused before the model is loaded."""
    monkeypatch.setattr(export_command, "load", lambda spec: pytest.fail("the model was loaded"))
    (tmp_path / "m").mkdir()
    meta = tmp_path / "m" / "hsemo_model.json"
    meta.write_text("{}")
    pt = tmp_path / "m.pt"
    pt.write_bytes(b"weights")
    model, out = {"the_pt_file": (pt, pt), "inside_the_model_dir": (tmp_path / "m", meta),
                  "the_pt_file_spelled_otherwise": (pt, tmp_path / "m" / ".." / "m.pt")}[where]
    assert cli_main(["export", str(model), "--format", "stablehlo", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("would replace the input" in err[0] or "inside the model directory" in err[0]), err
    assert pt.read_bytes() == b"weights" and meta.read_text() == "{}"
