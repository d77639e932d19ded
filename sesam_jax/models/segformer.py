"""SegFormer: MiT encoder + all-MLP decode head (Xie et al. 2021), in Flax Linen.

The decode head follows `transformers`' `SegformerDecodeHead`: a Dense per
stage to `decoder_hidden_size`, bilinear upsampling to the stride-4 grid,
concatenation (deepest stage first), a 1x1 conv without bias, batch norm,
ReLU, dropout and a 1x1 classifier. Logits come out at stride 4 (H/4 x W/4,
rounded as the patch embeddings round) and always in float32.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sesam_jax.models import mit

Dtype = Any

# PyTorch BatchNorm2d defaults: eps 1e-5, running stats updated with weight 0.1.
BN_EPS = 1e-5
BN_MOMENTUM = 0.9


def resize_bilinear(x_BHWC: jax.Array, height: int, width: int) -> jax.Array:
  """Bilinear resize with half-pixel centres, like PyTorch's align_corners=False.

  Args:
    x_BHWC: features.
    height, width: output size.

  Returns:
    BxheightxwidthxC in x's dtype. No antialiasing, so downsampling also
    matches `torch.nn.functional.interpolate`.
  """
  if x_BHWC.shape[1:3] == (height, width):
    return x_BHWC
  out = jax.image.resize(x_BHWC, (x_BHWC.shape[0], height, width, x_BHWC.shape[3]),
                         method="linear", antialias=False)
  return out.astype(x_BHWC.dtype)


class SegformerDecodeHead(nn.Module):
  """All-MLP decoder; input the four stage features, output stride-4 logits."""
  num_classes: int
  decoder_hidden_size: int
  dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], train: bool = False) -> jax.Array:
    height, width = features[0].shape[1:3]
    projected = []
    for i, feature in enumerate(features):
      x = nn.Dense(self.decoder_hidden_size, dtype=self.dtype,
                   name=f"linear_projections_{i}")(feature)
      projected.append(resize_bilinear(x, height, width))
    # transformers concatenates the deepest stage first; the fuse weights depend on it.
    x = jnp.concatenate(projected[::-1], axis=-1)
    x = nn.Dense(self.decoder_hidden_size, use_bias=False, dtype=self.dtype,
                 name="linear_fuse")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                     dtype=self.dtype, name="batch_norm")(x)
    x = nn.relu(x)
    # Dropout needs a "dropout" rng; without one a training step is deterministic.
    x = nn.Dropout(self.dropout_rate)(
        x, deterministic=not train or not self.has_rng("dropout"))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    return logits.astype(jnp.float32)


class SegFormer(nn.Module):
  """SegFormer semantic segmentation model.

  Attributes:
    num_classes: number of output classes.
    variant: key of `mit.MIT_VARIANTS` ("B0".."B5", "tiny").
    dtype: compute dtype; parameters and logits stay float32.
    drop_path_rate: encoder stochastic depth (needs a "dropout" rng in training).
    dropout_rate: decode-head dropout before the classifier.
    dwconv_impl: "shift" or "lax" (default: "shift" on CPU, "lax" elsewhere).
  """
  num_classes: int
  variant: str = "B0"
  dtype: Dtype = jnp.float32
  drop_path_rate: float = 0.1
  dropout_rate: float = 0.1
  dwconv_impl: str | None = None

  @nn.compact
  def __call__(self, images_BHWC: jax.Array, train: bool = False) -> jax.Array:
    """Images BxHxWx3 float32 (ImageNet-normalised) -> logits Bx(H/4)x(W/4)xK float32."""
    sizes = mit.MIT_VARIANTS[self.variant]
    impl = self.dwconv_impl or mit.default_dwconv_impl()
    features = mit.MixTransformer(
        sizes["hidden_sizes"], sizes["depths"], sizes["num_heads"],
        drop_path_rate=self.drop_path_rate, dtype=self.dtype, dwconv_impl=impl,
        name="encoder")(images_BHWC, train)
    return SegformerDecodeHead(self.num_classes, sizes["decoder_hidden_size"],
                               dropout_rate=self.dropout_rate, dtype=self.dtype,
                               name="decode_head")(features, train)
