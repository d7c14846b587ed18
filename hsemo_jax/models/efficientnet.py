"""EfficientNet in timm's layouts (`tf_efficientnet_b0/_b2`, `efficientnet_b0`), one builder from a
compact block spec. Attribute tree = timm's: conv_stem, bn1, blocks[stage][block], conv_head, bn2,
classifier.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from flax import nnx

from hsemo_jax import ops
from hsemo_jax.models.conv_bn import conv_bn_act, depthwise_bn_silu, expand_depthwise_bn_silu
from hsemo_jax.models.layers import BatchNorm, Conv2d, Linear

# (block type, repeats, kernel, stride, expansion, out channels); SE ratio 0.25 everywhere.
B0_BLOCKS = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
SE_RATIO = 0.25


@dataclass(frozen=True)
class EfficientNetConfig:
    width: float = 1.0  # channel multiplier
    depth: float = 1.0  # depth multiplier
    tf_same: bool = True  # TF "same" padding (tf_ variants) vs symmetric k//2 padding
    bn_eps: float = 1e-3
    stem_ch: int = 32
    head_ch: int = 1280


CONFIGS = {
    "tf_efficientnet_b0": EfficientNetConfig(),
    "efficientnet_b0": EfficientNetConfig(tf_same=False, bn_eps=1e-5),
    "tf_efficientnet_b2": EfficientNetConfig(width=1.1, depth=1.2),
}


def round_channels(ch: float, divisor: int = 8) -> int:
    """timm's make_divisible(ch * width): nearest multiple of 8, never below 90% of the target."""
    new = max(divisor, int(ch + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * ch else new


def _padding(cfg: EfficientNetConfig, k: int, stride: int):
    # timm: tf variants use dynamic "same" padding (equal to k//2 at stride 1); others (s-1+k-1)//2.
    return "SAME" if cfg.tf_same else ((stride - 1) + (k - 1)) // 2


class SqueezeExcite(nnx.Module):
    """The per-channel gate sigmoid(expand(silu(reduce(mean over H, W of x)))), (N, C); applied
    by the block's projection."""

    def __init__(self, ch: int, rd_ch: int, *, rng):
        self.conv_reduce = Conv2d(ch, rd_ch, 1, bias=True, rng=rng)
        self.conv_expand = Conv2d(rd_ch, ch, 1, bias=True, rng=rng)

    def __call__(self, x, sums=None):
        """`sums`: x summed over H and W where the op before computed them (the mean's division
        then scales the reduction's output)."""
        reduce, expand = self.conv_reduce, self.conv_expand
        if sums is None:
            s, scale = jnp.mean(x, axis=(1, 2)), None
        else:
            s, scale = sums, np.full(reduce.bias.shape, 1 / (x.shape[1] * x.shape[2]), np.float32)
        r = ops.pointwise(s, reduce.kernel[0, 0], scale=scale, shift=reduce.bias[...], act="silu")
        return ops.pointwise(r, expand.kernel[0, 0], shift=expand.bias[...], act="sigmoid").astype(x.dtype)


class DepthwiseSeparable(nnx.Module):
    """timm DepthwiseSeparableConv: dw -> BN+SiLU -> SE -> pw -> BN (+ skip)."""

    def __init__(self, cfg, in_ch, out_ch, k, stride, *, rng):
        self.conv_dw = Conv2d(in_ch, in_ch, k, stride=stride, padding=_padding(cfg, k, stride),
                              groups=in_ch, rng=rng)
        self.bn1 = BatchNorm(in_ch, eps=cfg.bn_eps)
        self.se = SqueezeExcite(in_ch, round(in_ch * SE_RATIO), rng=rng)
        self.conv_pw = Conv2d(in_ch, out_ch, 1, rng=rng)
        self.bn2 = BatchNorm(out_ch, eps=cfg.bn_eps)
        self.has_skip = stride == 1 and in_ch == out_ch

    def __call__(self, x):
        # kxk depthwise -> BN -> SiLU (and the result's sums over H, W for the gate)
        h, sums = depthwise_bn_silu(self.conv_dw, self.bn1, x)
        # squeeze-excite gate; 1x1 pointwise of the gated activation -> BN; skip connection
        return conv_bn_act(self.conv_pw, self.bn2, h, act=None, gate=self.se(h, sums),
                           residual=x if self.has_skip else None)


class InvertedResidual(nnx.Module):
    """timm InvertedResidual (MBConv): pw -> BN+SiLU -> dw -> BN+SiLU -> SE -> pwl -> BN (+ skip)."""

    def __init__(self, cfg, in_ch, out_ch, k, stride, exp, *, rng):
        mid = round_channels(in_ch * exp)
        self.conv_pw = Conv2d(in_ch, mid, 1, rng=rng)
        self.bn1 = BatchNorm(mid, eps=cfg.bn_eps)
        self.conv_dw = Conv2d(mid, mid, k, stride=stride, padding=_padding(cfg, k, stride),
                              groups=mid, rng=rng)
        self.bn2 = BatchNorm(mid, eps=cfg.bn_eps)
        # SE width from the block input: timm passes rd_ratio = se_ratio / exp_ratio on `mid`.
        self.se = SqueezeExcite(mid, round(mid * SE_RATIO / exp), rng=rng)
        self.conv_pwl = Conv2d(mid, out_ch, 1, rng=rng)
        self.bn3 = BatchNorm(out_ch, eps=cfg.bn_eps)
        self.has_skip = stride == 1 and in_ch == out_ch

    def __call__(self, x):
        # 1x1 expansion -> BN -> SiLU -> kxk depthwise -> BN -> SiLU (and the sums over H, W)
        h, sums = expand_depthwise_bn_silu(self.conv_pw, self.bn1, self.conv_dw, self.bn2, x)
        # squeeze-excite gate; 1x1 linear projection of the gated activation -> BN; skip connection
        return conv_bn_act(self.conv_pwl, self.bn3, h, act=None, gate=self.se(h, sums),
                           residual=x if self.has_skip else None)


class EfficientNet(nnx.Module):
    """x_nhwc (N, S, S, 3) normalized -> scores (N, num_classes); `features` -> (N, 1280|1408)."""

    def __init__(self, arch: str = "tf_efficientnet_b0", num_classes: int | None = 10, *,
                 seed: int = 0):
        cfg = CONFIGS[arch]
        rng = np.random.default_rng(seed)
        stem = round_channels(cfg.stem_ch * cfg.width)
        self.conv_stem = Conv2d(3, stem, 3, stride=2, padding=_padding(cfg, 3, 2), rng=rng)
        self.bn1 = BatchNorm(stem, eps=cfg.bn_eps)
        in_ch, stages = stem, []
        for kind, repeats, k, stride, exp, out in B0_BLOCKS:
            out = round_channels(out * cfg.width)
            blocks = []
            for i in range(math.ceil(repeats * cfg.depth)):
                s = stride if i == 0 else 1
                if kind == "ds":
                    blocks.append(DepthwiseSeparable(cfg, in_ch, out, k, s, rng=rng))
                else:
                    blocks.append(InvertedResidual(cfg, in_ch, out, k, s, exp, rng=rng))
                in_ch = out
            stages.append(nnx.List(blocks))
        self.blocks = nnx.List(stages)
        self.num_features = round_channels(cfg.head_ch * cfg.width)
        self.conv_head = Conv2d(in_ch, self.num_features, 1, rng=rng)
        self.bn2 = BatchNorm(self.num_features, eps=cfg.bn_eps)
        self.classifier = Linear(self.num_features, num_classes, rng=rng) if num_classes else None

    def features(self, x_nhwc):
        x = conv_bn_act(self.conv_stem, self.bn1, x_nhwc)  # 3x3 stride-2 stem -> BN -> SiLU
        for stage in self.blocks:
            for block in stage:
                x = block(x)
        x = conv_bn_act(self.conv_head, self.bn2, x)  # 1x1 head -> BN -> SiLU
        return ops.spatial_mean(x)  # global average pooling

    def head(self, features):
        """Embedding -> scores (the embedding itself when there is no classifier)."""
        return features if self.classifier is None else self.classifier(features)

    def __call__(self, x_nhwc):
        return self.head(self.features(x_nhwc))
