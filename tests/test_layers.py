"""Depthwise/grouped convolution forms agree with lax.conv; BatchNorm follows torch semantics."""
import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp

from hsemo_jax.models.layers import BatchNorm
from hsemo_jax.ops import conv2d, conv2d_lax, conv2d_shift


CONV_CASES = [
        ((2, 13, 11, 8), (3, 3), (1, 1), 1, 8, 8),  # depthwise, symmetric pad
        ((2, 14, 14, 6), (5, 5), (2, 2), "SAME", 6, 6),  # depthwise, TF same, stride 2 (even)
        ((1, 15, 15, 4), (3, 3), (2, 2), "SAME", 4, 4),  # TF same on odd size
        ((2, 7, 7, 5), (7, 7), (1, 1), 0, 5, 5),  # GDC: 7x7 valid -> 1x1
        ((2, 7, 7, 6), (1, 7), (1, 1), 0, 6, 6),  # DDAM head directional pooling
        ((2, 9, 9, 8), (3, 3), (1, 1), 1, 4, 8),  # grouped: 2 channels per group (MobileFaceNet layers.1)
        ((1, 10, 10, 4), (3, 3), (2, 2), 1, 2, 6),  # grouped, 2 in -> 3 out per group
        ((1, 11, 12, 4), (3, 3), (2, 2), ((0, 1), (1, 0)), 4, 4),  # depthwise, explicit asymmetric pads
]


@pytest.mark.parametrize("shape,k,stride,padding,groups,cout", CONV_CASES)
def test_shift_form_equals_lax_conv(shape, k, stride, padding, groups, cout):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((*k, shape[-1] // groups, cout)).astype(np.float32))
    with jax.default_matmul_precision("float32"):
        ref = conv2d_lax(x, w, stride, padding, groups)
        out = conv2d_shift(x, w, stride, padding, groups)
        auto = jax.jit(lambda a, b: conv2d(a, b, stride, padding, groups))(x, w)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(auto, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,k,stride,padding,groups,cout", CONV_CASES)
def test_shift_form_gradients_equal_lax_conv(shape, k, stride, padding, groups, cout):
    """The depthwise custom VJP (and autodiff of the grouped form) == lax.conv's gradients."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((*k, shape[-1] // groups, cout)).astype(np.float32))
    out_shape = conv2d_lax(x, w, stride, padding, groups).shape
    probe = jnp.asarray(rng.standard_normal(out_shape).astype(np.float32))

    def grads(conv):
        return jax.jit(jax.grad(lambda a, b: jnp.sum(conv(a, b, stride, padding, groups) * probe), (0, 1)))(x, w)

    with jax.default_matmul_precision("float32"):
        want, got = grads(conv2d_lax), grads(conv2d_shift)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.abs(r).max()))


@pytest.mark.parametrize("stride,padding", [((1, 1), 0), ((2, 2), "SAME"), ((2, 2), 0)])
def test_1x1_convolution_as_matmul_equals_lax_conv(stride, padding):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 9, 8, 6)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((1, 1, 6, 5)).astype(np.float32))
    with jax.default_matmul_precision("float32"):
        want = conv2d_lax(x, w, stride, padding, 1)
        got = conv2d(x, w, stride, padding)
        gw = jax.grad(lambda a, b: jnp.sum(conv2d_lax(a, b, stride, padding, 1) ** 2), (0, 1))(x, w)
        gg = jax.grad(lambda a, b: jnp.sum(conv2d(a, b, stride, padding) ** 2), (0, 1))(x, w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, r in zip(gg, gw):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.abs(r).max()))


def test_tf_same_padding_is_asymmetric_like_conv2d_same():
    """timm Conv2dSame pads the extra row/column bottom/right."""
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    w = np.random.default_rng(2).standard_normal((4, 3, 3, 3)).astype(np.float32)
    xt = torch.nn.functional.pad(torch.from_numpy(x), (0, 1, 0, 1))  # (left, right, top, bottom)
    ref = torch.nn.functional.conv2d(xt, torch.from_numpy(w), stride=2).numpy().transpose(0, 2, 3, 1)
    with jax.default_matmul_precision("float32"):
        out = conv2d(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(w.transpose(2, 3, 1, 0)), 2, "SAME")
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)


def test_batchnorm_train_mode_matches_torch():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5, 6, 7)).astype(np.float32) * 3 + 1
    bn_t = torch.nn.BatchNorm2d(7, eps=1e-3, momentum=0.1).train()
    with torch.no_grad():
        bn_t.weight.uniform_(0.5, 1.5)
        bn_t.bias.normal_()
    bn = BatchNorm(7, eps=1e-3)
    bn.scale[...] = bn_t.weight.detach().numpy()
    bn.bias[...] = bn_t.bias.detach().numpy()
    bn.use_running_average = False
    for _ in range(2):
        out_t = bn_t(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
        out = bn(jnp.asarray(x))
        np.testing.assert_allclose(out, out_t, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.mean[...], bn_t.running_mean.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bn.var[...], bn_t.running_var.numpy(), rtol=1e-6, atol=1e-6)
    bn_t.eval()
    bn.use_running_average = True
    out_t = bn_t(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(bn(jnp.asarray(x)), out_t, rtol=1e-5, atol=1e-5)


def test_batchnorm_and_prelu_gradients_match_torch():
    """Train-mode BN and PReLU take their per-channel gradients from `leading_sum` (a GEMV on
    CPU): input, scale, bias and slope gradients equal torch autograd's."""
    from flax import nnx

    from hsemo_jax.models.layers import PReLU

    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6, 5, 7)).astype(np.float32) * 2 + 0.5
    probe = rng.standard_normal(x.shape).astype(np.float32)
    scale, bias, alpha = (rng.uniform(0.5, 1.5, 7).astype(np.float32), rng.standard_normal(7).astype(np.float32),
                          rng.uniform(0.1, 0.4, 7).astype(np.float32))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2)).requires_grad_()
    bn_t, act_t = torch.nn.BatchNorm2d(7).train(), torch.nn.PReLU(7)
    with torch.no_grad():
        bn_t.weight.copy_(torch.from_numpy(scale))
        bn_t.bias.copy_(torch.from_numpy(bias))
        act_t.weight.copy_(torch.from_numpy(alpha))
    (act_t(bn_t(xt)) * torch.from_numpy(probe.transpose(0, 3, 1, 2))).sum().backward()

    bn, act = BatchNorm(7), PReLU(7)
    bn.scale[...], bn.bias[...], act.alpha[...] = scale, bias, alpha
    bn.use_running_average = False
    graphdef, params, rest = nnx.split((bn, act), nnx.Param, ...)

    def loss(params, rest, x):
        b, a = nnx.merge(graphdef, params, rest)
        return jnp.sum(a(b(x)) * probe)

    # BN updates its running statistics: they are traced by grad too (their gradient is unused)
    g_params, _, g_x = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, rest, jnp.asarray(x))
    (g_bn, g_act) = nnx.merge(graphdef, g_params, rest)
    np.testing.assert_allclose(g_x, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g_bn.scale[...], bn_t.weight.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g_bn.bias[...], bn_t.bias.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g_act.alpha[...], act_t.weight.grad.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,ndim", [((4, 9, 7, 5), 1), ((3, 8, 2, 6), 2), ((10, 3), 1)])
def test_leading_sum_equals_numpy(shape, ndim):
    from hsemo_jax.ops import leading_sum

    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out = jax.jit(lambda v: leading_sum(v, ndim))(jnp.asarray(x))
    want = x.astype(np.float64).reshape(-1, *shape[len(shape) - ndim:]).sum(0)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_recalibrated_batch_norms_equal_torchs_update_bn():
    """Two conv + batch-norm + ReLU layers, statistics recomputed over two batches: the running
    statistics of `torch.optim.swa_utils.update_bn` (cumulative average, each layer on the
    batch-normalized outputs of the one before), and the model left in eval mode."""
    from flax import nnx

    from hsemo_jax.models.layers import Conv2d
    from hsemo_jax.models.recalibrate import recalibrate_batch_norms

    class Net(nnx.Module):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.convs = nnx.List([Conv2d(3, 8, 3, padding=1, rng=rng), Conv2d(8, 5, 3, padding=1, rng=rng)])
            self.norms = nnx.List([BatchNorm(8), BatchNorm(5)])

        def __call__(self, x):
            for conv, bn in zip(self.convs, self.norms):
                x = jax.nn.relu(bn(conv(x)))
            return x

    net = Net()
    ref = torch.nn.Sequential(*[m for i in range(2) for m in (
        torch.nn.Conv2d((3, 8)[i], (8, 5)[i], 3, padding=1, bias=False), torch.nn.BatchNorm2d((8, 5)[i]), torch.nn.ReLU())])
    with torch.no_grad():
        for i, conv in enumerate(net.convs):
            ref[3 * i].weight.copy_(torch.from_numpy(np.array(conv.kernel[...]).transpose(3, 2, 0, 1)))
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((4, 9, 9, 3)).astype(np.float32) * s + s for s in (1, 3)]
    torch.optim.swa_utils.update_bn([torch.from_numpy(b.transpose(0, 3, 1, 2)) for b in batches], ref)
    assert recalibrate_batch_norms(net, [jnp.asarray(b) for b in batches]) is net
    for i, bn in enumerate(net.norms):
        np.testing.assert_allclose(bn.mean[...], ref[3 * i + 1].running_mean.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bn.var[...], ref[3 * i + 1].running_var.numpy(), rtol=1e-5, atol=1e-5)
        assert bn.use_running_average and bn.momentum == 0.1
    ref.eval()
    np.testing.assert_allclose(net(jnp.asarray(batches[0])), ref(torch.from_numpy(batches[0].transpose(0, 3, 1, 2)))
                               .detach().numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)
