"""Deterministic, well-scaled random weights for parity tests (test-only).

``randomize_(model, seed)`` overwrites EVERY parameter and every BatchNorm statistic buffer with
random values drawn from ``torch.Generator().manual_seed(seed)``, scaled so that activations stay
O(1) through a whole network in eval mode: outputs are neither ~0 nor saturated, they depend on the
input, and BN running statistics / affine params / PReLU slopes / biases are all non-trivial, so a
port that e.g. drops a BN term, mixes up running_mean/var, or uses a scalar PReLU visibly diverges.

Two stages:

1. Data-independent draws (scales below) for every parameter and BN buffer.
2. Calibration (default): one eval-mode forward pass on a synthetic batch of 6 random 112x112
   "images" (smooth / medium / white-noise mix, also drawn from the seeded generator). A pre-hook
   on every BatchNorm that is actually *called* sets its running stats from the per-channel statistics of its real input,
   perturbed at random (``running_mean = mu + N(0, 0.1^2) * sigma``,
   ``running_var = sigma^2 * U(0.5, 2)``). Layers run in order, so each BN sees already-calibrated
   upstream layers. Without this, random running stats dominate the (small) real activations in
   deep nets: outputs become input-independent constants (measured: EfficientNet-B0 logits equal
   across different inputs to 1e-7), which would make parity tests vacuous. BNs that are never
   called (DDAMFN's MDConv.bn, head ``Linear.bn``, ``DDAMNet.bn``) keep their stage-1 values.

All draws are made on CPU in float32 in a fixed order (``named_modules()`` order, then BN call
order) and copied into each tensor's own dtype/device, so the result depends only on the module
structure and the seed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["randomize_", "synthetic_images"]

# Weights get std = GAIN / sqrt(fan_in). Gain 1 rather than the ReLU-style sqrt(2): without
# calibration, sqrt(2) made MobileFaceNet's residual stacks grow ~1.5x in std per block (outputs
# ~1e3); with calibration the BNs fix the scale anyway and the gain only matters for BN-free paths
# (CoordAtt/SE conv2/conv3 -> sigmoid, final Linear).
CONV_GAIN = 1.0
LINEAR_GAIN = 1.0
BIAS_STD = 0.1


def _normal(gen, shape, std, mean=0.0):
    return torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean


def _uniform(gen, shape, lo, hi):
    return torch.rand(shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo


@torch.no_grad()
def _set(t: torch.Tensor, value: torch.Tensor) -> None:
    t.copy_(value.to(dtype=t.dtype, device=t.device))


def synthetic_images(gen: torch.Generator, n: int = 6, size: int = 112) -> torch.Tensor:
    """Random RGB "images" in [-2.5, 2.5] mixing three spectra, one third each (n % 3 == 0).

    Smooth (upsampled 8x8 noise + light grain), medium (upsampled 28x28 noise + grain) and white
    Gaussian noise. Calibrating on the mixture keeps activations O(1) for test inputs of any of
    these kinds; calibrating on one kind only lets the others grow geometrically with depth
    (measured: DDAMFN logits ~1e4 on white noise after smooth-only calibration).
    """
    if n % 3:
        raise ValueError("n must be a multiple of 3")
    k = n // 3
    up = torch.nn.functional.interpolate
    smooth = up(torch.randn((k, 3, 8, 8), generator=gen), size=(size, size), mode="bilinear", align_corners=False)
    smooth = smooth + 0.25 * torch.randn((k, 3, size, size), generator=gen)
    medium = up(torch.randn((k, 3, 28, 28), generator=gen), size=(size, size), mode="bilinear", align_corners=False)
    medium = medium + 0.25 * torch.randn((k, 3, size, size), generator=gen)
    white = torch.randn((k, 3, size, size), generator=gen)
    return torch.cat([smooth, medium, white]).clamp(-2.5, 2.5)


@torch.no_grad()
def _calibrate_bn(model: nn.Module, gen: torch.Generator, calib_input: torch.Tensor) -> None:
    def pre_hook(mod, args):
        x = args[0].detach().float()
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        var = torch.maximum(var, 1e-2 * var.mean() + 1e-6)  # no ~constant channel blows up
        n = mean.numel()
        rm = mean + _normal(gen, (n,), BIAS_STD).to(mean.device) * var.sqrt()
        rv = var * _uniform(gen, (n,), 0.5, 2.0).to(var.device)
        _set(mod.running_mean, rm)
        _set(mod.running_var, rv)

    handles = [
        m.register_forward_pre_hook(pre_hook)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        p = next(iter(model.parameters()), None)
        if p is not None:
            calib_input = calib_input.to(device=p.device, dtype=p.dtype)
        model(calib_input)
    finally:
        for h in handles:
            h.remove()
        for m, t in training.items():
            m.train(t)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0, calib_input="auto") -> nn.Module:
    """Randomise all parameters and BN buffers of ``model`` in place; returns ``model``.

    ``calib_input``: ``"auto"`` (default) calibrates BN running stats on ``synthetic_images``
    (6 x 3 x 112 x 112); a tensor calibrates on that batch; ``None`` skips calibration (purely
    data-independent draws; fine for shallow nets, input-independent outputs for deep ones).

    Stage-1 draws:

    * Conv (any ``_ConvNd``, incl. timm's Conv2dSame): weight ~ N(0, 1/fan_in), fan_in =
      in_channels/groups * prod(kernel); bias ~ N(0, 0.1^2).
    * Linear: weight ~ N(0, 1/in_features); bias ~ N(0, 0.1^2).
    * BatchNorm (1d/2d/3d, incl. timm BatchNormAct2d): weight ~ U(0.5, 1.5), bias ~ N(0, 0.1^2),
      running_mean ~ N(0, 0.1^2), running_var ~ U(0.5, 2.0). ``num_batches_tracked`` untouched.
    * GroupNorm/LayerNorm affine: weight ~ U(0.5, 1.5), bias ~ N(0, 0.1^2).
    * PReLU: weight ~ U(0, 0.5) (per channel).
    * Any other parameter not covered above: N(0, 0.1^2).
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    done: set[int] = set()

    def mark(*ts):
        for t in ts:
            if t is not None:
                done.add(id(t))

    for _, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            w = m.weight
            fan_in = w.shape[1] * math.prod(w.shape[2:])
            if m.transposed:  # weight is (in, out/groups, *k)
                fan_in = w.shape[0] // m.groups * math.prod(w.shape[2:])
            _set(w, _normal(gen, w.shape, CONV_GAIN / math.sqrt(fan_in)))
            if m.bias is not None:
                _set(m.bias, _normal(gen, m.bias.shape, BIAS_STD))
            mark(m.weight, m.bias)
        elif isinstance(m, nn.Linear):
            w = m.weight
            _set(w, _normal(gen, w.shape, LINEAR_GAIN / math.sqrt(w.shape[1])))
            if m.bias is not None:
                _set(m.bias, _normal(gen, m.bias.shape, BIAS_STD))
            mark(m.weight, m.bias)
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            n = m.num_features
            if m.weight is not None:
                _set(m.weight, _uniform(gen, (n,), 0.5, 1.5))
            if m.bias is not None:
                _set(m.bias, _normal(gen, (n,), BIAS_STD))
            if m.running_mean is not None:
                _set(m.running_mean, _normal(gen, (n,), BIAS_STD))
            if m.running_var is not None:
                _set(m.running_var, _uniform(gen, (n,), 0.5, 2.0))
            mark(m.weight, m.bias)
        elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            if getattr(m, "weight", None) is not None:
                _set(m.weight, _uniform(gen, m.weight.shape, 0.5, 1.5))
            if getattr(m, "bias", None) is not None:
                _set(m.bias, _normal(gen, m.bias.shape, BIAS_STD))
            mark(m.weight, m.bias)
        elif isinstance(m, nn.PReLU):
            _set(m.weight, _uniform(gen, m.weight.shape, 0.0, 0.5))
            mark(m.weight)

    for _, p in model.named_parameters():
        if id(p) not in done:
            _set(p, _normal(gen, p.shape, BIAS_STD))
            mark(p)

    if calib_input is not None:
        if isinstance(calib_input, str):
            if calib_input != "auto":
                raise ValueError(f"calib_input must be 'auto', None or a tensor, not {calib_input!r}")
            calib_input = synthetic_images(gen)
        _calibrate_bn(model, gen, calib_input)
    return model
