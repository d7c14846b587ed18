"""Each backbone equals its PyTorch original: randomized weights and BN statistics, saved in the
original format, converted with the CLI, compared on random inputs and real faces (float32).

Tolerance: max |jax - torch| <= 1e-4 * max |torch|, for scores and embeddings.
"""
import zlib

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp
from flax import nnx

import hsemo_jax
from hsemo_jax.cli import main as cli_main
from hsemo_jax.convert import convert_state_dict, export_torch_state
from hsemo_jax.models import get_arch, preprocess
from hsemo_jax.models.inference import make_forward

import ddamfn as ref_ddamfn
import mobilefacenet as ref_mbf
from randomize import randomize_



@pytest.fixture(autouse=True)
def _no_grad():
    """Inference only; restored after each test so other test modules keep autograd."""
    with torch.no_grad():
        yield


def _timm(arch, classifier):
    import timm

    m = timm.create_model(arch, pretrained=False, num_classes=0)
    if classifier == "sequential8":  # HSEmotion's FER-only models
        m.classifier = torch.nn.Sequential(torch.nn.Linear(m.num_features, 8))
    elif classifier == "linear10":  # HSEmotion's MTL model
        m.classifier = torch.nn.Linear(m.num_features, 10)

    def embed(x):
        return m.forward_head(m.forward_features(x), pre_logits=True)

    return m, embed


def _mbf():
    m = ref_mbf.get_mbf(False, 512)
    m.fc = torch.nn.Linear(512, 10)
    return m, m.embed


def _ddamfn(num_class):
    m = ref_ddamfn.DDAMNet(num_class=num_class, num_head=2, pretrained=False)
    return m, m.embed


# name, reference builder, how it is saved (as HSEmotion / DDAMFN save it), expected params
CASES = {
    "tf_efficientnet_b0": (lambda: _timm("tf_efficientnet_b0", "linear10"), "module", 4_020_358),
    "efficientnet_b0": (lambda: _timm("efficientnet_b0", "sequential8"), "state_dict", 4_017_796),
    "tf_efficientnet_b2": (lambda: _timm("tf_efficientnet_b2", "sequential8"), "module", None),
    "mobilefacenet": (_mbf, "module", 2_064_650),
    "ddamfn": (lambda: _ddamfn(10), "ddamfn", 4_188_966),
}


def _save(model, how, path):
    if how == "module":
        torch.save(model, path)
    elif how == "state_dict":
        torch.save(model.state_dict(), path)
    else:
        torch.save({"iter": 9, "model_state_dict": model.state_dict(), "optimizer_state_dict": {}}, path)


def _faces():
    """Real face crops, uint8 RGB: the astronaut's face and LFW faces (grayscale -> RGB)."""
    from skimage import data

    astronaut = data.astronaut()[20:220, 160:330]
    lfw = data.lfw_subset()[:3]
    lfw = [np.repeat((f * 255).round().astype(np.uint8)[..., None], 3, axis=-1) for f in lfw]
    return [astronaut, *lfw]


def _torch_preprocess(faces, size, mean, std):
    from PIL import Image
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize(mean, std)])
    return torch.stack([tf(Image.fromarray(f)) for f in faces])


def _close(jax_out, torch_out, what):
    ref = torch_out.numpy()
    err = np.abs(np.asarray(jax_out) - ref).max()
    scale = np.abs(ref).max()
    assert np.isfinite(ref).all() and scale > 1e-3, f"{what}: degenerate reference"
    assert err <= 1e-4 * scale, f"{what}: max|jax - torch| = {err:.3g} > 1e-4 * {scale:.3g}"


@pytest.fixture(scope="module", params=list(CASES))
def converted(request, tmp_path_factory):
    """(arch, torch reference, its embedding fn, converted Flax model, expected params, inputs).

    inputs: [(x_nhwc for Flax, x_nchw for torch, label)]: random normals, and real faces
    preprocessed by each framework's own pipeline (which must agree). The reference's BN
    statistics are calibrated on these inputs, so both sit in the well-conditioned regime of the
    randomized network (a random deep net run far outside its calibration amplifies float32
    rounding: torch fp32 vs fp64 differ by 0.2% there).
    """
    arch = request.param
    build, how, n_params = CASES[arch]
    ref, embed = build()
    size, mean, std = (getattr(get_arch(arch), a) for a in ("input_size", "mean", "std"))
    faces = _faces()
    # as many random images as faces: one input shape, one compilation
    x = np.random.default_rng(0).standard_normal((len(faces), size, size, 3)).astype(np.float32)
    x_faces_t = _torch_preprocess(faces, size, mean, std)
    inputs = [(x, torch.from_numpy(x.transpose(0, 3, 1, 2)), "random"),
              (preprocess(arch, faces), x_faces_t, "faces")]
    randomize_(ref, seed=zlib.crc32(arch.encode()), calib_input=torch.cat([t for _, t, _ in inputs]))
    ref.eval()
    tmp = tmp_path_factory.mktemp(arch)
    src = tmp / "model.pt"
    _save(ref, how, src)
    out = tmp / "converted"
    # A bare EfficientNet state dict cannot show its padding style: say it, as a user would.
    arch_flag = ["--arch", arch] if how == "state_dict" else []
    assert cli_main(["convert", str(src), "--out", str(out), *arch_flag]) == 0
    model = hsemo_jax.load_model(out)
    assert model.info.arch == arch
    return arch, ref, embed, model, n_params, inputs


def test_parameter_count(converted):
    arch, ref, _, model, n_params, _ = converted
    n = sum(int(np.prod(v[...].shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert n == sum(p.numel() for p in ref.parameters())
    if n_params is not None:
        assert n == n_params


def test_scores_and_embeddings_equal_torch(converted):
    arch, ref, embed, model, _, inputs = converted
    forward = make_forward(model, with_features=True)
    (_, _, _), (x_faces, x_faces_t, _) = inputs
    np.testing.assert_allclose(x_faces, x_faces_t.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    with jax.default_matmul_precision("float32"):
        for xs, xt, what in inputs:
            f, scores = forward(jnp.asarray(xs))
            out_t = ref(xt)
            out_t = out_t[0] if isinstance(out_t, tuple) else out_t  # DDAMNet: (out, x, heads)
            _close(scores, out_t, f"{arch} scores on {what}")
            _close(f, embed(xt), f"{arch} embedding on {what}")


def test_export_round_trips_every_key(converted):
    """All parameters and statistics, including those the forward never uses, survive conversion."""
    arch, ref, _, model, _, _ = converted
    family = {"mobilefacenet": "mobilefacenet", "ddamfn": "ddamfn"}.get(arch, "efficientnet")
    exported = export_torch_state(model, family)
    expected = {k: v.numpy() for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    if "classifier.0.weight" in expected:  # exported under the canonical name
        expected = {k.replace("classifier.0.", "classifier."): v for k, v in expected.items()}
    assert list(exported) == list(expected) or set(exported) == set(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)


def test_train_mode_matches_torch_batch_statistics():
    """train(): batch statistics for normalization, running stats updated with torch momentum."""
    ref, _ = _mbf()
    randomize_(ref, seed=5)
    model = convert_state_dict({k: v.numpy() for k, v in ref.state_dict().items()}, "mobilefacenet", 10)
    x = np.random.default_rng(1).standard_normal((4, 112, 112, 3)).astype(np.float32)
    ref.train()
    model.train()
    with jax.default_matmul_precision("float32"):
        out = nnx.jit(lambda m, xx: m(xx))(model, jnp.asarray(x))
    _close(out, ref(torch.from_numpy(x.transpose(0, 3, 1, 2))), "train-mode scores")
    for bn, bn_t in [(model.layers[0].layers[1], ref.layers[0].layers[1]),
                     (model.gdc.layers[3], ref.features.layers[3])]:
        np.testing.assert_allclose(bn.mean[...], bn_t.running_mean.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bn.var[...], bn_t.running_var.numpy(), rtol=1e-4, atol=1e-5)
