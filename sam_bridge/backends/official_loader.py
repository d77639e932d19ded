"""Builds the official Segment Anything architecture without its package `__init__`.

`segment_anything/__init__.py` imports `predictor.py`, which imports torchvision;
torchvision has no CPU wheel for the pinned torch here. The modeling modules
themselves need only torch, and import each other relatively, so they are loaded
as a package of their own (`_sam_official_modeling`) with importlib machinery.
Used by the parity test and by the `segment_anything` backend on hosts without
torchvision.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import sys
from types import ModuleType

_PKG = "_sam_official_modeling"

# Official ViT sizes (segment_anything/build_sam.py).
OFFICIAL_VARIANTS = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    # Not an official size: a tiny variant for fast parity tests.
    "tiny": dict(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,)),
}


def segment_anything_dir() -> pathlib.Path:
  """Where the installed `segment_anything` package lives (found without importing it)."""
  spec = importlib.util.find_spec("segment_anything")
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
        "segment_anything is not installed: `pip install segment-anything` (the official SAM code).")
  return pathlib.Path(list(spec.submodule_search_locations)[0])


def load_modeling() -> ModuleType:
  """Imports `segment_anything/modeling` as the package `_sam_official_modeling`.

  Returns:
    The package module; it exposes Sam, ImageEncoderViT, PromptEncoder, MaskDecoder,
    TwoWayTransformer exactly as the official code defines them.
  """
  if _PKG in sys.modules:
    return sys.modules[_PKG]
  modeling_dir = segment_anything_dir() / "modeling"
  spec = importlib.util.spec_from_file_location(
      _PKG, modeling_dir / "__init__.py", submodule_search_locations=[str(modeling_dir)])
  module = importlib.util.module_from_spec(spec)
  sys.modules[_PKG] = module
  try:
    spec.loader.exec_module(module)  # Relative imports resolve inside _PKG.
  except Exception:
    del sys.modules[_PKG]
    raise
  return module


def build_official_sam(variant: str = "vit_b", *, img_size: int = 1024, patch_size: int = 16,
                       prompt_embed_dim: int = 256, window_size: int = 14,
                       decoder_mlp_dim: int = 2048, decoder_heads: int = 8,
                       iou_head_hidden_dim: int = 256):
  """The official `Sam` module (random weights), as `build_sam.py:_build_sam` makes it.

  Args:
    variant: a key of OFFICIAL_VARIANTS.
    img_size, patch_size, prompt_embed_dim, window_size, decoder_mlp_dim, decoder_heads,
      iou_head_hidden_dim: the official defaults; tests shrink them.

  Returns:
    `Sam` (torch.nn.Module) in eval mode.
  """

  import torch
  m = load_modeling()
  v = OFFICIAL_VARIANTS[variant]
  emb = img_size // patch_size
  sam = m.Sam(
      image_encoder=m.ImageEncoderViT(
          depth=v["depth"], embed_dim=v["embed_dim"], img_size=img_size, mlp_ratio=4,
          norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6), num_heads=v["num_heads"],
          patch_size=patch_size, qkv_bias=True, use_rel_pos=True,
          global_attn_indexes=tuple(v["global_attn_indexes"]), window_size=window_size,
          out_chans=prompt_embed_dim),
      prompt_encoder=m.PromptEncoder(
          embed_dim=prompt_embed_dim, image_embedding_size=(emb, emb),
          input_image_size=(img_size, img_size), mask_in_chans=16),
      mask_decoder=m.MaskDecoder(
          num_multimask_outputs=3,
          transformer=m.TwoWayTransformer(depth=2, embedding_dim=prompt_embed_dim,
                                          mlp_dim=decoder_mlp_dim, num_heads=decoder_heads),
          transformer_dim=prompt_embed_dim, iou_head_depth=3,
          iou_head_hidden_dim=iou_head_hidden_dim),
      pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
  return sam.eval()
