"""`hsemo-jax export --format stablehlo`: one serialized artifact for CPU, CUDA and TPU that a
process without hsemo-jax reloads with `jax.export.deserialize` and runs to the live model's
outputs (max |artifact - model| <= 1e-4 * max |model|); the metadata JSON beside it; bfloat16."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from hsemo_jax.cli import main as cli_main
from hsemo_jax.export import export_model, metadata_path, read_metadata
from hsemo_jax.export.preprocess import read_out
from hsemo_jax.models import preprocess
from hsemo_jax.models.inference import make_forward

from export_fixtures import SOURCE, calibrated_model, faces

ARCH = "mobilefacenet"

# Run by a fresh interpreter: only jax and numpy, never hsemo_jax.
RELOAD = """
import sys
import numpy as np
from jax import export

for artifact, inputs, result in zip(*[iter(sys.argv[1:])] * 3):  # (artifact, inputs.npz, outputs.npz) ...
    outputs = {}
    inputs = np.load(inputs)
    with open(artifact, "rb") as f:
        exported = export.deserialize(bytearray(f.read()))
    for name in inputs.files:
        out = exported.call(inputs[name])
        for i, o in enumerate(out if isinstance(out, (tuple, list)) else [out]):
            outputs[f"{name}.{i}"] = np.asarray(o)
    assert "hsemo_jax" not in sys.modules, "the artifact needed hsemo_jax"
    outputs["platforms"] = np.array(exported.platforms)
    np.savez(result, **outputs)
"""


def _close(got, want, what, rel=1e-4):
    err, scale = np.abs(got - want).max(), np.abs(want).max()
    assert np.isfinite(want).all() and scale > 1e-3, f"{what}: degenerate reference"
    assert err <= rel * scale, f"{what}: max|artifact - model| = {err:.3g} > {rel} * {scale:.3g}"


def _reload_and_run(tmp_path, *runs) -> list[dict]:
    """runs: (artifact, {name: input}) ...; one fresh process (one jax import) reloads and runs them all."""
    argv = []
    for k, (artifact, inputs) in enumerate(runs):
        np.savez(tmp_path / f"inputs{k}.npz", **inputs)
        argv += [str(artifact), str(tmp_path / f"inputs{k}.npz"), str(tmp_path / f"outputs{k}.npz")]
    subprocess.run([sys.executable, "-c", RELOAD, *argv], check=True, cwd=tmp_path, timeout=600)
    results = []
    for k in range(len(runs)):
        with np.load(tmp_path / f"outputs{k}.npz") as f:
            results.append({name: f[name] for name in f.files})
    return results


@pytest.fixture(scope="module")
def model():
    return calibrated_model(ARCH)


def test_a_fresh_process_without_hsemo_jax_runs_the_artifact(model, tmp_path):
    """Plain (float32 NHWC in, scores out) and with preprocessing (uint8 crops of two sizes
    through the same artifact), dynamic batch, reloaded and run in a subprocess."""
    net, info = model
    plain, pre = tmp_path / "mbf.stablehlo", tmp_path / "mbf_pre.stablehlo"
    export_model(net, info, "stablehlo", plain)
    export_model(net, info, "stablehlo", pre, with_preprocess=True)
    crops = faces()
    x = preprocess(ARCH, crops)
    big, small = np.stack([crops[0], crops[0][::-1]]), np.stack(crops[1:])
    plain_out, pre_out = _reload_and_run(tmp_path, (plain, {"x": x, "x1": x[:1]}), (pre, {"big": big, "small": small}))
    assert tuple(plain_out["platforms"]) == ("cpu", "cuda", "tpu")

    forward = make_forward(net)
    want = np.asarray(forward(x))
    _close(plain_out["x.0"], want, "scores, batch 4")
    _close(plain_out["x1.0"], want[:1], "scores, batch 1")
    for name, batch in (("big", big), ("small", small)):
        probs, va = (np.asarray(a) for a in read_out(forward(preprocess(ARCH, list(batch))), True))
        assert np.abs(pre_out[f"{name}.0"] - probs).max() <= 1e-5, name
        _close(pre_out[f"{name}.1"], va, f"valence/arousal of the {name} crops")

    meta = read_metadata(plain, "stablehlo")
    assert meta == json.loads(metadata_path(plain).read_text())
    assert meta["platforms"] == ["cpu", "cuda", "tpu"] and meta["source_sha256"] == SOURCE["sha256"]
    assert (meta["arch"], meta["input_size"], meta["mean"], meta["std"]) == (ARCH, 112, [0.5] * 3, [0.5] * 3)
    assert meta["outputs"] == list(info.outputs) and meta["class_order"] == "hse"
    assert read_metadata(pre, "stablehlo")["input"]["shape"] == ["batch", "height", "width", 3]


def test_bfloat16_weights_and_activations(model, tmp_path):
    """--dtype bfloat16: bfloat16 constants in the module, float32 in and out, and the artifact
    computes what the live model does in bfloat16 (the same program, jitted)."""
    from hsemo_jax.export import build_program

    net, info = model
    path = tmp_path / "mbf_bf16.stablehlo"
    meta = export_model(net, info, "stablehlo", path, dtype="bfloat16")
    exported = jax.export.deserialize(bytearray(path.read_bytes()))
    assert meta["dtype"] == "bfloat16" and "bf16" in exported.mlir_module()
    assert [str(a.dtype) for a in exported.in_avals + exported.out_avals] == ["float32", "float32"]
    x = preprocess(ARCH, faces())
    live = jax.jit(build_program(net, info, dtype="bfloat16").fn)
    _close(np.asarray(exported.call(x)), np.asarray(live(x)), "bfloat16 scores", rel=1e-2)


def test_cli_writes_the_artifact_and_its_json(tmp_path, capsys):
    out = tmp_path / "b.stablehlo"
    assert cli_main(["export", ARCH, "--format", "stablehlo", "--out", str(out), "--batch", "2"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "x float32[2,112,112,3]" in printed
    meta = read_metadata(out, "stablehlo")
    assert meta["input"]["shape"] == [2, 112, 112, 3] and meta["source"] == {"random_weights": True, "seed": 0}
    assert jax.export.deserialize(bytearray(out.read_bytes())).in_avals[0].shape == (2, 112, 112, 3)


def test_a_model_without_a_head_exports_its_embedding(tmp_path):
    from hsemo_jax.checkpoint import ModelInfo
    from hsemo_jax.errors import InputError
    from hsemo_jax.models import registry

    net, info = registry.build(ARCH, None), ModelInfo.for_arch(ARCH, None)
    meta = export_model(net, info, "stablehlo", tmp_path / "e.shlo")
    assert meta["graph_outputs"] == [{"name": "embedding", "shape": ["batch", 512], "columns": None}]
    assert jax.export.deserialize(bytearray((tmp_path / "e.shlo").read_bytes())).out_avals[0].shape[1] == 512
    with pytest.raises(InputError, match="no class scores"):
        export_model(net, info, "stablehlo", tmp_path / "p.shlo", with_preprocess=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.shlo", "e.shlo.json"]
