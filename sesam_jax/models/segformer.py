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


class _DenseParams(nn.Module):
  """The parameters of an nn.Dense (same names, shapes, initialisers), used by hand."""
  in_features: int
  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array | None]:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.in_features, self.features), jnp.float32)
    bias = (self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            if self.use_bias else None)
    return kernel, bias


class SegformerDecodeHead(nn.Module):
  """All-MLP decoder; input the four stage features, output stride-4 logits.

  With `fold=True` (default) the per-stage projection and that stage's slice of
  the 1x1 fuse are multiplied into one matrix before they touch any pixel:
  projection, bilinear upsampling (weights summing to 1) and the fuse are all
  linear, so up(x @ P + b) @ W == up(x @ (P @ W) + b @ W). The result is the
  same function of the same parameters (equal up to float rounding), but the
  (4 * D) -> D matmul over every stride-4 pixel, the head's largest, is gone.
  """
  num_classes: int
  decoder_hidden_size: int
  dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32
  fold: bool = True

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], train: bool = False,
               return_features: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Stage features -> stride-4 logits (and, with `return_features`, the fused feature
    BxhxwxD after batch norm and ReLU, before dropout and the classifier, in `dtype`)."""
    height, width = features[0].shape[1:3]
    hidden = self.decoder_hidden_size
    projections = [_DenseParams(f.shape[-1], hidden, name=f"linear_projections_{i}")()
                   for i, f in enumerate(features)]
    fuse, _ = _DenseParams(hidden * len(features), hidden, use_bias=False, name="linear_fuse")()
    if self.fold:
      x = None
      for i, (feature, (kernel, bias)) in enumerate(zip(features, projections)):
        # transformers concatenates the deepest stage first: stage i is fuse block n-1-i.
        block = fuse[(len(features) - 1 - i) * hidden:(len(features) - i) * hidden]
        y = (feature.astype(self.dtype) @ (kernel @ block).astype(self.dtype)
             + (bias @ block).astype(self.dtype))
        y = resize_bilinear(y, height, width)
        x = y if x is None else x + y
    else:
      projected = [resize_bilinear(f.astype(self.dtype) @ k.astype(self.dtype)
                                   + b.astype(self.dtype), height, width)
                   for f, (k, b) in zip(features, projections)]
      x = jnp.concatenate(projected[::-1], axis=-1) @ fuse.astype(self.dtype)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                     dtype=self.dtype, name="batch_norm")(x)
    x = fused = nn.relu(x)
    # Dropout needs a "dropout" rng; without one a training step is deterministic.
    x = nn.Dropout(self.dropout_rate)(
        x, deterministic=not train or not self.has_rng("dropout"))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    if return_features:
      return logits.astype(jnp.float32), fused
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
    fold_decoder: fold the head's projections into its fuse (see SegformerDecodeHead).
    attention: attention implementation, one of `sesam_jax.models.attention.IMPLEMENTATIONS`
      (chunked, full, dot_product, cudnn); `create_model` resolves its "auto" (chunked on
      CPU, cudnn / dot_product on GPU) when it builds the model.
    query_chunk: queries per chunk of the "chunked" attention.
  """
  num_classes: int
  variant: str = "B0"
  dtype: Dtype = jnp.float32
  drop_path_rate: float = 0.1
  dropout_rate: float = 0.1
  dwconv_impl: str | None = None
  fold_decoder: bool = True
  attention: str = "full"
  query_chunk: int = mit.QUERY_CHUNK

  @nn.compact
  def __call__(self, images_BHWC: jax.Array, train: bool = False,
               return_features: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Images BxHxWx3 float32 (ImageNet-normalised) -> logits Bx(H/4)x(W/4)xK float32.

    With `return_features`, (logits, the decode head's fused feature Bx(H/4)x(W/4)xD before
    its classifier): AGMM's feature (`sesam_jax.train.agmm`). Parameters are the same.
    """
    sizes = mit.MIT_VARIANTS[self.variant]
    impl = self.dwconv_impl or mit.default_dwconv_impl()
    features = mit.MixTransformer(
        sizes["hidden_sizes"], sizes["depths"], sizes["num_heads"],
        drop_path_rate=self.drop_path_rate, dtype=self.dtype, dwconv_impl=impl,
        attention=self.attention, query_chunk=self.query_chunk, name="encoder")(images_BHWC, train)
    return SegformerDecodeHead(self.num_classes, sizes["decoder_hidden_size"],
                               dropout_rate=self.dropout_rate, dtype=self.dtype,
                               fold=self.fold_decoder, name="decode_head")(
                                   features, train, return_features)
