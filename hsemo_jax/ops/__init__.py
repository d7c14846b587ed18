"""Array-level operations, each in the form its backend runs fastest: the only code in hsemo-jax
that knows about backends.

Every op has an XLA form (what GPU/TPU run and what `jax.export` keeps) and, where it pays, a CPU
form: XLA ops arranged for XLA:CPU (`dispatch.per_backend`) or a hand-written kernel
(`ops/cpu_kernels`, `dispatch.kernel_or_xla`). Which one runs is decided when the program is
lowered, so tracing, lowering for GPU/TPU and exporting never build or load the kernels.
`xla_forms()` traces the XLA forms directly (for jax2onnx and tests); `xla_forms(onnx=True)` the forms
ONNX runtimes run best where they differ, and `onnx_forms()` tells the code that picks them.

Arrays are NHWC / HWIO; shapes in the names (`x_nhwc`, `w_kn`).
"""
from hsemo_jax.ops.conv import Padding, conv1x1, conv2d, conv2d_lax, conv2d_shift, explicit_padding, pair
from hsemo_jax.ops.dispatch import onnx_forms, xla_forms
from hsemo_jax.ops.fused import conv_affine_act, depthwise_bn_act, depthwise_silu_input, expand_depthwise_bn_act
from hsemo_jax.ops.norm import batch_moments, batch_norm_eval, batch_norm_train
from hsemo_jax.ops.patches import fold_patches, unfold_patches
from hsemo_jax.ops.pointwise import ACTIVATIONS, conv1x1_fused, matmul, pointwise
from hsemo_jax.ops.reduce import broadcast_leading, leading_sum, spatial_mean

__all__ = [
    "ACTIVATIONS", "Padding", "batch_moments", "batch_norm_eval", "batch_norm_train", "broadcast_leading",
    "conv1x1", "conv1x1_fused", "conv2d", "conv2d_lax", "conv2d_shift", "conv_affine_act", "depthwise_bn_act",
    "depthwise_silu_input", "expand_depthwise_bn_act", "explicit_padding", "fold_patches", "leading_sum", "matmul",
    "onnx_forms", "pair", "pointwise", "spatial_mean", "unfold_patches", "xla_forms",
]
