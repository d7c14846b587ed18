"""DDAMFN: MixedFeatureNet trunk (MDConv + coordinate attention) and two dual-direction attention
heads fused by an elementwise max, then a 7x7 depthwise "Linear" + BN and `fc`.

Attribute tree = DDAMNet's, except torch's `features` (the trunk) is `trunk` here. Parameters that
the original forward never uses (each MDConv's `bn`/`prelu`, each head's `Linear`, DDAMNet's `bn`)
are kept so checkpoints load and export unchanged, but are not computed.
Input 112x112 (the heads need 7x7 maps), ImageNet mean/std, BN eps 1e-5.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hsemo_jax.models.layers import BatchNorm, Conv2d, Linear, PReLU, h_swish

# Mix_Depth_Wise stages: (out, inner, kernels, channel split, stride, residual repeats or 0)
# MixedFeatureNet: conv_23, conv_3, conv_34, conv_4, conv_45, conv_5.
MIX_STAGES = (
    (64, 128, (3, 5, 7), (64, 32, 32), 2, 0),
    (64, 128, (3, 5), (96, 32), 1, 9),
    (128, 256, (3, 5, 7), (128, 64, 64), 2, 0),
    (128, 256, (3, 5), (192, 64), 1, 16),
    (256, 1024, (3, 5, 7, 9), (256, 256, 256, 256), 2, 0),
    (256, 512, (3, 5, 7), (172, 170, 170), 1, 6),
)


class ConvBN(nnx.Module):
    """DDAMFN's Conv_block (conv, bn, prelu) or, with act=False, Linear_block (conv, bn)."""

    def __init__(self, in_ch, out_ch, k=1, stride=1, padding=0, groups=1, *, act=True, rng):
        self.conv = Conv2d(in_ch, out_ch, k, stride=stride, padding=padding, groups=groups, rng=rng)
        self.bn = BatchNorm(out_ch)
        self.prelu = PReLU(out_ch) if act else None

    def __call__(self, x):
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class MDConv(nnx.Module):
    """Mixed depthwise conv: channel groups with their own k x k kernels (pad k//2), concatenated.
    `bn` and `prelu` exist in the original but its forward never applies them."""

    def __init__(self, channels, kernels, splits, stride, *, rng):
        self.mixed_depthwise_conv = nnx.List([
            Conv2d(c, c, k, stride=stride, padding=k // 2, groups=c, rng=rng)
            for k, c in zip(kernels, splits)])
        self.bn = BatchNorm(channels)
        self.prelu = PReLU(channels)
        self.splits = tuple(splits)

    def __call__(self, x):
        outs, start = [], 0
        for conv, c in zip(self.mixed_depthwise_conv, self.splits):
            outs.append(conv(x[..., start:start + c]))
            start += c
        return jnp.concatenate(outs, axis=-1)


class _DirectionalAttention(nnx.Module):
    """Shared part of both coordinate attentions: pooled columns x_h (n, h, 1, c) and rows
    x_w (n, w, 1, c) -> 1x1 conv + BN + h_swish together -> per-direction 1x1 conv + sigmoid."""

    def _init_attention(self, ch, rng):
        mip = max(8, ch // 32)
        self.conv1 = Conv2d(ch, mip, 1, bias=True, rng=rng)
        self.bn1 = BatchNorm(mip)
        self.conv2 = Conv2d(mip, ch, 1, bias=True, rng=rng)
        self.conv3 = Conv2d(mip, ch, 1, bias=True, rng=rng)

    def _attend(self, x_h, x_w):
        """-> (a_h (n, h, 1, c), a_w (n, 1, w, c)), which broadcast to (n, h, w, c)."""
        h = x_h.shape[1]
        y = h_swish(self.bn1(self.conv1(jnp.concatenate([x_h, x_w], axis=1))))
        a_h = jax.nn.sigmoid(self.conv2(y[:, :h]))
        a_w = jax.nn.sigmoid(self.conv3(y[:, h:].transpose(0, 2, 1, 3)))
        return a_h, a_w


class CoordAtt(_DirectionalAttention):
    """Coordinate attention (trunk version): average-pool along W and along H; returns
    x * a_w * a_h."""

    def __init__(self, ch, *, rng):
        self._init_attention(ch, rng)

    def __call__(self, x_nhwc):
        x_h = jnp.mean(x_nhwc, axis=2, keepdims=True)  # (n, h, 1, c)
        x_w = jnp.mean(x_nhwc, axis=1, keepdims=True).transpose(0, 2, 1, 3)  # (n, w, 1, c)
        a_h, a_w = self._attend(x_h, x_w)
        return x_nhwc * a_w * a_h


class MixDepthWise(nnx.Module):
    """1x1 Conv_block -> MDConv -> CoordAtt -> 1x1 Linear_block (+ input if residual)."""

    def __init__(self, in_ch, out_ch, inner, kernels, splits, stride, *, residual, rng):
        self.conv = ConvBN(in_ch, inner, rng=rng)
        self.conv_dw = MDConv(inner, kernels, splits, stride, rng=rng)
        self.CA = CoordAtt(inner, rng=rng)
        self.project = ConvBN(inner, out_ch, act=False, rng=rng)
        self.residual = residual

    def __call__(self, x):
        y = self.project(self.CA(self.conv_dw(self.conv(x))))
        return x + y if self.residual else y


class MixResidual(nnx.Module):
    def __init__(self, ch, inner, kernels, splits, repeats, *, rng):
        self.model = nnx.List([MixDepthWise(ch, ch, inner, kernels, splits, 1, residual=True, rng=rng)
                               for _ in range(repeats)])

    def __call__(self, x):
        for m in self.model:
            x = m(x)
        return x


class HeadCoordAtt(_DirectionalAttention):
    """DDAM head: learned directional pooling (depthwise (1,7) and (7,1) convs + BN) instead of
    averages. Returns the attention map a_w * a_h (it does not multiply by x). Its `Linear`
    (7x7 depthwise + BN) is never called."""

    def __init__(self, ch=512, *, rng):
        self.Linear_h = ConvBN(ch, ch, (1, 7), groups=ch, act=False, rng=rng)
        self.Linear_w = ConvBN(ch, ch, (7, 1), groups=ch, act=False, rng=rng)
        self._init_attention(ch, rng)
        self.Linear = ConvBN(ch, ch, 7, groups=ch, act=False, rng=rng)

    def __call__(self, x_nhwc):
        x_h = self.Linear_h(x_nhwc)  # (n, h, 1, c)
        x_w = self.Linear_w(x_nhwc).transpose(0, 2, 1, 3)  # (n, 1, w, c) -> (n, w, 1, c)
        a_h, a_w = self._attend(x_h, x_w)
        return a_w * a_h  # (n, h, w, c)


class CoordAttHead(nnx.Module):
    def __init__(self, *, rng):
        self.CoordAtt = HeadCoordAtt(512, rng=rng)

    def __call__(self, x):
        return self.CoordAtt(x)


class DDAMFN(nnx.Module):
    """x_nhwc (N, 112, 112, 3) ImageNet-normalized -> scores (N, num_classes) (DDAMNet's `out`);
    `features` -> (N, 512); `attention` -> the heads' maps [(N, 7, 7, 512)] * num_heads."""

    def __init__(self, num_classes: int = 8, num_heads: int = 2, *, seed: int = 0):
        rng = np.random.default_rng(seed)
        trunk = [ConvBN(3, 64, 3, 2, 1, rng=rng), ConvBN(64, 64, 3, 1, 1, groups=64, rng=rng)]
        in_ch = 64
        for out, inner, kernels, splits, stride, repeats in MIX_STAGES:
            if repeats:
                trunk.append(MixResidual(out, inner, kernels, splits, repeats, rng=rng))
            else:
                trunk.append(MixDepthWise(in_ch, out, inner, kernels, splits, stride, residual=False,
                                          rng=rng))
            in_ch = out
        trunk.append(ConvBN(in_ch, 512, rng=rng))
        self.trunk = nnx.List(trunk)
        for i in range(num_heads):
            setattr(self, f"cat_head{i}", CoordAttHead(rng=rng))
        self.num_heads = num_heads
        self.Linear = ConvBN(512, 512, 7, groups=512, act=False, rng=rng)
        self.num_features = 512
        self.fc = Linear(512, num_classes, rng=rng)
        self.bn = BatchNorm(num_classes)  # defined by DDAMNet, unused in its forward

    def trunk_features(self, x_nhwc):
        for m in self.trunk:
            x_nhwc = m(x_nhwc)
        return x_nhwc

    def attention(self, fmap_nhwc):
        return [getattr(self, f"cat_head{i}")(fmap_nhwc) for i in range(self.num_heads)]

    def features(self, x_nhwc):
        fmap = self.trunk_features(x_nhwc)
        heads = self.attention(fmap)
        att = heads[0]
        for a in heads[1:]:
            att = jnp.maximum(att, a)
        return self.Linear(fmap * att).reshape(fmap.shape[0], -1)

    def head(self, features):
        """Embedding -> scores."""
        return self.fc(features)

    def __call__(self, x_nhwc):
        return self.head(self.features(x_nhwc))
