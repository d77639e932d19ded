"""ResNet-50/101 backbone (bottleneck, stride in the 3x3 conv: "v1.5"), in Flax Linen.

Submodule names follow `transformers`' `ResNetModel` (embedder, stages_i,
layers_j, shortcut, layer_k, convolution, normalization) so that weight
conversion is a renaming; torchvision's `resnet50` has the same computation
under other names (see `conversion.py`). For dense prediction the last
stages can trade stride for dilation (output stride 8 or 16), the way
torchvision's `replace_stride_with_dilation` does: the first block of a dilated
stage keeps the previous dilation, the following blocks use the new one.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Per-stage block counts and output widths (bottleneck width is a quarter).
RESNET_VARIANTS: dict[str, dict[str, Any]] = {
    "50": dict(depths=(3, 4, 6, 3), hidden_sizes=(256, 512, 1024, 2048), embedding_size=64),
    "101": dict(depths=(3, 4, 23, 3), hidden_sizes=(256, 512, 1024, 2048), embedding_size=64),
    "tiny": dict(depths=(1, 1, 1, 1), hidden_sizes=(16, 32, 64, 128), embedding_size=8),
    # CPU-sized (the CamVid CPU protocol, configs/segformer_camvid.py:cpu): no published weights.
    "small": dict(depths=(1, 1, 1, 1), hidden_sizes=(32, 64, 128, 256), embedding_size=16),
}
BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1.


class ConvLayer(nn.Module):
  """Conv (no bias, symmetric padding) -> BatchNorm -> optional ReLU."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  dilation: int = 1
  relu: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    pad = (self.kernel_size // 2) * self.dilation
    x = nn.Conv(self.features, (self.kernel_size, self.kernel_size), strides=self.stride,
                padding=((pad, pad), (pad, pad)), kernel_dilation=self.dilation, use_bias=False,
                dtype=self.dtype, name="convolution")(x_BHWC)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                     dtype=self.dtype, name="normalization")(x)
    return nn.relu(x) if self.relu else x


class Bottleneck(nn.Module):
  """1x1 reduce -> 3x3 (stride, dilation) -> 1x1 expand, plus (projected) shortcut."""
  features: int
  stride: int = 1
  dilation: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    residual = x_BHWC
    if x_BHWC.shape[-1] != self.features or self.stride != 1:
      residual = ConvLayer(self.features, 1, self.stride, relu=False, dtype=self.dtype,
                           name="shortcut")(x_BHWC, train)
    width = self.features // 4
    x = ConvLayer(width, 1, dtype=self.dtype, name="layer_0")(x_BHWC, train)
    x = ConvLayer(width, 3, self.stride, self.dilation, dtype=self.dtype, name="layer_1")(x, train)
    x = ConvLayer(self.features, 1, relu=False, dtype=self.dtype, name="layer_2")(x, train)
    return nn.relu(x + residual)


class ResNetStage(nn.Module):
  """`depth` bottlenecks; only the first strides (or keeps the previous dilation)."""
  features: int
  depth: int
  stride: int
  first_dilation: int
  dilation: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    for j in range(self.depth):
      x_BHWC = Bottleneck(self.features, self.stride if j == 0 else 1,
                          self.first_dilation if j == 0 else self.dilation, dtype=self.dtype,
                          name=f"layers_{j}")(x_BHWC, train)
    return x_BHWC


class ResNet(nn.Module):
  """ResNet backbone; returns the four stage outputs (stride 4, 8, 16|8, 32|16|8).

  Attributes:
    depths, hidden_sizes, embedding_size: see RESNET_VARIANTS.
    output_stride: 32 (plain), 16 (last stage dilated) or 8 (last two dilated).
    dtype: compute dtype (parameters float32).
  """
  depths: Sequence[int]
  hidden_sizes: Sequence[int]
  embedding_size: int = 64
  output_stride: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images_BHWC: jax.Array, train: bool = False) -> list[jax.Array]:
    if self.output_stride not in (8, 16, 32):
      raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}.")
    # Stages whose stride becomes dilation: the last one for 16, the last two for 8.
    num_dilated = {32: 0, 16: 1, 8: 2}[self.output_stride]
    x = images_BHWC.astype(self.dtype)
    x = ConvLayer(self.embedding_size, 7, 2, dtype=self.dtype, name="embedder")(x, train)
    # PyTorch's MaxPool2d(3, 2, padding=1) pads with -inf, as flax's max_pool does.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features = []
    dilation = 1
    for i, (depth, width) in enumerate(zip(self.depths, self.hidden_sizes)):
      stride = 1 if i == 0 else 2
      first_dilation = dilation
      if i >= len(self.depths) - num_dilated:
        dilation *= stride
        stride = 1
      x = ResNetStage(width, depth, stride, first_dilation, dilation, dtype=self.dtype,
                      name=f"stages_{i}")(x, train)
      features.append(x)
    return features
