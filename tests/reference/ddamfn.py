"""PyTorch reference DDAMFN (test-only), written from the spec.

Reproduces DDAMFN's ``networks/MixedFeatureNet.py`` (backbone) and ``networks/DDAM.py``
(``DDAMNet``) -- module structure, attribute names (so ``state_dict`` keys and their order match
the original exactly), shapes and forward semantics. See ``shared/spec/original_pipeline.md``
section 1c and trap list section 9.

The original has two different classes both called ``CoordAtt`` (one per file). Here the backbone
one is ``CoordAtt`` and the DDAM-head one is ``HeadCoordAtt``; class names never appear in
``state_dict`` keys (the head instance is stored under the attribute name ``CoordAtt``), and the
DDAM checkpoints are plain state_dicts, so this renaming is invisible to weight loading.

Quirks reproduced on purpose:

* ``MDConv.bn`` / ``MDConv.prelu`` are created (they are in the state_dict) but never applied.
* ``HeadCoordAtt.Linear`` / ``.flatten`` are created but never called; the head returns only the
  attention map ``a_w * a_h`` (it does not multiply by x).
* ``DDAMNet.bn`` (BatchNorm1d(num_class)) is created but unused in ``forward``.
* ``DDAMNet.forward`` returns the tuple ``(out, x, heads)``.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import BatchNorm1d, BatchNorm2d, Conv2d, Linear, Module, PReLU, Sequential

__all__ = [
    "Flatten",
    "l2_norm",
    "Conv_block",
    "Linear_block",
    "h_sigmoid",
    "h_swish",
    "CoordAtt",
    "MDConv",
    "Mix_Depth_Wise",
    "Mix_Residual",
    "MixedFeatureNet",
    "HeadCoordAtt",
    "CoordAttHead",
    "DDAMNet",
    "split_channels",
]


class Flatten(Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


def l2_norm(x, axis=1):
    norm = torch.norm(x, 2, axis, True)
    return torch.div(x, norm)


class Conv_block(Module):
    """conv (no bias) -> BatchNorm2d -> per-channel PReLU; keys conv/bn/prelu."""

    def __init__(self, in_c, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
        super().__init__()
        self.conv = Conv2d(in_c, out_channels=out_c, kernel_size=kernel, groups=groups, stride=stride,
                           padding=padding, bias=False)
        self.bn = BatchNorm2d(out_c)
        self.prelu = PReLU(out_c)

    def forward(self, x):
        x = self.conv(x)
        x = self.bn(x)
        x = self.prelu(x)
        return x


class Linear_block(Module):
    """conv (no bias) -> BatchNorm2d; keys conv/bn."""

    def __init__(self, in_c, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
        super().__init__()
        self.conv = Conv2d(in_c, out_channels=out_c, kernel_size=kernel, groups=groups, stride=stride,
                           padding=padding, bias=False)
        self.bn = BatchNorm2d(out_c)

    def forward(self, x):
        x = self.conv(x)
        x = self.bn(x)
        return x


class h_sigmoid(nn.Module):
    """relu6(x + 3) / 6."""

    def __init__(self, inplace=True):
        super().__init__()
        self.relu = nn.ReLU6(inplace=inplace)

    def forward(self, x):
        return self.relu(x + 3) / 6


class h_swish(nn.Module):
    """x * relu6(x + 3) / 6."""

    def __init__(self, inplace=True):
        super().__init__()
        self.sigmoid = h_sigmoid(inplace=inplace)

    def forward(self, x):
        return x * self.sigmoid(x)


class CoordAtt(nn.Module):
    """Backbone coordinate attention (MixedFeatureNet.py version).

    Average-pools along W and along H, shared 1x1 conv (inp -> mip = max(8, inp // groups), bias)
    + BN + h_swish, then per-direction 1x1 conv (mip -> oup, bias) + sigmoid; returns
    ``x * a_w * a_h``.
    """

    def __init__(self, inp, oup, groups=32):
        super().__init__()
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        mip = max(8, inp // groups)
        self.conv1 = nn.Conv2d(inp, mip, kernel_size=1, stride=1, padding=0)
        self.bn1 = nn.BatchNorm2d(mip)
        self.conv2 = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)
        self.conv3 = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)
        self.relu = h_swish()

    def forward(self, x):
        identity = x
        n, c, h, w = x.size()
        x_h = self.pool_h(x)                      # (n,c,h,1)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)  # (n,c,1,w) -> (n,c,w,1)
        y = torch.cat([x_h, x_w], dim=2)
        y = self.conv1(y)
        y = self.bn1(y)
        y = self.relu(y)
        x_h, x_w = torch.split(y, [h, w], dim=2)
        x_w = x_w.permute(0, 1, 3, 2)
        x_h = self.conv2(x_h).sigmoid()
        x_w = self.conv3(x_w).sigmoid()
        x_h = x_h.expand(-1, -1, h, w)
        x_w = x_w.expand(-1, -1, h, w)
        return identity * x_w * x_h


def split_channels(total_filters, num_groups):
    """Equal split with the remainder on the first group (e.g. 512/3 -> [172, 170, 170]).

    Provided for reference only: the original MixedFeatureNet passes every split list explicitly
    (``MixedFeatureNet.SPLITS``), and for most stages they are NOT the equal split
    (e.g. conv_23 uses [64, 32, 32] on 128 channels).
    """
    split = [total_filters // num_groups for _ in range(num_groups)]
    split[0] += total_filters - sum(split)
    return split


class MDConv(Module):
    """Mixed depthwise conv: split channels, k_i x k_i depthwise conv per part (pad k_i//2), concat.

    ``bn`` and ``prelu`` are registered but NOT applied in forward (as in the original).
    """

    def __init__(self, channels, kernel_size, split_out_channels, stride):
        super().__init__()
        assert sum(split_out_channels) == channels, (split_out_channels, channels)
        assert len(split_out_channels) == len(kernel_size)
        self.num_groups = len(kernel_size)
        self.split_channels = split_out_channels
        self.mixed_depthwise_conv = nn.ModuleList()
        for i in range(self.num_groups):
            self.mixed_depthwise_conv.append(
                nn.Conv2d(
                    self.split_channels[i],
                    self.split_channels[i],
                    kernel_size[i],
                    stride=stride,
                    padding=kernel_size[i] // 2,
                    groups=self.split_channels[i],
                    bias=False,
                )
            )
        self.bn = BatchNorm2d(channels)
        self.prelu = PReLU(channels)

    def forward(self, x):
        if self.num_groups == 1:
            return self.mixed_depthwise_conv[0](x)
        x_split = torch.split(x, self.split_channels, dim=1)
        x = [conv(x_split[i]) for i, conv in enumerate(self.mixed_depthwise_conv)]
        return torch.cat(x, dim=1)


class Mix_Depth_Wise(Module):
    """1x1 Conv_block (in -> groups) -> MDConv -> CoordAtt -> 1x1 Linear_block (groups -> out) [+ x]."""

    def __init__(self, in_c, out_c, residual=False, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=1,
                 kernel_size=(3, 5, 7), split_out_channels=(64, 32, 32)):
        super().__init__()
        self.conv = Conv_block(in_c, out_c=groups, kernel=(1, 1), padding=(0, 0), stride=(1, 1))
        self.conv_dw = MDConv(channels=groups, kernel_size=list(kernel_size),
                              split_out_channels=list(split_out_channels), stride=stride)
        self.CA = CoordAtt(groups, groups)
        self.project = Linear_block(groups, out_c, kernel=(1, 1), padding=(0, 0), stride=(1, 1))
        self.residual = residual

    def forward(self, x):
        if self.residual:
            short_cut = x
        x = self.conv(x)
        x = self.conv_dw(x)
        x = self.CA(x)
        x = self.project(x)
        if self.residual:
            return short_cut + x
        return x


class Mix_Residual(Module):
    def __init__(self, c, num_block, groups, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
                 kernel_size=(3, 5), split_out_channels=(64, 64)):
        super().__init__()
        modules = []
        for _ in range(num_block):
            modules.append(
                Mix_Depth_Wise(c, c, residual=True, kernel=kernel, padding=padding, stride=stride, groups=groups,
                               kernel_size=kernel_size, split_out_channels=split_out_channels)
            )
        self.model = Sequential(*modules)

    def forward(self, x):
        return self.model(x)


class MixedFeatureNet(Module):
    """MixedFeatureNet backbone (112x112 input -> 512x7x7 after conv_6_sep).

    DDAMNet keeps only the first 9 children (conv1 .. conv_6_sep).
    """

    # (kernel sizes, explicit channel split) per MDConv stage, exactly as the original passes them.
    SPLITS = {
        "conv_23": ([3, 5, 7], [64, 32, 32]),
        "conv_3": ([3, 5], [96, 32]),
        "conv_34": ([3, 5, 7], [128, 64, 64]),
        "conv_4": ([3, 5], [192, 64]),
        "conv_45": ([3, 5, 7, 9], [128 * 2, 128 * 2, 128 * 2, 128 * 2]),
        "conv_5": ([3, 5, 7], [86 * 2, 85 * 2, 85 * 2]),
    }

    def __init__(self, embedding_size=256, out_h=7, out_w=7):
        super().__init__()
        S = self.SPLITS
        # 112x112
        self.conv1 = Conv_block(3, 64, kernel=(3, 3), stride=(2, 2), padding=(1, 1))
        # 56x56
        self.conv2_dw = Conv_block(64, 64, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=64)
        self.conv_23 = Mix_Depth_Wise(64, 64, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=128,
                                      kernel_size=S["conv_23"][0], split_out_channels=S["conv_23"][1])
        # 28x28
        self.conv_3 = Mix_Residual(64, num_block=9, groups=128, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
                                   kernel_size=S["conv_3"][0], split_out_channels=S["conv_3"][1])
        self.conv_34 = Mix_Depth_Wise(64, 128, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=256,
                                      kernel_size=S["conv_34"][0], split_out_channels=S["conv_34"][1])
        # 14x14
        self.conv_4 = Mix_Residual(128, num_block=16, groups=256, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
                                   kernel_size=S["conv_4"][0], split_out_channels=S["conv_4"][1])
        self.conv_45 = Mix_Depth_Wise(128, 256, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=512 * 2,
                                      kernel_size=S["conv_45"][0], split_out_channels=S["conv_45"][1])
        # 7x7
        self.conv_5 = Mix_Residual(256, num_block=6, groups=512, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
                                   kernel_size=S["conv_5"][0], split_out_channels=S["conv_5"][1])
        self.conv_6_sep = Conv_block(256, 512, kernel=(1, 1), stride=(1, 1), padding=(0, 0))
        # --- the last 4 children, dropped by DDAMNet ---
        self.conv_6_dw = Linear_block(512, 512, groups=512, kernel=(out_h, out_w), stride=(1, 1), padding=(0, 0))
        self.conv_6_flatten = Flatten()
        self.linear = Linear(512, embedding_size, bias=False)
        self.bn = BatchNorm1d(embedding_size)

    def forward(self, x):
        out = self.conv1(x)
        out = self.conv2_dw(out)
        out = self.conv_23(out)
        out = self.conv_3(out)
        out = self.conv_34(out)
        out = self.conv_4(out)
        out = self.conv_45(out)
        out = self.conv_5(out)
        out = self.conv_6_sep(out)
        out = self.conv_6_dw(out)
        out = self.conv_6_flatten(out)
        out = self.linear(out)
        out = self.bn(out)
        return l2_norm(out)


class HeadCoordAtt(nn.Module):
    """DDAM.py's ``CoordAtt`` (attention-head version); needs a 7x7 input map.

    Learned directional pooling: depthwise (1,7) conv + BN -> (n,c,7,1) and depthwise (7,1) conv + BN
    -> (n,c,1,7) (permuted to (n,c,7,1)); shared conv1 (c -> mip, bias) + bn1 + h_swish; conv2/conv3
    (mip -> c, bias) + sigmoid. Returns the attention map ``a_w * a_h`` only. ``Linear`` and
    ``flatten`` exist but are never called.
    """

    def __init__(self, inp, oup, groups=32):
        super().__init__()
        self.Linear_h = Linear_block(inp, inp, groups=inp, kernel=(1, 7), stride=(1, 1), padding=(0, 0))
        self.Linear_w = Linear_block(inp, inp, groups=inp, kernel=(7, 1), stride=(1, 1), padding=(0, 0))
        mip = max(8, inp // groups)
        self.conv1 = nn.Conv2d(inp, mip, kernel_size=1, stride=1, padding=0)
        self.bn1 = nn.BatchNorm2d(mip)
        self.conv2 = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)
        self.conv3 = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)
        self.relu = h_swish()
        self.Linear = Linear_block(oup, oup, groups=oup, kernel=(7, 7), stride=(1, 1), padding=(0, 0))
        self.flatten = Flatten()

    def forward(self, x):
        n, c, h, w = x.size()
        x_h = self.Linear_h(x)                  # (n,c,h,1)
        x_w = self.Linear_w(x)                  # (n,c,1,w)
        x_w = x_w.permute(0, 1, 3, 2)           # (n,c,w,1)
        y = torch.cat([x_h, x_w], dim=2)
        y = self.conv1(y)
        y = self.bn1(y)
        y = self.relu(y)
        x_h, x_w = torch.split(y, [h, w], dim=2)
        x_w = x_w.permute(0, 1, 3, 2)
        x_h = self.conv2(x_h).sigmoid()
        x_w = self.conv3(x_w).sigmoid()
        x_h = x_h.expand(-1, -1, h, w)
        x_w = x_w.expand(-1, -1, h, w)
        return x_w * x_h


class CoordAttHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.CoordAtt = HeadCoordAtt(512, 512)

    def forward(self, x):
        return self.CoordAtt(x)


class DDAMNet(nn.Module):
    """DDAMNet(num_class, num_head). forward(img) -> (out, x, heads).

    ``pretrained=True`` reproduces the original's load of the whole pickled MixedFeatureNet from
    ``./pretrained/MFN_msceleb.pth`` (relative to the CWD); the original defaults to True, this
    reference defaults to False (no such file in tests).
    """

    def __init__(self, num_class=7, num_head=2, pretrained=False):
        super().__init__()
        net = MixedFeatureNet()
        if pretrained:
            net = torch.load(os.path.join("./pretrained/", "MFN_msceleb.pth"), weights_only=False)
        self.features = nn.Sequential(*list(net.children())[:-4])
        self.num_head = num_head
        for i in range(int(num_head)):
            setattr(self, "cat_head%d" % i, CoordAttHead())
        self.Linear = Linear_block(512, 512, groups=512, kernel=(7, 7), stride=(1, 1), padding=(0, 0))
        self.flatten = Flatten()
        self.fc = nn.Linear(512, num_class)
        self.bn = nn.BatchNorm1d(num_class)

    def _fuse(self, x):
        heads = [getattr(self, "cat_head%d" % i)(x) for i in range(self.num_head)]
        y = heads[0]
        for i in range(1, self.num_head):
            y = torch.max(y, heads[i])
        y = x * y
        y = self.Linear(y)
        y = self.flatten(y)
        return y, heads

    def embed(self, img):
        """(N,3,112,112) -> (N,512): the vector that ``fc`` consumes."""
        x = self.features(img)
        y, _ = self._fuse(x)
        return y

    def forward(self, img):
        x = self.features(img)
        y, heads = self._fuse(x)
        out = self.fc(y)
        return out, x, heads
