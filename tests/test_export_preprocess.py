"""The in-graph resize of `--with-preprocess` equals Pillow's bilinear resize (`resize_uint8`,
itself bit-exact to Pillow) level for level: one program with a symbolic height and width,
called on crops that shrink, shrink much more in height (Pillow >= 13 resizes those height
first), grow, keep their size, and on random noise (every rounding case)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsemo_jax.export.preprocess import resize_bilinear
from hsemo_jax.models.transforms import resize_uint8

SHAPES = [(200, 170), (300, 80), (25, 25), (57, 300), (112, 112), (31, 450)]


@pytest.fixture(scope="module")
def resize():
    b, h, w = jax.export.symbolic_shape("b, h, w")
    spec = jax.ShapeDtypeStruct((b, h, w, 3), jnp.uint8)
    return jax.export.export(jax.jit(lambda x: resize_bilinear(x, 112)), platforms=("cpu",))(spec)


@pytest.mark.parametrize("shape", SHAPES)
def test_resize_equals_pillow(resize, shape):
    from skimage import data

    face = data.astronaut()[:shape[0], :shape[1]]
    noise = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    got = np.asarray(resize.call(np.stack([face, noise])))
    for image, levels in zip((face, noise), got):
        np.testing.assert_array_equal(levels, resize_uint8(image, (112, 112)))
