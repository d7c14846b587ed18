"""PyTorch reference MobileFaceNet (test-only), written from the spec.

Reproduces insightface ``arcface_torch/backbones/mobilefacenet.py`` as used by HSEmotion
(``src/affectnet/mobilefacenet.py``) with ``get_mbf(fp16=False, num_features=512)``: module
structure, attribute names (so ``state_dict`` keys and their order match the original exactly),
shapes and forward semantics. See ``shared/spec/original_pipeline.md`` section 1b.

This file must be importable as the top-level module ``mobilefacenet``: HSEmotion's whole-module
pickles (``mbf_va_mtl.pt``) reference ``mobilefacenet.MobileFaceNet`` etc. ``tests/conftest.py``
puts ``tests/reference`` on ``sys.path`` for that reason.

Differences from the original, all deliberate:

* ``fp16`` is kept as an attribute but the CUDA autocast context is dropped (CPU reference).
* An optional ``fc`` head (``num_classes``): HSEmotion's released pickle carries ``fc =
  Linear(512, 10)`` (8 expression logits + valence + arousal). Its placement is UNVERIFIED in the
  spec; the hypothesis implemented here is ``embedding = GDC output`` (after BatchNorm1d) and
  ``scores = fc(embedding)``. ``forward`` applies ``fc`` whenever the module has one (so setting
  ``model.fc = nn.Identity()`` as EmotiEffLib does yields the embedding), ``embed`` never does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import BatchNorm1d, BatchNorm2d, Conv2d, Linear, Module, PReLU, Sequential

__all__ = [
    "Flatten",
    "ConvBlock",
    "LinearBlock",
    "DepthWise",
    "Residual",
    "GDC",
    "MobileFaceNet",
    "get_mbf",
    "get_mbf_mtl",
]


class Flatten(Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)


class ConvBlock(Module):
    """Conv (no bias) -> BatchNorm2d (eps 1e-5) -> per-channel PReLU."""

    def __init__(self, in_c, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
        super().__init__()
        self.layers = nn.Sequential(
            Conv2d(in_c, out_c, kernel, groups=groups, stride=stride, padding=padding, bias=False),
            BatchNorm2d(num_features=out_c),
            PReLU(num_parameters=out_c),
        )

    def forward(self, x):
        return self.layers(x)


class LinearBlock(Module):
    """Conv (no bias) -> BatchNorm2d (eps 1e-5); no activation."""

    def __init__(self, in_c, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
        super().__init__()
        self.layers = nn.Sequential(
            Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            BatchNorm2d(num_features=out_c),
        )

    def forward(self, x):
        return self.layers(x)


class DepthWise(Module):
    """1x1 expand (ConvBlock) -> kxk depthwise (ConvBlock, stride s) -> 1x1 project (LinearBlock).

    ``groups`` is the inner (expanded) width. Adds the input when ``residual``.
    """

    def __init__(self, in_c, out_c, residual=False, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=1):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, out_c=groups, kernel=(1, 1), padding=(0, 0), stride=(1, 1)),
            ConvBlock(groups, groups, groups=groups, kernel=kernel, padding=padding, stride=stride),
            LinearBlock(groups, out_c, kernel=(1, 1), padding=(0, 0), stride=(1, 1)),
        )

    def forward(self, x):
        short_cut = None
        if self.residual:
            short_cut = x
        x = self.layers(x)
        if self.residual:
            output = short_cut + x
        else:
            output = x
        return output


class Residual(Module):
    """``num_block`` x DepthWise(c, c, residual=True, stride 1, inner=groups)."""

    def __init__(self, c, num_block, groups, kernel=(3, 3), stride=(1, 1), padding=(1, 1)):
        super().__init__()
        modules = []
        for _ in range(num_block):
            modules.append(DepthWise(c, c, True, kernel, stride, padding, groups))
        self.layers = Sequential(*modules)

    def forward(self, x):
        return self.layers(x)


class GDC(Module):
    """Global depthwise conv: 7x7 depthwise valid LinearBlock -> Flatten -> Linear (no bias) -> BN1d."""

    def __init__(self, embedding_size):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, groups=512, kernel=(7, 7), stride=(1, 1), padding=(0, 0)),
            Flatten(),
            Linear(512, embedding_size, bias=False),
            BatchNorm1d(embedding_size),
        )

    def forward(self, x):
        return self.layers(x)


class MobileFaceNet(Module):
    def __init__(self, fp16=False, num_features=512, blocks=(1, 4, 6, 2), scale=2, num_classes=None):
        super().__init__()
        self.scale = scale
        self.fp16 = fp16
        self.layers = nn.ModuleList()
        self.layers.append(ConvBlock(3, 64 * self.scale, kernel=(3, 3), stride=(2, 2), padding=(1, 1)))
        if blocks[0] == 1:
            # NB: groups=64 on 64*scale channels, i.e. NOT depthwise for scale=2 (weight (128,2,3,3)).
            self.layers.append(
                ConvBlock(64 * self.scale, 64 * self.scale, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=64)
            )
        else:
            self.layers.append(
                Residual(64 * self.scale, num_block=blocks[0], groups=128, kernel=(3, 3), stride=(1, 1), padding=(1, 1))
            )
        self.layers.extend(
            [
                DepthWise(64 * self.scale, 64 * self.scale, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=128),
                Residual(64 * self.scale, num_block=blocks[1], groups=128, kernel=(3, 3), stride=(1, 1), padding=(1, 1)),
                DepthWise(64 * self.scale, 128 * self.scale, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=256),
                Residual(128 * self.scale, num_block=blocks[2], groups=256, kernel=(3, 3), stride=(1, 1), padding=(1, 1)),
                DepthWise(128 * self.scale, 128 * self.scale, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=512),
                Residual(128 * self.scale, num_block=blocks[3], groups=256, kernel=(3, 3), stride=(1, 1), padding=(1, 1)),
            ]
        )
        self.conv_sep = ConvBlock(128 * self.scale, 512, kernel=(1, 1), stride=(1, 1), padding=(0, 0))
        self.features = GDC(num_features)
        self._initialize_weights()
        if num_classes is not None:
            # Registered last so the state_dict order matches the released pickle (fc.* at the end).
            self.fc = nn.Linear(num_features, num_classes)

    def _initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    m.bias.data.zero_()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3,112,112) -> (N,num_features): the GDC output after BatchNorm1d (no L2 norm, no fc)."""
        for func in self.layers:
            x = func(x)
        x = self.conv_sep(x)
        x = self.features(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        # getattr with default: works for modules built without fc, for unpickled originals whose
        # __dict__ lacks it, and after EmotiEffLib's `model.fc = Identity()`.
        fc = getattr(self, "fc", None)
        if fc is not None:
            x = fc(x)
        return x


def get_mbf(fp16, num_features, blocks=(1, 4, 6, 2), scale=2, num_classes=None):
    return MobileFaceNet(fp16, num_features, blocks, scale=scale, num_classes=num_classes)


def get_mbf_mtl(num_classes=10):
    """The HSEmotion ``mbf_va_mtl`` layout: get_mbf(False, 512) + fc Linear(512, 10) [8 logits, V, A]."""
    return get_mbf(False, 512, num_classes=num_classes)
