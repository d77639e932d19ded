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
               **kw: Any):
  """A random-access dataset source.

  Args:
    name: one of SOURCES ("camvid", "cityscapes", "ade20k", "voc", "custom",
      "synthetic", "tfds_cityscapes").
    data_dir: dataset root (not needed for "synthetic").
    split: split name ("train", "val", ...).
    **kw: source options, e.g. synthetic `num_images`, `size=(H, W)`, `seed`;
      custom `image_dir`, `label_dir`, `classes`; voc `augmented`.

  Returns:
    The source (see module docstring).
  """
  if name not in SOURCES:
    raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(SOURCES)}.")
  module = importlib.import_module(SOURCES[name])
  if name == "synthetic":
    return module.SyntheticSource(split, **kw)
  if name == "tfds_cityscapes":
    return module.TfdsCityscapesSource(data_dir, split, **kw)
  if data_dir is None and name != "custom":
    raise ValueError(f"dataset {name!r} needs a data_dir (--data-dir) pointing at its files.")
  return module.make_source(data_dir, split, **kw)


__all__ = ["DatasetInfo", "IGNORE_INDEX", "SOURCES", "get_source"]
