"""resize_uint8 / preprocess_images against Pillow and torchvision (the original pipeline)."""

import functools

import numpy as np
import PIL
import pytest
import skimage.data
from PIL import Image

from hsemo_jax.errors import InputError
from hsemo_jax.models.transforms import preprocess_images, resize_uint8

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13


def _skip_if_pillow_order_differs(in_hw, out_hw):
    """resize_uint8 follows Pillow >= 13, which resizes vertically first when the height
    shrinks by more than twice as many pixels as the width; older Pillow never does."""
    (in_h, in_w), (out_h, out_w) = in_hw[:2], out_hw
    if not PILLOW_13 and out_h < in_h and in_h - out_h > 2 * (in_w - out_w):
        pytest.skip(f"Pillow {PIL.__version__} always resizes horizontally first")


def _random(shape, seed=0):
    """Top half noise, bottom half a smooth random walk (ties near .5 are common there)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    walk = np.cumsum(rng.integers(-12, 13, shape), axis=0) + 128
    half = shape[0] // 2
    image[half:] = np.clip(walk[half:], 0, 255)
    return image


@functools.lru_cache(maxsize=None)
def _astronaut():
    """skimage's 512x512 RGB portrait, read once (read-only)."""
    image = skimage.data.astronaut()
    image.setflags(write=False)
    return image


def _pil_resize(image, out_hw):
    return np.asarray(Image.fromarray(image).resize(out_hw[::-1], Image.BILINEAR))


@pytest.mark.parametrize(
    "in_shape, out_hw",
    [
        ((112, 112, 3), (224, 224)),
        ((300, 300, 3), (224, 224)),
        ((150, 150, 3), (112, 112)),
        ((112, 112, 3), (260, 260)),
        ((97, 97, 3), (224, 224)),
        ((413, 413, 3), (112, 112)),
        ((224, 224, 3), (224, 224)),  # identity
        ((80, 130, 3), (112, 112)),
        ((224, 150, 3), (224, 112)),  # only the horizontal pass
        ((150, 224, 3), (112, 224)),  # only the vertical pass
        ((50, 1, 3), (112, 112)),  # 1 pixel wide
        ((1, 50, 3), (7, 3)),  # 1 pixel high
        ((1000, 1000, 3), (112, 112)),  # large downscale
        ((61, 47), (20, 33)),  # grayscale ("L"); vertical pass first
        ((130, 80, 3), (112, 112)),  # tall: vertical pass first
        ((600, 300, 3), (112, 224)),  # vertical pass first
        ((300, 200, 3), (224, 224)),  # vertical pass first
    ],
)
def test_resize_bit_exact_random(in_shape, out_hw):
    _skip_if_pillow_order_differs(in_shape, out_hw)
    image = _random(in_shape)
    got = resize_uint8(image, out_hw)
    assert got.dtype == np.uint8 and got.shape == out_hw + in_shape[2:]
    np.testing.assert_array_equal(got, _pil_resize(image, out_hw))


@pytest.mark.parametrize(
    "crop, out_hw",
    [
        ((slice(None), slice(None)), (224, 224)),  # whole 512x512 photo
        ((slice(30, 200), slice(160, 300)), (112, 112)),  # tight face, 170x140; vertical first
        ((slice(30, 200), slice(160, 300)), (260, 260)),
        ((slice(20, 260), slice(140, 320)), (224, 224)),  # head and shoulders; vertical first
    ],
)
def test_resize_bit_exact_photo(crop, out_hw):
    image = _astronaut()[crop]  # a non-contiguous view, as face crops are
    _skip_if_pillow_order_differs(image.shape, out_hw)
    expected = _pil_resize(np.ascontiguousarray(image), out_hw)
    np.testing.assert_array_equal(resize_uint8(image, out_hw), expected)


def test_resize_identity_is_a_copy():
    image = _random((20, 30, 3))
    out = resize_uint8(image, (20, 30))
    np.testing.assert_array_equal(out, image)
    assert not np.shares_memory(out, image)


def _torchvision(images, size, mean, std):
    import torch
    from torchvision import transforms

    tf = transforms.Compose(
        [
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    batch = torch.stack([tf(Image.fromarray(np.ascontiguousarray(im))) for im in images])
    return batch.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("size, mean, std", [(224, *IMAGENET), (112, (0.5,) * 3, (0.5,) * 3)])
def test_preprocess_matches_torchvision(size, mean, std):
    astro = _astronaut()
    crops = [astro[20:260, 140:320], astro[30:200, 160:300], _random((97, 131, 3), seed=1), astro]
    for crop in crops:
        _skip_if_pillow_order_differs(crop.shape, (size, size))
    got = preprocess_images(crops, size, mean, std)
    assert got.dtype == np.float32 and got.shape == (len(crops), size, size, 3)
    assert np.abs(got - _torchvision(crops, size, mean, std)).max() <= 1e-6


def test_preprocess_single_image_and_batch():
    batch = np.stack([_random((50, 60, 3), seed=s) for s in range(3)])
    stacked = preprocess_images(batch, 112, *IMAGENET)
    assert stacked.shape == (3, 112, 112, 3)
    np.testing.assert_array_equal(preprocess_images(batch[1], 112, *IMAGENET), stacked[1:2])
    np.testing.assert_array_equal(preprocess_images(list(batch), 112, *IMAGENET), stacked)


@pytest.mark.parametrize(
    "images, match",
    [
        ([np.zeros((8, 8, 3), np.float32)], "image 0: .*uint8.*float32"),
        (
            [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 4), np.uint8)],
            r"image 1: .*\(H, W, 3\).*\(8, 8, 4\)",
        ),
        ([np.zeros((0, 8, 3), np.uint8)], "image 0: expected a non-empty"),
        ([], "at least one image"),
        (np.zeros((0, 8, 8, 3), np.uint8), "at least one image"),
        (np.zeros((8, 8), np.uint8), "expected a uint8 image"),
    ],
)
def test_preprocess_bad_input(images, match):
    with pytest.raises(InputError, match=match):
        preprocess_images(images, 112, *IMAGENET)


def test_resize_bad_input():
    with pytest.raises(InputError, match="uint8"):
        resize_uint8(np.zeros((4, 4, 3), np.float64), (2, 2))
    with pytest.raises(InputError, match="positive"):
        resize_uint8(np.zeros((4, 4, 3), np.uint8), (0, 2))
