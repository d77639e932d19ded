"""Official `sam_vit_{b,l,h}_*.pth` state dicts -> `transformers` SamModel.

A pure function over key names and arrays (STYLE 5); parity with the official
modeling code is checked in tests/sam_bridge/test_parity.py.
"""

from __future__ import annotations

import re
from typing import Any

# Official ViT sizes: embed dim -> (depth, heads, global attention blocks).
_VIT_BY_DIM = {768: (12, 12, (2, 5, 8, 11)), 1024: (24, 16, (5, 11, 17, 23)),
               1280: (32, 16, (7, 15, 23, 31))}

_RULES = [
    (r"^image_encoder\.", "vision_encoder."),
    (r"^vision_encoder\.blocks\.", "vision_encoder.layers."),
    (r"patch_embed\.proj\.", "patch_embed.projection."),
    (r"^(vision_encoder\.layers\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
    (r"neck\.0\.", "neck.conv1."), (r"neck\.1\.", "neck.layer_norm1."),
    (r"neck\.2\.", "neck.conv2."), (r"neck\.3\.", "neck.layer_norm2."),
    (r"prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),
    (r"mask_downscaling\.0\.", "mask_embed.conv1."), (r"mask_downscaling\.1\.", "mask_embed.layer_norm1."),
    (r"mask_downscaling\.3\.", "mask_embed.conv2."), (r"mask_downscaling\.4\.", "mask_embed.layer_norm2."),
    (r"mask_downscaling\.6\.", "mask_embed.conv3."),
    (r"(mask_decoder\.transformer\.layers\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
    (r"norm_final_attn\.", "layer_norm_final_attn."),
    (r"output_upscaling\.0\.", "upscale_conv1."), (r"output_upscaling\.1\.", "upscale_layer_norm."),
    (r"output_upscaling\.3\.", "upscale_conv2."),
]
_PE = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_MLP = re.compile(r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.(\d+)\.(.*)$")


def convert_official_sam(state_dict: dict[str, Any], *, iou_head_depth: int = 3) -> dict[str, Any]:
  """Renames an official SAM state dict to `transformers` SamModel names.

  Args:
    state_dict: official key -> tensor/array (as in sam_vit_b_01ec64.pth).
    iou_head_depth: layers of the decoder MLPs (3 in every official model).

  Returns:
    transformers key -> the same tensor/array (values are not copied).
  """
  out = {}
  for key, value in state_dict.items():
    if key == _PE:
      # One Gaussian matrix, shared by the image-wide and the prompt positional encodings.
      out["shared_image_embedding.positional_embedding"] = value
      out["prompt_encoder.shared_embedding.positional_embedding"] = value
      continue
    new = key
    for pattern, repl in _RULES:
      new = re.sub(pattern, repl, new)
    m = _MLP.match(new)
    if m:
      i = int(m.group(2))
      layer = ("proj_in" if i == 0 else "proj_out" if i == iou_head_depth - 1 else f"layers.{i - 1}")
      new = f"{m.group(1)}.{layer}.{m.group(3)}"
    out[new] = value
  return out


def sam_config_from_official(state_dict: dict[str, Any], *, vision_heads: int | None = None,
                             decoder_heads: int = 8, patch_size: int = 16):
  """A `transformers.SamConfig` matching an official state dict's shapes.

  Args:
    state_dict: official key -> tensor.
    vision_heads: encoder heads; inferred for the official ViT-B/L/H widths.
    decoder_heads: mask-decoder heads (8 in every official model; not in the weights).
    patch_size: ViT patch size (16 in every official model).

  Returns:
    SamConfig.
  """
  from transformers import SamConfig
  dim = state_dict["image_encoder.patch_embed.proj.weight"].shape[0]
  blocks = sorted({int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks.")})
  grid = state_dict["image_encoder.pos_embed"].shape[1]
  global_idx = [b for b in blocks
                if state_dict[f"image_encoder.blocks.{b}.attn.rel_pos_h"].shape[0] == 2 * grid - 1]
  window = (state_dict[f"image_encoder.blocks.{blocks[0]}.attn.rel_pos_h"].shape[0] + 1) // 2
  if vision_heads is None:
    if dim not in _VIT_BY_DIM:
      raise ValueError(f"cannot infer encoder heads for width {dim}; pass vision_heads")
    vision_heads = _VIT_BY_DIM[dim][1]
  out_ch = state_dict["image_encoder.neck.0.weight"].shape[0]
  image_size = grid * patch_size
  return SamConfig(
      vision_config=dict(hidden_size=dim, num_hidden_layers=len(blocks), num_attention_heads=vision_heads,
                         global_attn_indexes=global_idx, window_size=window, image_size=image_size,
                         patch_size=patch_size, output_channels=out_ch,
                         num_pos_feats=state_dict[_PE].shape[1]),
      prompt_encoder_config=dict(hidden_size=out_ch, image_size=image_size, patch_size=patch_size),
      mask_decoder_config=dict(
          hidden_size=out_ch, num_attention_heads=decoder_heads,
          mlp_dim=state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
          iou_head_hidden_dim=state_dict["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]))
