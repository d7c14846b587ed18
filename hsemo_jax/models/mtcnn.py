"""MTCNN's three networks (Zhang et al. 2016, "Joint Face Detection and Alignment using Multitask
Cascaded Convolutional Networks"), with the layouts of facenet-pytorch's `PNet`, `RNet`, `ONet`
(attribute names = its state-dict keys). NHWC here; the cascade that runs them is
`hsemo_jax.models.mtcnn_cascade`.

* PNet, fully convolutional over an image pyramid: per 12x12 window (stride 2) a face probability
  and a box regression.
* RNet, on 24x24 crops of PNet's candidates: probability and box regression.
* ONet, on 48x48 crops of RNet's: probability, box regression and five landmarks (x1..x5, y1..y5,
  relative to the crop).

Every convolution is unpadded, every activation a per-channel PReLU, max pooling rounds up (torch's
`ceil_mode=True`). RNet and ONet flatten their last feature map in torch's (W, H, C) order
(`x.permute(0, 3, 2, 1)` of NCHW) before the dense layer, as the Caffe-converted weights expect.
Inputs are (pixel - 127.5) / 128.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hsemo_jax.models.layers import Conv2d, Linear, PReLU
from hsemo_jax.ops.pool import max_pool2d


def _conv(in_ch, out_ch, k, rng):
    return Conv2d(in_ch, out_ch, k, bias=True, rng=rng)


def _flatten_whc(x_nhwc):
    """torch's `x.permute(0, 3, 2, 1).reshape(n, -1)` of the NCHW map: (W, H, C) order."""
    return jnp.transpose(x_nhwc, (0, 2, 1, 3)).reshape(x_nhwc.shape[0], -1)


class PNet(nnx.Module):
    """Proposal net: (N, H, W, 3) -> regression (N, h, w, 4), probabilities (N, h, w, 2)."""

    def __init__(self, *, rng: np.random.Generator):
        self.conv1, self.prelu1 = _conv(3, 10, 3, rng), PReLU(10)
        self.conv2, self.prelu2 = _conv(10, 16, 3, rng), PReLU(16)
        self.conv3, self.prelu3 = _conv(16, 32, 3, rng), PReLU(32)
        self.conv4_1 = _conv(32, 2, 1, rng)
        self.conv4_2 = _conv(32, 4, 1, rng)

    def __call__(self, x):
        x = max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), jax.nn.softmax(self.conv4_1(x), axis=-1)


class RNet(nnx.Module):
    """Refinement net: (N, 24, 24, 3) -> regression (N, 4), probabilities (N, 2)."""

    def __init__(self, *, rng: np.random.Generator):
        self.conv1, self.prelu1 = _conv(3, 28, 3, rng), PReLU(28)
        self.conv2, self.prelu2 = _conv(28, 48, 3, rng), PReLU(48)
        self.conv3, self.prelu3 = _conv(48, 64, 2, rng), PReLU(64)
        self.dense4, self.prelu4 = Linear(576, 128, rng=rng), PReLU(128)
        self.dense5_1 = Linear(128, 2, rng=rng)
        self.dense5_2 = Linear(128, 4, rng=rng)

    def __call__(self, x):
        x = max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_whc(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), jax.nn.softmax(self.dense5_1(x), axis=-1)


class ONet(nnx.Module):
    """Output net: (N, 48, 48, 3) -> regression (N, 4), landmarks (N, 10), probabilities (N, 2)."""

    def __init__(self, *, rng: np.random.Generator):
        self.conv1, self.prelu1 = _conv(3, 32, 3, rng), PReLU(32)
        self.conv2, self.prelu2 = _conv(32, 64, 3, rng), PReLU(64)
        self.conv3, self.prelu3 = _conv(64, 64, 3, rng), PReLU(64)
        self.conv4, self.prelu4 = _conv(64, 128, 2, rng), PReLU(128)
        self.dense5, self.prelu5 = Linear(1152, 256, rng=rng), PReLU(256)
        self.dense6_1 = Linear(256, 2, rng=rng)
        self.dense6_2 = Linear(256, 4, rng=rng)
        self.dense6_3 = Linear(256, 10, rng=rng)

    def __call__(self, x):
        x = max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_whc(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), jax.nn.softmax(self.dense6_1(x), axis=-1)


class MTCNN(nnx.Module):
    """The three nets (`pnet`, `rnet`, `onet`); `hsemo_jax.models.mtcnn_cascade.detect` runs them."""

    def __init__(self, *, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.pnet, self.rnet, self.onet = PNet(rng=rng), RNet(rng=rng), ONet(rng=rng)
