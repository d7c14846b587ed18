"""``tiny_cnn``: a small backbone for smoke runs and tests of the training path; not an emotion model.

conv 3x3/2 (3->16) BN ReLU -> conv 3x3/2 (16->32) BN ReLU -> global mean (the 32-d embedding)
-> Linear(32, num_classes). Input 32x32 RGB with mean = std = 0.5. It compiles in seconds on
CPU, so tests can run whole `hsemo-jax pretrain` processes (resume after SIGKILL, several hosts).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hsemo_jax.models.layers import BatchNorm, Conv2d, Linear

WIDTH = 32


class TinyCNN(nnx.Module):
    """x_nhwc (N, S, S, 3) -> scores (N, num_classes); `features` -> (N, 32)."""

    def __init__(self, num_classes: int | None = 10, *, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.conv1 = Conv2d(3, WIDTH // 2, 3, stride=2, padding=1, bias=False, rng=rng)
        self.bn1 = BatchNorm(WIDTH // 2)
        self.conv2 = Conv2d(WIDTH // 2, WIDTH, 3, stride=2, padding=1, bias=False, rng=rng)
        self.bn2 = BatchNorm(WIDTH)
        self.num_features = WIDTH
        self.fc = Linear(WIDTH, num_classes, rng=rng) if num_classes else None

    def features(self, x_nhwc):
        x = jax.nn.relu(self.bn1(self.conv1(x_nhwc)))
        x = jax.nn.relu(self.bn2(self.conv2(x)))
        return jnp.mean(x, axis=(1, 2))

    def head(self, features):
        """Embedding -> scores (the embedding itself when there is no `fc`)."""
        return features if self.fc is None else self.fc(features)

    def __call__(self, x_nhwc):
        return self.head(self.features(x_nhwc))
