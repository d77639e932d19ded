"""Cityscapes: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` with gtFine labels.

Per image the reader prefers `*_gtFine_labelTrainIds.png` (0..18, 255 ignore,
made by cityscapesscripts' createTrainIdLabelImgs) and otherwise maps
`*_gtFine_labelIds.png` (ids 0..33) to the 19 train ids.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from sesam_jax.data import base

CLASS_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
               "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
               "bus", "train", "motorcycle", "bicycle")
COLORS = np.array([[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156],
                   [190, 153, 153], [153, 153, 153], [250, 170, 30], [220, 220, 0],
                   [107, 142, 35], [152, 251, 152], [70, 130, 180], [220, 20, 60], [255, 0, 0],
                   [0, 0, 142], [0, 0, 70], [0, 60, 100], [0, 80, 100], [0, 0, 230],
                   [119, 11, 32]], np.uint8)
# labelId -> trainId for the 19 evaluated classes (cityscapesscripts helpers/labels.py);
# every other id of 0..33 (void, ground, caravan, trailer, ...) is ignored.
LABEL_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                        23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def info() -> base.DatasetInfo:
  """Class names, colours and class count of this dataset."""
  return base.DatasetInfo("cityscapes", CLASS_NAMES, COLORS, len(CLASS_NAMES))


def label_ids_lut() -> np.ndarray:
  """256-entry table labelIds -> train ids (ids 0..33 known; 255 = license plate -1)."""
  lut = np.full(256, base.INVALID, np.int16)
  lut[:34] = base.IGNORE_INDEX
  lut[255] = base.IGNORE_INDEX  # license plate (id -1) wraps to 255 in uint8 files.
  for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
    lut[label_id] = train_id
  return lut


class CityscapesSource(base.PairedFileSource):
  """PairedFileSource whose items may mix labelTrainIds and labelIds files."""

  def __init__(self, *args, luts: list[np.ndarray], **kw):
    super().__init__(*args, **kw)
    self._luts = luts

  def _lut_for(self, index: int) -> np.ndarray:
    # Per item, so that no state is shared between grain's reader threads.
    return self._luts[index]


def make_source(data_dir: str | os.PathLike, split: str = "train") -> CityscapesSource:
  """Cityscapes split `split` ("train", "val", "test") under `data_dir`.

  Args:
    data_dir: the Cityscapes root holding `leftImg8bit/` and `gtFine/`.
    split: subfolder of leftImg8bit/ and gtFine/.

  Returns:
    A source whose labels are the 19 train ids (255 ignore).
  """
  fix = "pass --data-dir pointing at the Cityscapes root (with leftImg8bit/ and gtFine/)."
  root = base.require_dir(data_dir, "Cityscapes data dir", fix)
  image_root = base.require_dir(root / "leftImg8bit" / split, f"Cityscapes images ({split})", fix)
  label_root = base.require_dir(root / "gtFine" / split, f"Cityscapes gtFine labels ({split})",
                                fix)
  train_lut = base.identity_lut(len(CLASS_NAMES))
  ids_lut = label_ids_lut()
  ids, images, labels, luts, missing = [], [], [], [], []
  for image in sorted(image_root.glob("*/*_leftImg8bit.png")):
    stem = image.name[:-len("_leftImg8bit.png")]
    folder = label_root / image.parent.name
    train_ids = folder / f"{stem}_gtFine_labelTrainIds.png"
    label_ids = folder / f"{stem}_gtFine_labelIds.png"
    if train_ids.is_file():
      labels.append(train_ids), luts.append(train_lut)
    elif label_ids.is_file():
      labels.append(label_ids), luts.append(ids_lut)
    else:
      missing.append(label_ids)
      continue
    ids.append(stem), images.append(image)
  if missing:
    raise FileNotFoundError(
        f"cityscapes: {len(missing)} image(s) have no gtFine label, e.g. {missing[0]} (or "
        f"{pathlib.Path(str(missing[0]).replace('labelIds', 'labelTrainIds')).name}); extract "
        "gtFine_trainvaltest.zip into the same root.")
  return CityscapesSource(info(), ids, images, labels, train_lut, where=str(image_root),
                          luts=luts)
