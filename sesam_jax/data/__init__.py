"""Datasets (sources), weak labels and the host input pipeline.

`get_source(name, data_dir=..., split=...)` returns a random-access source:
`len(source)`, `source[i] -> {"id", "image": HxWx3 uint8, "label": HxW uint8}`
(255 = ignore), `source.info` (DatasetInfo) and `source.ids`.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from sesam_jax.data.base import IGNORE_INDEX, DatasetInfo

# name -> module with make_source(data_dir, split, **kw); imported only when used.
SOURCES: dict[str, str] = {
    "camvid": "sesam_jax.data.camvid",
    "cityscapes": "sesam_jax.data.cityscapes",
    "ade20k": "sesam_jax.data.ade20k",
    "voc": "sesam_jax.data.voc",
    "custom": "sesam_jax.data.custom",
    "synthetic": "sesam_jax.data.synthetic",
    "tfds_cityscapes": "sesam_jax.data.tfds_cityscapes",
}


def get_source(name: str, *, data_dir: str | os.PathLike | None = None, split: str = "train",
               num_images: int = 0, size: tuple[int, int] = (0, 0), **kw: Any):
  """A random-access dataset source.

  Args:
    name: one of SOURCES ("camvid", "cityscapes", "ade20k", "voc", "custom",
      "synthetic", "tfds_cityscapes").
    data_dir: dataset root (not needed for "synthetic").
    split: split name ("train", "val", ...).
    num_images, size: generated sources only ("synthetic"): scene count and (H, W);
      0 / (0, 0) take the source's defaults.
    **kw: source options, e.g. synthetic `seed`; custom `image_dir`, `label_dir`,
      `classes`; voc `augmented`.

  Returns:
    The source (see module docstring).
  """
  if name not in SOURCES:
    raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(SOURCES)}.")
  module = importlib.import_module(SOURCES[name])
  if getattr(module, "GENERATED", False):
    return module.make_source(data_dir or None, split, num_images=num_images, size=size, **kw)
  if num_images or tuple(size) != (0, 0):
    raise ValueError(f"dataset {name!r} is read from files: the scene count and size apply to "
                     "the generated `synthetic` dataset only (use dataset.max_train_images or "
                     "eval.max_images to train or evaluate on fewer images).")
  if not data_dir and getattr(module, "NEEDS_DATA_DIR", True):
    raise ValueError(f"dataset {name!r} needs a data_dir (--data-dir) pointing at its files.")
  return module.make_source(data_dir or None, split, **kw)


__all__ = ["DatasetInfo", "IGNORE_INDEX", "SOURCES", "get_source"]
