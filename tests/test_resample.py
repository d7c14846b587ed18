"""`ops.resample.linear_scale_translate`: the CPU form (a few taps per output pixel) against
`jax.image.scale_and_translate`, which is the form other backends run."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsemo_jax.ops.resample import _linear_taps, linear_scale_translate, materialized

CASES = [  # (H, W), out (h, w), scale (y, x), translation (y, x)
    ((360, 360), (192, 192), (192 / 360, 192 / 360), (0.0, 0.0)),  # a tile, shrunk 1.9x
    ((120, 214), (192, 192), (0.9, 0.9), (40.2, 0.3)),  # letterboxed: black bands top and bottom
    ((40, 64), (96, 96), (1.5, 1.5), (24.0, 0.0)),  # enlarged
    ((50, 50), (20, 30), (0.3, 0.7), (-4.0, 6.5)),  # shrunk unevenly, shifted partly off the input
    ((7, 9), (16, 16), (2.0, 2.0), (0.0, 0.0)),  # tiny input
]


@pytest.mark.parametrize("in_hw,out_hw,scale,translation", CASES)
def test_cpu_form_equals_jax_image(in_hw, out_hw, scale, translation):
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (2, *in_hw, 3)).astype(np.float32))
    ours = jax.jit(lambda a: linear_scale_translate(a, out_hw, scale, translation))(x)  # CPU: the taps
    ref = jax.image.scale_and_translate(x, (2, *out_hw, 3), (1, 2), jnp.array(scale), jnp.array(translation),
                                        method="linear", antialias=True)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=0, atol=0.01)  # of 255 levels


def test_taps_cover_every_weight():
    """The taps hold every nonzero weight of the dense matrix, and each row's weights sum to 1
    (or 0 where the output pixel lies outside the input)."""
    taps, weights = _linear_taps(360, 192, 192 / 360, 0.0)
    assert taps.shape == weights.shape and taps.min() >= 0 and taps.max() < 360
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    taps, weights = _linear_taps(100, 192, 0.9, 40.0)  # letterboxed: rows above and below get no input
    sums = weights.sum(axis=1)
    assert np.allclose(sums[:35], 0) and np.allclose(sums[60:130], 1, atol=1e-6) and np.allclose(sums[-30:], 0)


def test_materialized_is_the_identity():
    x = jnp.arange(24, dtype=jnp.int32).reshape(2, 3, 4)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda a: materialized(a * 2 + 1))(x)), np.asarray(x * 2 + 1))
