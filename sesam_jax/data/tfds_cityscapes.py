"""Cityscapes through tensorflow-datasets, when the user has prepared it.

tensorflow-datasets cannot download Cityscapes (it needs a login), so this
source only reads a dataset the user built with
`tfds build cityscapes --data_dir DIR --manual_dir DIR/downloads/manual
--file_format array_record`. Array-record files give random access without
TensorFlow at read time. Labels are gtFine labelIds, mapped to the 19 train ids.
tensorflow-datasets is the optional extra `tfds` (`pip install 'sesam-jax[tfds]'`), imported
only when such a dataset is opened.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from sesam_jax import report
from sesam_jax.data import base, cityscapes

INSTALL = "pip install 'sesam-jax[tfds]'"
PREPARE = ("download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
           "https://www.cityscapes-dataset.com (login needed) into DATA_DIR/downloads/manual, "
           "then run `tfds build cityscapes/semantic_segmentation --data_dir DATA_DIR "
           f"--file_format array_record` (the tfds command comes with `{INSTALL}`) and pass "
           "--data-dir DATA_DIR. Or point the `cityscapes` source at the extracted folders, "
           "which needs no preparation.")
SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


class TfdsCityscapesSource:
  """Random access over `tfds.data_source('cityscapes/semantic_segmentation')`."""

  def __init__(self, data_dir: str | os.PathLike | None, split: str = "train",
               config: str = "semantic_segmentation"):
    """Args:
      data_dir: the tfds data_dir holding `cityscapes/<config>/<version>/`.
      split: "train", "val" or "test".
      config: tfds builder config.
    """
    if split not in SPLITS:
      raise ValueError(f"tfds_cityscapes splits are train, val, test; got {split!r}.")
    if data_dir is None:
      raise FileNotFoundError(f"tfds_cityscapes needs --data-dir (the tfds data_dir): {PREPARE}")
    prepared = pathlib.Path(data_dir) / "cityscapes" / config
    if not any(prepared.glob("*/dataset_info.json")):
      raise FileNotFoundError(f"no prepared tensorflow-datasets cityscapes/{config} in "
                              f"{data_dir} (looked for {prepared}/<version>/dataset_info.json): "
                              f"{PREPARE}")
    tfds = _import_tfds()
    try:
      self._data = tfds.data_source(f"cityscapes/{config}", split=SPLITS[split],
                                    data_dir=str(data_dir))
    except Exception as e:  # tfds raises several types; all mean "not usable as prepared".
      raise ValueError(f"tensorflow-datasets could not open cityscapes/{config} in {data_dir} "
                       f"({e}); it must be built with --file_format array_record: {PREPARE}"
                       ) from None
    self.info = cityscapes.info()
    self._lut = cityscapes.label_ids_lut()
    self.ids = [f"{split}_{i:05d}" for i in range(len(self._data))]

  def __len__(self) -> int:
    return len(self._data)

  def __getitem__(self, index: int) -> dict:
    example = self._data[int(index)]
    image_id = example["image_id"]
    image_id = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
    label = base.apply_lut(np.asarray(example["segmentation_label"])[..., 0], self._lut,
                           f"tfds cityscapes example {image_id}", "cityscapes")
    return {"id": image_id, "image": np.asarray(example["image_left"], np.uint8), "label": label}


def _import_tfds() -> Any:
  """tensorflow_datasets (heavy and optional: imported once the data is known to exist).

  Raises:
    report.UserError: it is not installed; the message names the extra that installs it.
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise report.UserError(f"the tfds_cityscapes source needs tensorflow-datasets ({e}); "
                           f"install it with `{INSTALL}`.") from None
  return tfds


NEEDS_DATA_DIR = False  # The class itself says how to prepare one when it is missing.


def make_source(data_dir: str | os.PathLike | None = None, split: str = "train",
                **kw) -> TfdsCityscapesSource:
  """tensorflow-datasets' `cityscapes` prepared under `data_dir` (see TfdsCityscapesSource)."""
  return TfdsCityscapesSource(data_dir, split, **kw)
