"""MobileViTv2 (`mobilevitv2_150`, backbone of HSEmotion's `mobilevit_va_mtl`) equals timm's.

timm's model with randomized weights and calibrated BN statistics is pickled whole (as HSEmotion
saves it), converted with the CLI, and compared at 224 px in float32: scores and the 768-d
embedding within 1e-4 * max |torch|. At 224 the stage-4 MobileViTv2 block gets a 7x7 map, so the
bilinear align_corners=True resize to 8x8 is on the compared path.
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
from hsemo_jax.convert import export_torch_state, infer_arch
from hsemo_jax.convert.torch_reader import read_state_dict
from hsemo_jax.errors import CheckpointError
from hsemo_jax.models import preprocess, registry
from hsemo_jax.models.inference import make_forward
from hsemo_jax.models.mobilevit import resize_bilinear_align_corners

from randomize import randomize_

ARCH = "mobilevitv2_150"


def _close(jax_out, ref, what):
    err = np.abs(np.asarray(jax_out) - ref).max()
    scale = np.abs(ref).max()
    assert np.isfinite(ref).all() and scale > 1e-3, f"{what}: degenerate reference"
    assert err <= 1e-4 * scale, f"{what}: max|jax - torch| = {err:.3g} > 1e-4 * {scale:.3g}"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(timm reference, its outputs, stage-4 block shapes, converted model, source file, input).

    Input batch 2 at 224: a real face preprocessed as `mobilevit_va_mtl` and a random normal image;
    the reference's BN statistics are calibrated on it (see tests/reference/randomize.py).
    """
    import timm
    from skimage import data

    face = data.astronaut()[20:220, 160:330]
    x = np.concatenate([preprocess("mobilevit_va_mtl", face),
                        np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)])
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2))
    ref = timm.create_model(ARCH, pretrained=False, num_classes=10)
    randomize_(ref, seed=zlib.crc32(ARCH.encode()), calib_input=xt)
    ref.eval()
    shapes = []
    hook = ref.stages[4][1].register_forward_hook(
        lambda mod, args, out: shapes.append((tuple(args[0].shape), tuple(out.shape))))
    with torch.no_grad():
        pooled = ref.forward_head(ref.forward_features(xt), pre_logits=True)
        scores = ref.head.fc(pooled)
    hook.remove()
    tmp = tmp_path_factory.mktemp("mobilevit")
    src = tmp / "mobilevit_va_mtl.pt"
    torch.save(ref, src)  # the whole module, as HSEmotion's checkpoint
    out = tmp / "converted"
    assert cli_main(["convert", str(src), "--out", str(out)]) == 0
    model = hsemo_jax.load_model(out)
    return ref, (scores.numpy(), pooled.numpy()), shapes, model, src, x


def test_scores_and_embedding_equal_timm(converted):
    _, (scores_t, embed_t), _, model, _, x = converted
    assert model.info.arch == ARCH and model.info.num_classes == 10
    assert model.info.input_size == 224 and model.info.embedding_dim == 768
    forward = make_forward(model, with_features=True)
    with jax.default_matmul_precision("float32"):
        f, scores = forward(jnp.asarray(x))
    assert f.shape == (2, 768) and scores.shape == (2, 10)
    _close(scores, scores_t, "scores")
    _close(f, embed_t, "embedding")


def test_stage4_odd_map_is_resized_to_even(converted):
    """timm's stage-4 block sees 7x7 at 224 and returns 8x8; the port has the same shapes."""
    _, _, shapes, model, _, _ = converted
    assert shapes == [((2, 768, 7, 7), (2, 768, 8, 8))]

    def to_stage4(m, x):
        x = m.stem(x)
        for stage in m.stages[:4]:
            for block in stage:
                x = block(x)
        y = m.stages[4][0](x)
        return y, m.stages[4][1](y)

    y, z = nnx.eval_shape(to_stage4, model, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
    assert y.shape == (2, 7, 7, 768) and z.shape == (2, 8, 8, 768)


@pytest.mark.parametrize("src_hw,dst_hw", [((7, 7), (8, 8)), ((5, 7), (6, 8)), ((3, 4), (10, 4)),
                                           ((1, 3), (2, 4))])
def test_resize_matches_torch_bilinear_align_corners(src_hw, dst_hw):
    x = np.random.default_rng(3).standard_normal((2, *src_hw, 5)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=dst_hw,
                                          mode="bilinear", align_corners=True)
    got = np.asarray(resize_bilinear_align_corners(jnp.asarray(x), dst_hw))
    np.testing.assert_allclose(got, ref.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-6)


def test_export_round_trips_every_key(converted):
    """Every parameter and BN statistic of timm's state dict comes back under its own key."""
    ref, _, _, model, _, _ = converted
    expected = {k: v.numpy() for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    exported = export_torch_state(model, "mobilevit")
    assert sorted(exported) == sorted(expected)  # NNX state order is alphabetical
    for k, v in expected.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)


def test_arch_inference_and_parameter_count(converted):
    ref, _, _, model, src, _ = converted
    sd = read_state_dict(src)  # the whole pickled timm module, read without torch
    assert len(sd) == 269 and list(sd) == list(ref.state_dict())
    assert infer_arch(sd) == (ARCH, 10, 2)
    assert registry.PUBLISHED["mobilevit_va_mtl"].arch == ARCH
    n = sum(int(np.prod(v[...].shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert n == sum(p.numel() for p in ref.parameters()) == 9_833_443


def test_unsupported_mobilevit_width_is_refused():
    sd = {"stem.conv.weight": np.zeros((64, 3, 3, 3), np.float32),
          "stages.4.1.conv_proj.conv.weight": np.zeros((1024, 512, 1, 1), np.float32)}
    with pytest.raises(CheckpointError, match="stage-4 width 1024"):
        infer_arch(sd, source="x.pt")
