"""Rename tables: each PyTorch checkpoint format's keys as Flax paths of the students.

One `rename_<model>_<format>(key, array) -> [(target, array)]` per layout (the formats are
described in `sesam_jax.models.conversion`); `RENAMERS` maps (model family, format) to them.
A target is (collection, path inside it, leaf kind); the array stays in PyTorch layout here and
the engine (`conversion.engine`) turns it into Flax layout from the target's shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

import numpy as np

Path = tuple[str, ...]
# (collection, path inside it, leaf kind): kind "weight" becomes kernel or scale.
Target = tuple[str, Path, str]

FORMATS = ("hf", "mmseg", "torchvision")


# ----------------------------------------------------------------------------
# Renaming: source key -> list of (target, array in PyTorch layout).

_LEAF = {"weight": "weight", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _leaf_target(module_path: Path, leaf: str) -> Target | None:
  if leaf not in _LEAF:
    return None
  collection = "batch_stats" if leaf.startswith("running_") else "params"
  return collection, module_path, _LEAF[leaf]


# transformers' own renaming of hub SegFormer checkpoints (conversion_mapping.py).
_SEGFORMER_HF_LEGACY = [
    (r"encoder\.patch_embeddings\.(\d+)\.", r"stages.\1.patch_embeddings."),
    (r"encoder\.block\.(\d+)\.", r"stages.\1.blocks."),
    (r"encoder\.layer_norm\.(\d+)\.", r"stages.\1.layer_norm."),
    (r"attention\.self\.query\.", "attention.q_proj."),
    (r"attention\.self\.key\.", "attention.k_proj."),
    (r"attention\.self\.value\.", "attention.v_proj."),
    (r"attention\.self\.sr\.", "attention.sequence_reduction.sequence_reduction."),
    (r"attention\.self\.layer_norm\.", "attention.sequence_reduction.layer_norm."),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"mlp\.dense1\.", "mlp.fc1."),
    (r"mlp\.dense2\.", "mlp.fc2."),
    (r"layer_norm_1\.", "layernorm_before."),
    (r"layer_norm_2\.", "layernorm_after."),
    (r"decode_head\.linear_c\.", "decode_head.linear_projections."),
]


def indexed_path(parts: list[str], listed: Collection[str]) -> Path:
  """["stages", "0", "blocks", "1", "mlp"] -> ("stages_0", "blocks_1", "mlp")."""
  out: list[str] = []
  i = 0
  while i < len(parts):
    if parts[i] in listed and i + 1 < len(parts) and parts[i + 1].isdigit():
      out.append(f"{parts[i]}_{parts[i + 1]}")
      i += 2
    else:
      out.append(parts[i])
      i += 1
  return tuple(out)


def rename_segformer_hf(key: str, array: np.ndarray) -> list[tuple[Target, np.ndarray]]:
  """One `transformers` SegFormer key -> Flax targets (empty when it maps nowhere)."""
  for pattern, repl in _SEGFORMER_HF_LEGACY:
    key = re.sub(pattern, repl, key)
  key = key.removeprefix("segformer.")
  parts = key.split(".")
  if parts[0] == "stages":
    root = ("encoder",)
  elif parts[0] == "decode_head":
    root, parts = ("decode_head",), parts[1:]
  else:
    return []  # e.g. an image-classification head.
  # The Mix-FFN's dwconv wraps a Conv2d called dwconv; proj wraps the head's Linear.
  key_path = ".".join(parts).replace("mlp.dwconv.dwconv.", "mlp.dwconv.")
  key_path = re.sub(r"linear_projections\.(\d+)\.proj\.", r"linear_projections.\1.", key_path)
  parts = key_path.split(".")
  module = indexed_path(parts[:-1], {"stages", "blocks", "linear_projections"})
  target = _leaf_target(root + module, parts[-1])
  return [(target, array)] if target else []


def rename_segformer_mmseg(key: str, array: np.ndarray) -> list[tuple[Target, np.ndarray]]:
  """One original-SegFormer/mmseg MiT key (`mit_b0.pth`) -> Flax targets."""
  key = key.removeprefix("backbone.")
  parts = key.split(".")
  leaf = parts[-1]
  if m := re.fullmatch(r"patch_embed(\d)", parts[0]):
    stage = f"stages_{int(m[1]) - 1}"
    sub = {"proj": "proj", "norm": "layer_norm"}.get(parts[1])
    module = ("encoder", stage, "patch_embeddings", sub) if sub else None
  elif m := re.fullmatch(r"norm(\d)", parts[0]):
    module = ("encoder", f"stages_{int(m[1]) - 1}", "layer_norm")
  elif m := re.fullmatch(r"block(\d)", parts[0]):
    block = ("encoder", f"stages_{int(m[1]) - 1}", f"blocks_{parts[1]}")
    inner = ".".join(parts[2:-1])
    if inner == "attn.kv":
      # One Linear holds keys then values: split into k_proj and v_proj.
      k, v = np.split(array, 2, axis=0)
      return [(("params", block + ("attention", "k_proj"), _LEAF[leaf]), k),
              (("params", block + ("attention", "v_proj"), _LEAF[leaf]), v)]
    names = {"norm1": ("layernorm_before",), "norm2": ("layernorm_after",),
             "attn.q": ("attention", "q_proj"), "attn.proj": ("attention", "o_proj"),
             "attn.sr": ("attention", "sequence_reduction", "sequence_reduction"),
             "attn.norm": ("attention", "sequence_reduction", "layer_norm"),
             "mlp.fc1": ("mlp", "fc1"), "mlp.fc2": ("mlp", "fc2"),
             "mlp.dwconv.dwconv": ("mlp", "dwconv")}
    module = block + names[inner] if inner in names else None
  else:
    module = None  # e.g. the ImageNet head, or a decode head in a full checkpoint.
  target = _leaf_target(module, leaf) if module else None
  return [(target, array)] if target else []


def rename_resnet_hf(key: str, array: np.ndarray) -> list[tuple[Target, np.ndarray]]:
  """One `transformers` ResNetModel key -> Flax ResNet targets."""
  key = key.removeprefix("resnet.")
  parts = key.split(".")
  if parts[:2] == ["embedder", "embedder"]:
    module = ("embedder",) + tuple(parts[2:-1])
  elif parts[:2] == ["encoder", "stages"]:
    module = indexed_path(parts[1:-1], {"stages", "layers", "layer"})
  else:
    return []
  target = _leaf_target(module, parts[-1])
  return [(target, array)] if target else []


def rename_resnet_torchvision(key: str, array: np.ndarray) -> list[tuple[Target, np.ndarray]]:
  """One torchvision ResNet key -> Flax ResNet targets."""
  parts = key.split(".")
  if parts[0] in ("conv1", "bn1"):
    module = ("embedder", "convolution" if parts[0] == "conv1" else "normalization")
  elif m := re.fullmatch(r"layer(\d)", parts[0]):
    block = (f"stages_{int(m[1]) - 1}", f"layers_{parts[1]}")
    if c := re.fullmatch(r"(conv|bn)(\d)", parts[2]):
      kind = "convolution" if c[1] == "conv" else "normalization"
      module = block + (f"layer_{int(c[2]) - 1}", kind)
    elif parts[2] == "downsample":
      module = block + ("shortcut", "convolution" if parts[3] == "0" else "normalization")
    else:
      return []
  else:
    return []  # fc.*
  target = _leaf_target(module, parts[-1])
  return [(target, array)] if target else []


RENAMERS: dict[tuple[str, str], Callable[[str, np.ndarray], list]] = {
    ("segformer", "hf"): rename_segformer_hf,
    ("segformer", "mmseg"): rename_segformer_mmseg,
    ("resnet", "hf"): rename_resnet_hf,
    ("resnet", "torchvision"): rename_resnet_torchvision,
}


# ----------------------------------------------------------------------------
# Layout and checking against the expected tree.
