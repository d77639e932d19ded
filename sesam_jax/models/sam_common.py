"""What SAM's Flax modules share: the sizes table (`SAM_VARIANTS`, `SamSpec`), prompt labels,
pixel statistics, and the layer constructors with transformers' epsilons and init.
The model itself: `sesam_jax.models.sam`."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import numpy as np

Dtype = Any

# Encoder sizes of the official checkpoints (segment_anything/build_sam.py), and a tiny
# variant for tests that matches `sam_bridge`'s `random:tiny` (same code paths, 256 pixels).
SAM_VARIANTS: dict[str, dict[str, Any]] = {
    "vit_b": dict(encoder_width=768, encoder_depth=12, encoder_heads=12,
                  global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(encoder_width=1024, encoder_depth=24, encoder_heads=16,
                  global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(encoder_width=1280, encoder_depth=32, encoder_heads=16,
                  global_attn_indexes=(7, 15, 23, 31)),
    "tiny": dict(encoder_width=64, encoder_depth=2, encoder_heads=2, global_attn_indexes=(1,),
                 window_size=4, image_size=256),
}

# Prompt token labels. 0/1: background/foreground point; 2/3: box top-left/bottom-right corner.
LABEL_NOT_A_POINT = -1  # SAM's padding point after points without a box: a learned embedding.
LABEL_PAD = -10  # transformers' padding: a zero token that is still attended.
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
# transformers' SAM layer norms: 1e-6, except the decoder's final one (nn.LayerNorm default).
LN_EPS = 1e-6
FINAL_LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class SamSpec:
  """Sizes of one SAM. The defaults are ViT-B's; every official model shares the rest."""
  encoder_width: int = 768
  encoder_depth: int = 12
  encoder_heads: int = 12
  global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
  window_size: int = 14  # Windowed-attention side in patches.
  image_size: int = 1024  # S: the encoder's square input in pixels.
  patch_size: int = 16
  encoder_mlp_dim: int = 0  # 0: 4 x encoder_width.
  num_pos_feats: int = 128  # Random-Fourier features per sin/cos half.
  prompt_dim: int = 256  # Neck output = prompt and decoder width.
  mask_input_channels: int = 16
  decoder_depth: int = 2
  decoder_heads: int = 8
  decoder_mlp_dim: int = 2048
  iou_head_hidden_dim: int = 256
  iou_head_depth: int = 3
  num_multimask_outputs: int = 3

  @property
  def grid(self) -> int:
    """Side of the image embedding (S / 16)."""
    return self.image_size // self.patch_size

  @property
  def lowres(self) -> int:
    """Side of the low-resolution logits (S / 4)."""
    return 4 * self.grid

  @property
  def mlp_dim(self) -> int:
    return self.encoder_mlp_dim or 4 * self.encoder_width

  def to_dict(self) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "SamSpec":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
      raise ValueError(f"unknown SAM size fields {sorted(unknown)}")
    kw = dict(d)
    if "global_attn_indexes" in kw:
      kw["global_attn_indexes"] = tuple(int(i) for i in kw["global_attn_indexes"])
    return cls(**kw)


def sam_spec(variant: str, **overrides: Any) -> SamSpec:
  """The SamSpec of a SAM_VARIANTS entry, with field overrides."""
  if variant not in SAM_VARIANTS:
    raise ValueError(f"unknown SAM variant {variant!r}; choose one of: {', '.join(SAM_VARIANTS)}.")
  return SamSpec(**{**SAM_VARIANTS[variant], **overrides})


def _layer_norm(name: str, dtype: Dtype, eps: float = LN_EPS) -> nn.LayerNorm:
  # Two-pass variance as torch computes it: SAM's activations have large means.
  return nn.LayerNorm(epsilon=eps, dtype=dtype, use_fast_variance=False, name=name)


_dense_init = nn.initializers.normal(0.02)  # transformers' SAM init (initializer_range).


def _dense(features: int, name: str, dtype: Dtype, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=_dense_init, name=name)
