"""DeepLabV3+ (Chen et al. 2018) with a ResNet backbone, in Flax Linen.

Backbone features at output stride 16 (or 8) go through ASPP (a 1x1 conv,
three dilated 3x3 convs, image pooling; each conv + BN + ReLU), are fused by a
1x1 conv, upsampled to the stride-4 low-level features (reduced to 48 channels)
and refined by two 3x3 convs before a 1x1 classifier. Logits are at stride 4,
float32. Plain (not separable) convolutions, as in the common ResNet variants
(e.g. torchvision-style DeepLabV3+ re-implementations).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sesam_jax.models import resnet
from sesam_jax.models.segformer import resize_bilinear

Dtype = Any

DEEPLAB_VARIANTS: dict[str, dict[str, Any]] = {
    "r50": dict(backbone="50", aspp_channels=256, low_level_channels=48),
    "r101": dict(backbone="101", aspp_channels=256, low_level_channels=48),
    "tiny": dict(backbone="tiny", aspp_channels=16, low_level_channels=8),
    "small": dict(backbone="small", aspp_channels=32, low_level_channels=12),
}


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling; dilation rates scale with 16 / output_stride."""
  channels: int
  rates: Sequence[int]
  dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    conv = resnet.ConvLayer
    branches = [conv(self.channels, 1, dtype=self.dtype, name="conv_1x1")(x_BHWC, train)]
    for i, rate in enumerate(self.rates):
      branches.append(conv(self.channels, 3, dilation=rate, dtype=self.dtype,
                           name=f"conv_rate_{i}")(x_BHWC, train))
    pooled = jnp.mean(x_BHWC, axis=(1, 2), keepdims=True)
    pooled = conv(self.channels, 1, dtype=self.dtype, name="image_pool")(pooled, train)
    branches.append(jnp.broadcast_to(pooled, branches[0].shape))
    x = jnp.concatenate(branches, axis=-1)
    x = conv(self.channels, 1, dtype=self.dtype, name="project")(x, train)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train or not self.has_rng("dropout"))


class DeepLabV3Plus(nn.Module):
  """DeepLabV3+ semantic segmentation model.

  Attributes:
    num_classes: number of output classes.
    variant: key of DEEPLAB_VARIANTS ("r50", "r101", "tiny", "small").
    output_stride: backbone output stride, 16 (default) or 8.
    dtype: compute dtype; parameters and logits stay float32.
  """
  num_classes: int
  variant: str = "r101"
  output_stride: int = 16
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, images_BHWC: jax.Array, train: bool = False,
               return_features: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Images BxHxWx3 float32 (ImageNet-normalised) -> logits Bx(H/4)x(W/4)xK float32.

    With `return_features`, (logits, the decoder's feature Bx(H/4)x(W/4)x256 before the
    classifier, in `dtype`): AGMM's feature (`sesam_jax.train.agmm`). Parameters are the same.
    """
    if self.output_stride not in (8, 16):
      raise ValueError(f"DeepLabV3+ output_stride must be 8 or 16, got {self.output_stride}.")
    sizes = DEEPLAB_VARIANTS[self.variant]
    backbone_sizes = resnet.RESNET_VARIANTS[sizes["backbone"]]
    features = resnet.ResNet(**backbone_sizes, output_stride=self.output_stride,
                             dtype=self.dtype, name="backbone")(images_BHWC, train)
    scale = 16 // self.output_stride
    high = ASPP(sizes["aspp_channels"], tuple(r * scale for r in (6, 12, 18)),
                dropout_rate=self.dropout_rate, dtype=self.dtype, name="aspp")(features[-1], train)
    low = resnet.ConvLayer(sizes["low_level_channels"], 1, dtype=self.dtype,
                           name="low_level")(features[0], train)
    high = resize_bilinear(high, low.shape[1], low.shape[2])
    x = jnp.concatenate([high, low], axis=-1)
    for i in range(2):
      x = resnet.ConvLayer(sizes["aspp_channels"], 3, dtype=self.dtype,
                           name=f"decoder_{i}")(x, train)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    if return_features:
      return logits.astype(jnp.float32), x
    return logits.astype(jnp.float32)
