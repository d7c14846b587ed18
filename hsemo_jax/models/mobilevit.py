"""MobileViTv2 in timm's ByobNet layout (`mobilevitv2_150`, the backbone of HSEmotion's
`mobilevit_va_mtl`), plus the classifier `head.fc` 768 -> 10 (8 expression logits, valence, arousal).

Attribute tree = timm's: `stem.{conv,bn}`, `stages[i][j]` (inverted-residual `BottleneckBlock`s and
`MobileVitV2Block`s), except that timm's `head.fc` is `fc` here, since `head(f)` is the scores
method of every model. Input 224x224 with ImageNet mean/std (spec §3.2), SiLU, BN and GroupNorm
eps 1e-5.

Inside a MobileViTv2 block the NHWC map (B, H, W, C) is unfolded into 2x2 patches as (B, P, N, C)
(P = 4 pixel positions in a patch, N = patches), the layout of timm's (B, C, P, N); the 1x1
convolutions then act on the last axis exactly as torch's do on the channel axis.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hsemo_jax import ops
from hsemo_jax.models.conv_bn import conv_bn_act, depthwise_bn_silu, expand_depthwise_bn_silu
from hsemo_jax.models.efficientnet import round_channels as make_divisible
from hsemo_jax.models.layers import BatchNorm, Conv2d, Linear

# arch -> width multiplier of timm's `_mobilevitv2_cfg` (channels (64, 128, 256, 384, 512), stem 32).
CONFIGS = {"mobilevitv2_150": 1.5}
BASE_CHANNELS = (64, 128, 256, 384, 512)
TRANSFORMER_DEPTHS = (2, 4, 3)  # MobileViTv2 blocks of stages 2, 3, 4
PATCH = 2  # patch height = width
EPS = 1e-5


class ConvNormAct(nnx.Module):
    """timm ConvNormAct: bias-free conv (symmetric padding ((s-1) + (k-1)) // 2) -> BN -> SiLU?"""

    def __init__(self, in_ch: int, out_ch: int, k: int, *, stride: int = 1, groups: int = 1,
                 act: bool = True, rng: np.random.Generator):
        self.conv = Conv2d(in_ch, out_ch, k, stride=stride, padding=((stride - 1) + (k - 1)) // 2,
                           groups=groups, rng=rng)
        self.bn = BatchNorm(out_ch, eps=EPS)
        self.act = act

    def __call__(self, x, residual=None):
        if self.act and residual is None and self.conv.groups == self.conv.kernel.shape[-1] == x.shape[-1] > 1:
            return depthwise_bn_silu(self.conv, self.bn, x)[0]  # depthwise: in eval mode one CPU kernel
        return conv_bn_act(self.conv, self.bn, x, act="silu" if self.act else None, residual=residual)


class BottleneckBlock(nnx.Module):
    """Inverted residual (timm `bottle` block, bottle_in, linear_out, depthwise):
    1x1 expand -> BN+SiLU -> 3x3 depthwise (stride s) -> BN+SiLU -> 1x1 project -> BN (+ input)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, ratio: float = 2.0, *, rng):
        mid = make_divisible(in_ch * ratio)
        self.conv1_1x1 = ConvNormAct(in_ch, mid, 1, rng=rng)
        self.conv2_kxk = ConvNormAct(mid, mid, 3, stride=stride, groups=mid, rng=rng)
        self.conv3_1x1 = ConvNormAct(mid, out_ch, 1, act=False, rng=rng)
        self.has_skip = stride == 1 and in_ch == out_ch

    def __call__(self, x, before: ConvNormAct | None = None):
        """`before`: a previous block's projection that x has yet to go through (`middle`)."""
        assert before is None or not self.has_skip, "the skip connection needs the projected input"
        return self.conv3_1x1(self.middle(x, before), x if self.has_skip else None)

    def middle(self, x, before: ConvNormAct | None = None):
        """The block up to its projection: silu(bn2(dw(silu(bn1(conv1(before(x))))))), as
        EfficientNet's: in eval mode one CPU kernel (with the expansion inside in the
        high-resolution blocks, and `before` composed with it)."""
        y, _ = expand_depthwise_bn_silu(self.conv1_1x1.conv, self.conv1_1x1.bn, self.conv2_kxk.conv,
                                        self.conv2_kxk.bn, x,
                                        before=None if before is None else (before.conv, before.bn))
        return y

    def projection_composes(self, after) -> bool:
        """Whether `after` (the next block) alone reads this block's output, a projection without
        activation or skip connection, which can then go into `after`'s expansion."""
        return isinstance(after, BottleneckBlock) and not (self.has_skip or after.has_skip)


class GroupNorm1(nnx.Module):
    """timm GroupNorm1 (torch GroupNorm with one group): per sample, normalize over all of
    (P, N, C) with the biased variance, then a per-channel affine. scale/bias: (C,)."""

    def __init__(self, num_channels: int, *, eps: float = EPS):
        self.scale = nnx.Param(jax.device_put(np.ones((num_channels,), np.float32)))
        self.bias = nnx.Param(jax.device_put(np.zeros((num_channels,), np.float32)))
        self.eps = eps

    def __call__(self, x):
        axes = tuple(range(1, x.ndim))
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axes, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axes, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class LinearSelfAttention(nnx.Module):
    """Separable self-attention on (B, P, N, d): qkv 1x1 conv d -> 1 + 2d; context scores =
    softmax over the patches N of the 1-channel query; context = sum_N key * scores;
    out = out_proj(ReLU(value) * context)."""

    def __init__(self, dim: int, *, rng):
        self.qkv_proj = Conv2d(dim, 1 + 2 * dim, 1, bias=True, rng=rng)
        self.out_proj = Conv2d(dim, dim, 1, bias=True, rng=rng)
        self.dim = dim

    def __call__(self, x, residual):
        """residual + attention(x)."""
        qkv = conv_bn_act(self.qkv_proj, None, x, act=None)
        q, k, v = qkv[..., :1], qkv[..., 1:1 + self.dim], qkv[..., 1 + self.dim:]
        scores = jax.nn.softmax(q, axis=2)
        context = jnp.sum(k * scores, axis=2, keepdims=True)  # (B, P, 1, d)
        return conv_bn_act(self.out_proj, None, jax.nn.relu(v) * context, act=None, residual=residual)


class ConvMlp(nnx.Module):
    """timm ConvMlp: 1x1 conv d -> 2d, SiLU, 1x1 conv 2d -> d (both with bias)."""

    def __init__(self, dim: int, hidden: int, *, rng):
        self.fc1 = Conv2d(dim, hidden, 1, bias=True, rng=rng)
        self.fc2 = Conv2d(hidden, dim, 1, bias=True, rng=rng)

    def __call__(self, x, residual):
        """residual + mlp(x), the bias, SiLU and residual in the 1x1 convolutions' kernel."""
        return conv_bn_act(self.fc2, None, conv_bn_act(self.fc1, None, x), act=None, residual=residual)


class LinearTransformerBlock(nnx.Module):
    """Pre-norm block: x + attn(GN1(x)), then x + mlp(GN1(x))."""

    def __init__(self, dim: int, mlp_ratio: float = 2.0, *, rng):
        self.norm1 = GroupNorm1(dim)
        self.attn = LinearSelfAttention(dim, rng=rng)
        self.norm2 = GroupNorm1(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), rng=rng)

    def __call__(self, x):
        x = self.attn(self.norm1(x), x)
        return self.mlp(self.norm2(x), x)


def _align_corners_taps(n_in: int, n_out: int):
    """Source indices (i0, i1) and weight of i1 for a 1-D linear resize with align_corners=True,
    computed in float32 as torch's CPU kernel does: src = o * (n_in - 1) / (n_out - 1)."""
    scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
    src = scale * np.arange(n_out, dtype=np.float32)
    i0 = np.floor(src).astype(np.int32)
    lam = np.clip(src - i0, 0, 1).astype(np.float32)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, lam


def resize_bilinear_align_corners(x, size: tuple[int, int]):
    """torch `F.interpolate(x, size, mode="bilinear", align_corners=True)` on NHWC `x`, as a
    gather + lerp along H then W (exact in any matmul precision)."""
    for axis, n_out in zip((1, 2), size):
        n_in = x.shape[axis]
        if n_in == n_out:
            continue
        i0, i1, lam = _align_corners_taps(n_in, n_out)
        shape = [1] * x.ndim
        shape[axis] = n_out
        w = jnp.asarray(lam.reshape(shape), x.dtype)
        x = jnp.take(x, i0, axis=axis) * (1 - w) + jnp.take(x, i1, axis=axis) * w
    return x


class MobileVitV2Block(nnx.Module):
    """timm MobileVitV2Block (patch 2x2, no outer residual).

    Odd H or W is first resized bilinearly (align_corners=True) up to a multiple of 2 (7 -> 8 at
    stage 4 for a 224 input); the output keeps the resized size. Then 3x3 depthwise conv+BN+SiLU,
    1x1 conv C -> d, unfold, `depth` linear transformer blocks, GN1, fold, 1x1 conv d -> C + BN.
    """

    def __init__(self, ch: int, dim: int, depth: int, *, rng):
        self.conv_kxk = ConvNormAct(ch, ch, 3, groups=ch, rng=rng)
        self.conv_1x1 = Conv2d(ch, dim, 1, rng=rng)
        self.transformer = nnx.List([LinearTransformerBlock(dim, rng=rng) for _ in range(depth)])
        self.norm = GroupNorm1(dim)
        self.conv_proj = ConvNormAct(dim, ch, 1, act=False, rng=rng)

    def __call__(self, x):
        b, h, w, _ = x.shape
        nh, nw = math.ceil(h / PATCH), math.ceil(w / PATCH)
        if (nh * PATCH, nw * PATCH) != (h, w):
            x = resize_bilinear_align_corners(x, (nh * PATCH, nw * PATCH))
        x = self.conv_1x1(self.conv_kxk(x))
        x = ops.unfold_patches(x, PATCH)  # (B, P, N, d), torch's P and N orders
        for block in self.transformer:
            x = block(x)
        x = ops.fold_patches(self.norm(x), nh, nw, PATCH)
        return self.conv_proj(x)


class MobileViT(nnx.Module):
    """x_nhwc (N, S, S, 3) normalized -> scores (N, num_classes); `features` -> (N, 768)."""

    def __init__(self, arch: str = "mobilevitv2_150", num_classes: int | None = 10, *,
                 seed: int = 0):
        mult = CONFIGS[arch]
        rng = np.random.default_rng(seed)
        chs = [int(c * mult) for c in BASE_CHANNELS]
        stem = int(32 * mult)
        self.stem = ConvNormAct(3, stem, 3, stride=2, rng=rng)
        stages = [
            nnx.List([BottleneckBlock(stem, chs[0], 1, rng=rng)]),
            nnx.List([BottleneckBlock(chs[0], chs[1], 2, rng=rng),
                      BottleneckBlock(chs[1], chs[1], 1, rng=rng)]),
        ]
        for i, depth in enumerate(TRANSFORMER_DEPTHS, start=2):
            stages.append(nnx.List([
                BottleneckBlock(chs[i - 1], chs[i], 2, rng=rng),
                MobileVitV2Block(chs[i], make_divisible(0.5 * chs[i]), depth, rng=rng),
            ]))
        self.stages = nnx.List(stages)
        self.num_features = chs[-1]
        self.fc = Linear(self.num_features, num_classes, rng=rng) if num_classes else None

    def features(self, x_nhwc):
        x, pending = self.stem(x_nhwc), None  # pending: a projection x has yet to go through
        blocks = [block for stage in self.stages for block in stage]
        for block, after in zip(blocks, blocks[1:] + [None]):
            if isinstance(block, BottleneckBlock) and block.projection_composes(after):
                x, pending = block.middle(x, pending), block.conv3_1x1
            else:
                x, pending = block(x, pending) if pending is not None else block(x), None
        return ops.spatial_mean(x)

    def head(self, features):
        """Embedding -> scores (the embedding itself when there is no classifier)."""
        return features if self.fc is None else self.fc(features)

    def __call__(self, x_nhwc):
        return self.head(self.features(x_nhwc))
