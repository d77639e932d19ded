"""Flax students by name: SegFormer MiT-B0..B5 and DeepLabV3+ ResNet-50/101.

    model = create_model("segformer_b0", num_classes=19)
    variables = model.init(jax.random.key(0), normalize_images(images_BHWC_uint8))
    logits_BhwK = model.apply(variables, x, train=False)               # eval: running stats
    logits_BhwK, updates = model.apply(variables, x, train=True,
                                       mutable=["batch_stats"])        # train: batch stats
    # optional: rngs={"dropout": key} enables drop path / dropout in training.

Logits are float32 at stride 4 (B x H/4 x W/4 x K) for every model, also when
`dtype=jnp.bfloat16` selects bf16 compute (parameters always float32).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sesam_jax.models.attention import resolve_attention
from sesam_jax.models.deeplabv3plus import DEEPLAB_VARIANTS, DeepLabV3Plus
from sesam_jax.models.mit import MIT_VARIANTS
from sesam_jax.models.segformer import SegFormer

# torchvision / timm ImageNet statistics, on the 0..255 scale.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255.0


def _segformer(variant: str) -> Callable[..., nn.Module]:
  return lambda num_classes, dtype, **kw: SegFormer(num_classes, variant, dtype=dtype, **kw)


def _deeplab(variant: str) -> Callable[..., nn.Module]:
  return lambda num_classes, dtype, **kw: DeepLabV3Plus(num_classes, variant, dtype=dtype, **kw)


# name -> factory(num_classes, dtype, **overrides).
MODELS: dict[str, Callable[..., nn.Module]] = {
    **{f"segformer_{v.lower()}": _segformer(v) for v in MIT_VARIANTS},
    **{f"deeplabv3plus_{v}": _deeplab(v) for v in DEEPLAB_VARIANTS},
}


def create_model(name: str, num_classes: int, *, dtype: Any = jnp.float32,
                 attention: str = "auto", platform: str | None = None,
                 **overrides: Any) -> nn.Module:
  """Builds a student by name.

  Args:
    name: one of MODELS: segformer_b0..segformer_b5, segformer_tiny,
      deeplabv3plus_r50, deeplabv3plus_r101, deeplabv3plus_tiny.
    num_classes: number of output classes.
    dtype: compute dtype (jnp.float32 or jnp.bfloat16); params stay float32.
    attention: SegFormer's attention implementation (`config.attention`; see
      `sesam_jax.models.attention`); "auto" is resolved here, once, for `platform`.
      DeepLabV3+ has no attention and only checks the name.
    platform: the platform "auto" chooses for ("cpu", "gpu", "tpu"); None: this process's
      default backend.
    **overrides: module attributes, e.g. drop_path_rate=0.0, dwconv_impl="lax"
      (SegFormer), output_stride=8 (DeepLabV3+).

  Returns:
    A flax.linen.Module mapping BxHxWx3 float32 images to Bx(H/4)x(W/4)xK
    float32 logits.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}.")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
  attention = resolve_attention(attention, platform=platform, dtype=dtype,
                                field="config.attention")
  if name.startswith("segformer"):
    overrides = {"attention": attention, **overrides}
  return MODELS[name](num_classes, dtype, **overrides)


def normalize_images(images_BHWC: jax.Array | np.ndarray) -> jax.Array:
  """ImageNet normalisation: BxHxWx3 uint8 (RGB, 0..255) -> BxHxWx3 float32."""
  x = jnp.asarray(images_BHWC).astype(jnp.float32)
  return (x - IMAGENET_MEAN) / IMAGENET_STD


__all__ = ["MODELS", "create_model", "normalize_images", "IMAGENET_MEAN", "IMAGENET_STD"]
