"""Building blocks shared by the backbones (NHWC, PyTorch-equivalent semantics).

Parameter leaves use Flax names (`kernel`, `scale`, `mean`, `var`, `alpha`); the torch names they
come from are mapped in `hsemo_jax.convert.keymaps`. Module trees mirror the PyTorch attribute
trees (`nnx.List` where torch has `nn.Sequential`/`nn.ModuleList`) so that a torch key such as
`layers.2.layers.1.layers.0.weight` names the same parameter here.

Train/eval follows NNX: `model.eval()` (the default after construction) uses running statistics,
`model.train()` uses batch statistics and updates the running ones with PyTorch's momentum rule.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from flax import nnx

from hsemo_jax import ops
from hsemo_jax.ops import Padding, pair


def _uniform(rng: np.random.Generator, shape, fan_in: int):
    """PyTorch's default init range U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Drawn with numpy: eager `jax.random` would compile once per parameter shape (~40 s for DDAMFN).
    """
    bound = 1.0 / max(fan_in, 1) ** 0.5
    return jax.device_put(rng.uniform(-bound, bound, shape).astype(np.float32))


def _const(n: int, value: float):
    return jax.device_put(np.full((n,), value, np.float32))


class Conv2d(nnx.Module):
    """torch.nn.Conv2d in NHWC. kernel: (kh, kw, in/groups, out).

    padding: "SAME" (TF same, as timm's Conv2dSame), an int or (ph, pw) symmetric, or explicit pairs.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size, *, stride=1, padding: Padding = 0,
                 groups: int = 1, bias: bool = False, rng: np.random.Generator):
        kh, kw = pair(kernel_size)
        fan_in = (in_ch // groups) * kh * kw
        self.kernel = nnx.Param(_uniform(rng, (kh, kw, in_ch // groups, out_ch), fan_in))
        self.bias = nnx.Param(_uniform(rng, (out_ch,), fan_in)) if bias else None
        self.strides = pair(stride)
        self.padding = padding
        self.groups = groups

    def __call__(self, x_nhwc):
        y = ops.conv2d(x_nhwc, self.kernel[...], self.strides, self.padding, self.groups)
        return y if self.bias is None else y + ops.broadcast_leading(self.bias[...], y.shape)


class Linear(nnx.Module):
    """torch.nn.Linear. kernel: (in, out)."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, rng: np.random.Generator):
        self.kernel = nnx.Param(_uniform(rng, (in_features, out_features), in_features))
        self.bias = nnx.Param(_uniform(rng, (out_features,), in_features)) if bias else None

    def __call__(self, x):
        y = x @ self.kernel[...]
        return y if self.bias is None else y + self.bias[...]


class BatchNorm(nnx.Module):
    """torch BatchNorm1d/2d over the last axis, with PyTorch's semantics.

    Eval: running statistics. Train: normalizes with the biased batch variance and updates
    `running = (1 - momentum) * running + momentum * batch`, the running variance with the
    unbiased batch variance (as torch does); see `ops.batch_norm_train`. Under `jit` with a batch
    sharded over devices the batch statistics are global (XLA all-reduces the sums).
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1):
        self.scale = nnx.Param(_const(num_features, 1.0))
        self.bias = nnx.Param(_const(num_features, 0.0))
        self.mean = nnx.BatchStat(_const(num_features, 0.0))
        self.var = nnx.BatchStat(_const(num_features, 1.0))
        self.eps = eps
        self.momentum = momentum
        self.use_running_average = True

    def __call__(self, x):
        if not self.use_running_average:
            y, mean, var = ops.batch_norm_train(x, self.scale[...], self.bias[...], self.eps)
            self._update_running(mean, var, x.size // x.shape[-1])
            return y
        return ops.batch_norm_eval(x, self.mean[...], self.var[...], self.scale[...], self.bias[...], self.eps)

    def _update_running(self, mean, var, n: int):
        m = self.momentum
        self.mean[...] = (1 - m) * self.mean[...] + m * mean
        self.var[...] = (1 - m) * self.var[...] + m * var * (n / max(n - 1, 1))

    def batch_affine(self, x):
        """Training: `(scale, shift)` with y = x * scale + shift the batch norm of `x` on its batch
        statistics (float32 and differentiable in x), running statistics updated; for callers that
        fuse the normalization into their own op (`ops.depthwise_silu_input`)."""
        mean, var = ops.batch_moments(x)
        self._update_running(mean, var, x.size // x.shape[-1])
        inv = self._inv_std_scale(var)
        return inv, self.bias[...] - mean * inv

    def _inv_std_scale(self, var):
        return lax.rsqrt(var + self.eps) * self.scale[...]

    def affine(self):
        """Eval-mode batch norm as per-channel `(scale, shift)`: y = x * scale + shift."""
        inv = self._inv_std_scale(self.var[...])
        return inv, self.bias[...] - self.mean[...] * inv


class PReLU(nnx.Module):
    """Per-channel PReLU (torch.nn.PReLU(num_parameters=C)); alpha: (C,)."""

    def __init__(self, num_features: int):
        self.alpha = nnx.Param(_const(num_features, 0.25))

    def __call__(self, x):
        return jnp.where(x >= 0, x, ops.broadcast_leading(self.alpha[...], x.shape) * x)


def h_swish(x):
    """x * ReLU6(x + 3) / 6, as in the DDAMFN code."""
    return x * jnp.clip(x + 3.0, 0.0, 6.0) / 6.0
