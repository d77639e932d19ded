"""The students' ImageNet weights of `sesam reproduce --weights DIR`, recognised by content.

DIR holds the weights as users download them, one entry per backbone, under any name:

  a folder of `transformers` files   config.json (model_type segformer or resnet; depths and
                                     hidden_sizes tell the variant) + model.safetensors or
                                     pytorch_model.bin: `nvidia/mit-b0` .. `mit-b5`,
                                     `microsoft/resnet-101`
  a state-dict file                  .pth / .pt / .bin / .safetensors in a layout `sesam convert`
                                     reads (hf, mmseg, torchvision): key names tell the format,
                                     block counts and widths the variant (torchvision's
                                     `resnet101-*.pth`, mmseg's `mit_b0.pth`)
  a `sesam convert` output           .msgpack: its meta names the model; used as it is

Each recognised entry names the student it initialises (`segformer_b0`, `deeplabv3plus_r101`,
...: `config.model`). `prepare()` converts each once into `CACHE/<model>.msgpack` (written
atomically by `conversion.convert_file`) and reuses that file while it is newer than its source.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from sesam_jax import report
from sesam_jax.models import conversion, mit, resnet

STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONVERTED_SUFFIX = ".msgpack"
# Where each paper student's weights are published (for messages and docs/reproduce.md).
SOURCES = {"segformer": "the transformers files of nvidia/mit-b0 (mit-b1..b5 for larger MiTs)",
           "deeplabv3plus": "torchvision's resnet101 ImageNet file (resnet101-*.pth) or "
                            "microsoft/resnet-101"}


@dataclasses.dataclass(frozen=True)
class Weights:
  """One recognised entry of the weights folder.

  Attributes:
    model: the student it initialises (`config.model`).
    path: the file to convert (or the converted file itself).
    fmt: conversion format ("hf", "mmseg", "torchvision"), or "" for a converted file.
  """
  model: str
  path: str
  fmt: str

  @property
  def converted(self) -> bool:
    return not self.fmt


def _mit_model(depths: tuple, widths: tuple) -> str | None:
  for name, sizes in mit.MIT_VARIANTS.items():
    if tuple(sizes["depths"]) == depths and tuple(sizes["hidden_sizes"]) == widths:
      return f"segformer_{name.lower()}"
  return None


def _resnet_model(depths: tuple) -> str | None:
  for name, sizes in resnet.RESNET_VARIANTS.items():
    if tuple(sizes["depths"]) == depths:
      return f"deeplabv3plus_{'r' + name if name != 'tiny' else 'tiny'}"
  return None


def _from_hf_folder(folder: pathlib.Path) -> Weights | None:
  """A `transformers` folder: its config.json tells the student, its weights file is converted."""
  files = [folder / name for name in HF_WEIGHT_FILES if (folder / name).is_file()]
  if not (folder / "config.json").is_file() or not files:
    return None
  config = json.loads((folder / "config.json").read_text())
  kind = config.get("model_type")
  depths = tuple(config.get("depths") or ())
  if kind == "segformer":
    model = _mit_model(depths, tuple(config.get("hidden_sizes") or ()))
  elif kind == "resnet":
    model = _resnet_model(depths)
  else:
    model = None
  return Weights(model, str(files[0]), "hf") if model else None


def _keys(path: pathlib.Path) -> list[str]:
  if path.suffix == ".safetensors":
    from safetensors import safe_open  # Keys only: no tensor is read.
    with safe_open(str(path), framework="numpy") as f:
      return list(f.keys())
  return list(conversion.read_state_dict(path))


def state_dict_format(keys: list[str]) -> str | None:
  """The `sesam convert` format of a state dict from its key names, or None."""
  names = [k.removeprefix("backbone.") for k in keys]
  if any(k.startswith("patch_embed1.") for k in names):
    return "mmseg"
  if any("patch_embeddings" in k or k.startswith(("encoder.block.", "segformer.")) or
         "embedder." in k for k in keys):
    return "hf"
  if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
    return "torchvision"
  return None


def _from_file(path: pathlib.Path) -> Weights | None:
  """A state-dict file (format and variant from its keys) or a converted file (its meta)."""
  if path.suffix == CONVERTED_SUFFIX:
    try:
      _, meta = conversion.load_converted(path)
    except ValueError:
      return None
    return Weights(meta["model"], str(path), "") if meta.get("model") else None
  if path.suffix not in STATE_DICT_SUFFIXES:
    return None
  try:
    keys = _keys(path)
  except (ValueError, OSError) as e:
    report.log(f"--weights: {path} is not readable as a state dict ({e}); skipped")
    return None
  fmt = state_dict_format(keys)
  if fmt is None:
    return None
  try:
    # infer_model reads names and shapes; the key list with shapes is in the file.
    model = conversion.infer_model(_shapes(path, keys), fmt)
  except ValueError:
    return None
  return Weights(model, str(path), fmt)


class _Shape:
  """A stand-in tensor: only `.shape` is read by `infer_model`."""

  def __init__(self, shape):
    self.shape = tuple(shape)


def _shapes(path: pathlib.Path, keys: list[str]) -> dict:
  if path.suffix == ".safetensors":
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
      return {k: _Shape(f.get_slice(k).get_shape()) for k in keys}
  return conversion.read_state_dict(path)


def scan(folder: str | os.PathLike) -> tuple[dict[str, Weights], list[str]]:
  """The student weights under `folder`, one entry per backbone, recognised by content.

  Returns:
    ({model: Weights}, notes: entries not recognised or recognised twice, one line each).

  Raises:
    FileNotFoundError: `folder` is not a folder.
  """
  root = pathlib.Path(folder)
  if not root.is_dir():
    raise FileNotFoundError(f"--weights {folder}: no such folder; give the folder holding the "
                            "students' ImageNet weights (docs/reproduce.md says which).")
  found: dict[str, Weights] = {}
  notes = []
  entries = sorted(root.iterdir())
  for entry in entries:
    weights = _from_hf_folder(entry) if entry.is_dir() else _from_file(entry)
    if weights is None:
      if not entry.name.startswith("."):
        notes.append(f"--weights: {entry} is no student weights this project reads; ignored")
      continue
    previous = found.get(weights.model)
    if previous and (previous.converted or not weights.converted):
      notes.append(f"--weights: {entry} is also {weights.model}; {previous.path} is used")
      continue
    found[weights.model] = weights  # A converted file wins over its source.
  return found, notes


def cache_path(weights: Weights, cache_dir: str | os.PathLike) -> str:
  """Where the converted file of `weights` is (itself when it is already converted)."""
  if weights.converted:
    return weights.path
  return os.path.join(cache_dir, f"{weights.model}{CONVERTED_SUFFIX}")


def _fresh(weights: Weights, dst: str) -> bool:
  """`dst` was converted from `weights.path` after its last change."""
  if not os.path.isfile(dst) or os.path.getmtime(dst) < os.path.getmtime(weights.path):
    return False
  try:
    _, meta = conversion.load_converted(dst)
  except ValueError:
    return False
  return meta.get("source") == str(weights.path) and meta.get("model") == weights.model


def prepare(found: dict[str, Weights], models: set[str], cache_dir: str | os.PathLike
            ) -> dict[str, str]:
  """Converts the weights of `models` once (reused while newer than their source).

  Returns:
    {model: converted file}.
  """
  out = {}
  for model in sorted(models):
    weights = found[model]
    dst = cache_path(weights, cache_dir)
    if not weights.converted and not _fresh(weights, dst):
      report.log(f"--weights: converting {weights.path} ({weights.fmt}) for {model} -> {dst}")
      conversion.convert_file(weights.path, dst, weights.fmt, model=model)
    out[model] = dst
  return out
