"""Input preprocessing identical to the original HSEmotion (PIL + torchvision) pipeline.

The PyTorch models are fed ``PIL.Image.fromarray(rgb).resize((S, S), BILINEAR)``
(torchvision ``Resize((S, S))``), then ``ToTensor()`` and ``Normalize(mean, std)``.
``resize_uint8`` reproduces Pillow's 8-bit bilinear resampling
(``src/libImaging/Resample.c``) bit for bit in numpy, so Pillow is not needed at runtime:

* two separable passes, each rounding back to uint8: horizontal then vertical, except
  that Pillow >= 13 goes vertical first when the height shrinks much more than the width
  (see ``resize_uint8``); a pass is skipped when that axis keeps its size;
* triangle filter stretched by ``max(in/out, 1)`` (antialiasing when shrinking),
  weights normalised to sum 1 and quantised to 22 fractional bits;
* integer accumulation starting at ``1 << 21`` (round half up), ``>> 22``, clip to 0..255.
"""

import functools

import numpy as np

from hsemo_jax.errors import InputError

_PRECISION_BITS = 22  # Pillow: 32 bits - 8 (uint8 value) - 2 (headroom)


@functools.lru_cache(maxsize=64)
def _axis_coeffs(in_size, out_size, channels=1):
    """Source taps and fixed-point weights for resampling one axis from in_size to out_size.

    Returns ``(taps, coeffs)``, both (K, out_size * channels), K = most taps of any output:
    ``out[i] = sum_k x[taps[k, i]] * coeffs[k, i]`` where coeffs are int32 with 22 fractional
    bits. With channels > 1 the axis is the flattened (size, channels) one of an (H, W*C) view:
    each output sample is repeated per channel and taps index ``pixel * channels + channel``.
    Missing taps are padded with weight 0. Mirrors Pillow's ``precompute_coeffs`` and
    ``normalize_coeffs_8bpc`` operation for operation in float64.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the bilinear (triangle) filter has support 1
    centre = (np.arange(out_size) + 0.5) * scale
    # C's (int) cast truncates; both ends are clipped to the image.
    xmin = np.maximum((centre - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((centre + support + 0.5).astype(np.int64), in_size)
    k = int((xmax - xmin).max())
    taps = xmin + np.arange(k)[:, None]  # (K, out)
    pos = (taps - centre + 0.5) * (1.0 / filterscale)
    w = np.where(taps < xmax, np.maximum(1.0 - np.abs(pos), 0.0), 0.0)
    total = np.zeros(out_size)
    for j in range(k):  # left-to-right sum, as in C, so the rounding matches
        total += w[j]
    coeffs = (0.5 + (w / total) * (1 << _PRECISION_BITS)).astype(np.int32)
    taps = np.minimum(taps, in_size - 1)  # padded taps (weight 0) must still index validly
    taps = (taps[:, :, None] * channels + np.arange(channels)).reshape(k, -1)
    coeffs = np.repeat(coeffs, channels, axis=1)
    taps.setflags(write=False)
    coeffs.setflags(write=False)
    return taps, coeffs


def _resample(x, axis, taps, coeffs):
    """Resample 2D uint8 ``x`` along ``axis`` with ``_axis_coeffs`` output; returns uint8.

    One gather per filter tap (K ~ 2*in/out + 1) plus int32 multiply-adds; the result has
    ``taps.shape[1]`` entries along ``axis``.
    """

    def tap(j):
        if axis == 0:
            return x[taps[j]], coeffs[j][:, None]
        return x[:, taps[j]], coeffs[j]

    acc = np.multiply(*tap(0), dtype=np.int32)
    acc += 1 << (_PRECISION_BITS - 1)  # round half up
    term = np.empty_like(acc)
    for j in range(1, len(taps)):
        acc += np.multiply(*tap(j), out=term)
    acc >>= _PRECISION_BITS  # arithmetic shift == floor, as in C
    return np.clip(acc, 0, 255, out=acc).astype(np.uint8)


def resize_uint8(image, size):
    """Bilinear resize, bit-exact to ``PIL.Image.fromarray(image).resize((w, h), BILINEAR)``.

    Args:
      image: uint8 array (H, W) or (H, W, C). Channels are resampled independently, which
        is what Pillow does for "L" and "RGB" images (not for "RGBA", which it premultiplies).
      size: ``(out_h, out_w)``, positive ints.
    Returns:
      uint8 array (out_h, out_w) or (out_h, out_w, C).

    Each pass rounds to uint8, so the pass order matters (by up to 1 level). Pillow runs the
    horizontal pass first, except that Pillow >= 13 (python-pillow/Pillow#9549) runs the
    vertical pass first when the height shrinks by more than twice as many pixels as the
    width; this follows Pillow >= 13. A pass is skipped when its axis keeps its size.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or 0 in image.shape:
        raise InputError(
            f"resize_uint8: expected a non-empty uint8 array of shape (H, W) or (H, W, C), "
            f"got {image.dtype} array of shape {image.shape}"
        )
    out_h, out_w = (int(s) for s in size)
    if out_h < 1 or out_w < 1:
        raise InputError(f"resize_uint8: output size must be positive, got {tuple(size)}")
    in_h, in_w = image.shape[:2]
    if (out_h, out_w) == (in_h, in_w):
        return image.copy()  # like Pillow, never hand back the caller's buffer
    vertical_first = out_h < in_h and in_h - out_h > 2 * (in_w - out_w)
    channels = image.shape[2] if image.ndim == 3 else 1
    x = image.reshape(in_h, in_w * channels)  # (H, W*C) view: rows = lines, columns = samples
    if vertical_first:
        x = _resample(x, 0, *_axis_coeffs(in_h, out_h))
    if out_w != in_w:
        x = _resample(x, 1, *_axis_coeffs(in_w, out_w, channels))
    if not vertical_first and out_h != in_h:
        x = _resample(x, 0, *_axis_coeffs(in_h, out_h))
    return x.reshape((out_h, out_w) + image.shape[2:])


def preprocess_images(images, size, mean, std):
    """Resize + ToTensor + Normalize, exactly as the original torchvision transform, in NHWC.

    Args:
      images: one uint8 RGB image (H, W, 3), a batch (N, H, W, 3), or a list/tuple of
        uint8 (Hi, Wi, 3) arrays of different sizes (e.g. face crops).
      size: int, the square model input side S.
      mean, std: per-channel sequences of 3 floats (used as float32, like torchvision).
    Returns:
      float32 array (N, S, S, 3): ``(resize_uint8(img, (S, S)) / 255 - mean) / std``,
      each operation rounded to float32 as torch does.
    """
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    elif not (
        isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.ndim == 4)
    ):
        raise InputError(
            "expected a uint8 image (H, W, 3), a batch (N, H, W, 3) or a list of (H, W, 3) images, "
            f"got {type(images).__name__}{getattr(images, 'shape', '')}"
        )
    if len(images) == 0:
        raise InputError("expected at least one image, got none")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"size must be a positive int (the square input side), got {size!r}")
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    if mean.shape != (3,) or std.shape != (3,):
        raise InputError(f"mean and std must have 3 values each, got {mean.shape} and {std.shape}")
    resized = np.empty((len(images), size, size, 3), np.uint8)
    for i, img in enumerate(images):
        if not (
            isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3
            and img.shape[2] == 3 and img.shape[0] > 0 and img.shape[1] > 0
        ):
            got = type(img).__name__
            if isinstance(img, np.ndarray):
                got = f"{img.dtype} array of shape {img.shape}"
            raise InputError(
                f"image {i}: expected a non-empty uint8 RGB array of shape (H, W, 3), got {got}"
            )
        resized[i] = resize_uint8(img, (size, size))
    # (N*S, S*3) rows keep the inner loops long; same float32 ops and order as torch.
    x = resized.reshape(-1, size * 3).astype(np.float32)
    x /= np.float32(255)
    x -= np.tile(mean, size)
    x /= np.tile(std, size)
    return x.reshape(len(images), size, size, 3)
