"""MobileViT's unfold and fold between an NHWC map and patch tokens, in torch's orders.

For ONNX converters (`dispatch.onnx_forms`) the same permutations are written from and to NCHW:
the first transpose cancels the one after the convolution before it, and the last one the
runtime's layout pass moves down through the transformer to the transposes around its 1x1
convolutions, which cancel, so the transformer runs in NCHW (the NHWC unfold ends in a reshape
the pass cannot move a transpose through, leaving two transposes around every convolution).
"""
from __future__ import annotations

import jax.numpy as jnp

from hsemo_jax.ops.dispatch import onnx_forms


def unfold_patches(x_nhwc, patch: int):
    """(B, nh*p, nw*p, d) -> tokens (B, p*p, nh*nw, d), torch's P and N orders."""
    b, h, w, d = x_nhwc.shape
    nh, nw = h // patch, w // patch
    if onnx_forms():
        x = jnp.transpose(x_nhwc, (0, 3, 1, 2)).reshape(b, d, nh, patch, nw, patch)
        x = x.transpose(0, 1, 3, 5, 2, 4).reshape(b, d, patch * patch, nh * nw)
        return jnp.transpose(x, (0, 2, 3, 1))
    x = x_nhwc.reshape(b, nh, patch, nw, patch, d).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, patch * patch, nh * nw, d)


def fold_patches(x_bpnd, nh: int, nw: int, patch: int):
    """Tokens (B, p*p, nh*nw, d) -> (B, nh*p, nw*p, d), the inverse of `unfold_patches`."""
    b, _, _, d = x_bpnd.shape
    if onnx_forms():
        x = jnp.transpose(x_bpnd, (0, 3, 1, 2)).reshape(b, d, patch, patch, nh, nw)
        x = x.transpose(0, 1, 4, 2, 5, 3).reshape(b, d, nh * patch, nw * patch)
        return jnp.transpose(x, (0, 2, 3, 1))
    x = x_bpnd.reshape(b, patch, patch, nh, nw, d).transpose(0, 3, 1, 4, 2, 5)
    return x.reshape(b, nh * patch, nw * patch, d)
