"""A predictor exported by `sesam predict --export` (`sesam_jax.evaluate.export`), loaded.

Loading needs jax, numpy, Pillow and flax's msgpack reader only, neither the training config
nor any training code (this module imports nothing of sesam_jax):

    from sesam_jax.evaluate.predictor import load_predictor
    predictor = load_predictor("exported/")
    labels_HW = predictor(image_HW3_uint8)  # or BxHxWx3; any size (resized to the export's)
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np
from flax import serialization
from PIL import Image

# The export's files (see `sesam_jax.evaluate.export`) and its format tag.
FORMAT = "sesam-jax predictor 1"
FUNCTION_FILE = "predict.jaxexport"
WEIGHTS_FILE = "variables.msgpack"
META_FILE = "predictor.json"


class Predictor:
  """A loaded export: call it on images to get class-id label maps.

  Attributes:
    input_hw: (H, W) the exported function takes; other sizes are resized to it (bilinear)
      and their labels back (nearest).
    class_names: one name per class id.
    colors: Cx3 uint8 colour per class id.
    meta: the whole predictor.json.
  """

  def __init__(self, exported: Any, variables: Any, meta: dict[str, Any]) -> None:
    self._call = jax.jit(exported.call)
    self._variables = variables
    self.meta = meta
    self.input_hw = tuple(meta["input"]["shape"][1:3])
    self.class_names = tuple(meta["class_names"])
    self.colors = np.asarray(meta["colors"], np.uint8)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """HxWx3 (or BxHxWx3) uint8 RGB -> HxW (or BxHxW) uint8 class ids at the images' size."""
    x = np.asarray(images)
    single = x.ndim == 3
    x = x[None] if single else x
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
      raise ValueError(f"images must be HxWx3 or BxHxWx3 uint8 RGB, got {x.shape} {x.dtype}.")
    hw = x.shape[1:3]
    if hw != self.input_hw:
      x = np.stack([_resize(im, self.input_hw, nearest=False) for im in x])
    labels = np.asarray(self._call(self._variables, x))
    if hw != self.input_hw:
      labels = np.stack([_resize(lab, hw, nearest=True) for lab in labels])
    return labels[0] if single else labels

  def colorize(self, label: np.ndarray) -> np.ndarray:
    """HxW class ids -> HxWx3 uint8 colours (255 = unlabeled: white)."""
    palette = np.full((256, 3), 255, np.uint8)
    palette[:len(self.colors)] = self.colors
    return palette[label]


def _resize(array: np.ndarray, hw: tuple[int, int], *, nearest: bool) -> np.ndarray:
  method = Image.NEAREST if nearest else Image.BILINEAR
  return np.asarray(Image.fromarray(array).resize((hw[1], hw[0]), method))


def load_predictor(path: str | os.PathLike) -> Predictor:
  """Loads an export written by `sesam predict --export` (jax, numpy and flax msgpack only).

  Raises:
    FileNotFoundError: `path` holds no complete export.
  """
  folder = pathlib.Path(path)
  meta_path = folder / META_FILE
  if not meta_path.is_file():
    raise FileNotFoundError(f"{meta_path} not found: {folder} is not a complete export; write "
                            "one with `sesam predict --workdir W --export DIR`.")
  meta = json.loads(meta_path.read_text())
  if meta.get("format") != FORMAT:
    raise ValueError(f"{meta_path}: format {meta.get('format')!r}, this reader knows {FORMAT!r}.")
  exported = jax.export.deserialize(bytearray((folder / meta["function"]).read_bytes()))
  variables = serialization.msgpack_restore((folder / meta["variables"]).read_bytes())
  return Predictor(exported, variables, meta)
