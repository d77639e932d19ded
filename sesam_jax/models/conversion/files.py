"""Conversion files: reading PyTorch checkpoints, writing and reading `sesam convert` output,
and laying a converted checkpoint over a student's fresh variables (configs' `init`).

Checkpoints written by `save_converted` are msgpack files
(`flax.serialization.msgpack_serialize`) holding {"meta": {...}, "variables": {"params": ...,
"batch_stats": ...}}. torch is imported only by `read_state_dict`, for .pth/.bin files.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import serialization

from sesam_jax.atomic import write_atomic
from sesam_jax.models.conversion.engine import (Conversion, convert_checkpoint, tree_get,
                                                tree_leaves, tree_set)
from sesam_jax.models.conversion.tables import FORMATS


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch checkpoint (.pth/.pt/.bin via torch, .safetensors without).

  Nested {"state_dict": ...} / {"model": ...} wrappers (mmseg, classification
  trainers) are unwrapped; bf16/fp16 tensors become float32.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: the file holds no tensor dict.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such checkpoint file.")
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file
    return {k: np.asarray(v) for k, v in load_file(str(path)).items()}
  import torch  # Only here: the training path never imports torch.
  obj = torch.load(str(path), map_location="cpu", weights_only=True)
  for wrapper in ("state_dict", "model"):
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
    raise ValueError(f"{path}: expected a dict of tensors (a state dict), got {type(obj).__name__}.")
  return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in obj.items()}


def save_converted(conversion: Conversion, path: str | os.PathLike, *, source: str = "",
                   fmt: str = "", extra_meta: dict | None = None) -> None:
  """Writes {"meta", "variables"} as msgpack, atomically (temp file, then rename).

  `extra_meta` adds fields to meta (e.g. the SAM converter's "sam_spec").
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  payload = {"meta": {"model": conversion.model, "scope": conversion.scope,
                      "source": str(source), "format": fmt, **(extra_meta or {})},
             "variables": conversion.variables}
  write_atomic(path, serialization.msgpack_serialize(payload))


def load_converted(path: str | os.PathLike) -> tuple[dict, dict]:
  """Reads a file written by `save_converted` -> (variables, meta)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such converted checkpoint (make one with `sesam convert`).")
  try:
    payload = serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # msgpack raises several types for corrupt files.
    raise ValueError(f"{path}: not a `sesam convert` checkpoint ({e}).") from e
  if not isinstance(payload, dict) or "variables" not in payload:
    raise ValueError(f"{path}: not a `sesam convert` checkpoint (no 'variables').")
  return payload["variables"], payload.get("meta", {})


def merge_pretrained(variables: Any, pretrained: dict, *,
                     skip_mismatched: bool = False) -> tuple[dict, list[str]]:
  """Lays converted leaves over initialised variables (configs' `init`).

  Args:
    variables: {"params": ..., "batch_stats": ...} from model.init.
    pretrained: variables of a converted checkpoint (a subtree is fine).
    skip_mismatched: keep the initialised leaf where shapes differ (e.g. a
      classifier for another number of classes) instead of failing.

  Returns:
    (new variables as nested dicts, paths that were skipped).

  Raises:
    ValueError: naming a pretrained path missing from the model, or of another
      shape (unless skip_mismatched).
  """
  out = _to_dicts(variables)
  skipped = []
  for collection, subtree in pretrained.items():
    for path, value in tree_leaves(subtree):
      name = "/".join((collection,) + path)
      current = tree_get(out.get(collection, {}), path)
      if current is None:
        raise ValueError(f"pretrained leaf {name} does not exist in this model: the checkpoint "
                         "was converted for another model.")
      if tuple(current.shape) != tuple(np.shape(value)):
        if skip_mismatched:
          skipped.append(name)
          continue
        raise ValueError(f"pretrained leaf {name} has shape {np.shape(value)}, the model wants "
                         f"{tuple(current.shape)} (another num_classes? convert encoder-only).")
      tree_set(out[collection], path, jnp.asarray(value, current.dtype))
  return out, skipped


def _to_dicts(tree: Any) -> Any:
  if hasattr(tree, "items"):
    return {k: _to_dicts(v) for k, v in tree.items()}
  return tree


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, fmt: str, *,
                 model: str | None = None) -> dict:
  """`sesam convert`: reads a PyTorch checkpoint, converts it, writes `dst`.

  Args:
    src: .pth/.pt/.bin/.safetensors state dict.
    dst: output msgpack file (see `save_converted`); written only on success.
    fmt: "hf", "mmseg" or "torchvision".
    model: target student name; inferred when None.

  Returns:
    {"model", "scope", "dst", "num_loaded", "loaded" (source key -> Flax
    path), "not_loaded" (source keys left out)}.
  """
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}.")
  try:
    conversion = convert_checkpoint(read_state_dict(src), fmt, model=model)
  except ValueError as e:
    raise ValueError(f"{src}: {e}") from e
  save_converted(conversion, dst, source=str(src), fmt=fmt)
  return {"model": conversion.model, "scope": conversion.scope or "full", "dst": str(dst),
          "num_loaded": len(conversion.loaded), "loaded": conversion.loaded,
          "not_loaded": conversion.not_loaded}


def init_from_converted(variables: Any, path: str | os.PathLike, *,
                        skip_mismatched: bool = False) -> tuple[dict, list[str]]:
  """Configs' `init`: lays a `sesam convert` checkpoint over initialised variables.

  Args:
    variables: {"params": ..., "batch_stats": ...} from model.init.
    path: file written by `sesam convert` (encoder-only or full).
    skip_mismatched: keep initialised leaves whose shapes differ (e.g. the
      classifier of a checkpoint trained for another number of classes).

  Returns:
    (variables, skipped paths).
  """
  pretrained, _ = load_converted(path)
  try:
    return merge_pretrained(variables, pretrained, skip_mismatched=skip_mismatched)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e
