"""MobileFaceNet (insightface `get_mbf(fp16=False, num_features=512)`: blocks (1,4,6,2), scale 2)
plus HSEmotion's `fc` 512 -> 10 (8 expression logits, valence, arousal).

Attribute tree = the PyTorch one (`layers.i.layers.j...`, `conv_sep`, `fc`), except that torch's
`features` (the GDC head) is `gdc` here, since `features(x)` is the embedding method of every model.
Input 112x112, mean = std = 0.5. All convolutions are bias-free, BN eps 1e-5, PReLU per channel.
"""
from __future__ import annotations

import numpy as np
from flax import nnx

from hsemo_jax.models.layers import BatchNorm, Conv2d, Linear, PReLU


class ConvBlock(nnx.Module):
    """Conv -> BN -> PReLU (`layers.0/1/2`); without PReLU it is insightface's LinearBlock."""

    def __init__(self, in_ch, out_ch, k=1, stride=1, padding=0, groups=1, *, act=True, rng):
        mods = [Conv2d(in_ch, out_ch, k, stride=stride, padding=padding, groups=groups, rng=rng),
                BatchNorm(out_ch)]
        if act:
            mods.append(PReLU(out_ch))
        self.layers = nnx.List(mods)

    def __call__(self, x):
        for m in self.layers:
            x = m(x)
        return x


class DepthWise(nnx.Module):
    """1x1 expand -> 3x3 depthwise (stride s) -> 1x1 linear projection (+ input if residual)."""

    def __init__(self, in_ch, out_ch, inner, stride, *, residual=False, rng):
        self.layers = nnx.List([
            ConvBlock(in_ch, inner, rng=rng),
            ConvBlock(inner, inner, 3, stride, 1, groups=inner, rng=rng),
            ConvBlock(inner, out_ch, act=False, rng=rng),
        ])
        self.residual = residual

    def __call__(self, x):
        y = x
        for m in self.layers:
            y = m(y)
        return x + y if self.residual else y


class Residual(nnx.Module):
    def __init__(self, ch, num_blocks, inner, *, rng):
        self.layers = nnx.List([DepthWise(ch, ch, inner, 1, residual=True, rng=rng)
                                for _ in range(num_blocks)])

    def __call__(self, x):
        for m in self.layers:
            x = m(x)
        return x


class Flatten(nnx.Module):
    """Parameter-free; holds index 1 of GDC's `layers` like torch's Flatten."""

    def __call__(self, x):
        return x.reshape(x.shape[0], -1)


class GDC(nnx.Module):
    """Global depthwise conv: 7x7 depthwise valid conv + BN -> flatten -> Linear (no bias) -> BN1d."""

    def __init__(self, ch=512, embedding=512, *, rng):
        self.layers = nnx.List([
            ConvBlock(ch, ch, 7, 1, 0, groups=ch, act=False, rng=rng),
            Flatten(),
            Linear(ch, embedding, bias=False, rng=rng),
            BatchNorm(embedding),
        ])

    def __call__(self, x):
        for m in self.layers:
            x = m(x)
        return x


class MobileFaceNet(nnx.Module):
    """x_nhwc (N, 112, 112, 3) in [-1, 1] -> scores (N, num_classes); `features` -> (N, 512)."""

    def __init__(self, num_classes: int | None = 10, *, blocks=(1, 4, 6, 2), scale=2,
                 embedding=512, seed: int = 0):
        rng = np.random.default_rng(seed)
        c1, c2 = 64 * scale, 128 * scale
        assert blocks[0] == 1, "only get_mbf's layout (blocks[0] == 1) is supported"
        self.layers = nnx.List([
            ConvBlock(3, c1, 3, 2, 1, rng=rng),
            ConvBlock(c1, c1, 3, 1, 1, groups=64, rng=rng),
            DepthWise(c1, c1, 128, 2, rng=rng),
            Residual(c1, blocks[1], 128, rng=rng),
            DepthWise(c1, c2, 256, 2, rng=rng),
            Residual(c2, blocks[2], 256, rng=rng),
            DepthWise(c2, c2, 512, 2, rng=rng),
            Residual(c2, blocks[3], 256, rng=rng),
        ])
        self.conv_sep = ConvBlock(c2, 512, rng=rng)
        self.gdc = GDC(512, embedding, rng=rng)
        self.num_features = embedding
        self.fc = Linear(embedding, num_classes, rng=rng) if num_classes else None

    def features(self, x_nhwc):
        for m in self.layers:
            x_nhwc = m(x_nhwc)
        return self.gdc(self.conv_sep(x_nhwc))

    def head(self, features):
        """Embedding -> scores (the embedding itself when there is no `fc`)."""
        return features if self.fc is None else self.fc(features)

    def __call__(self, x_nhwc):
        return self.head(self.features(x_nhwc))
