"""PASCAL VOC 2012 segmentation (`VOC2012` layout), optionally with SBD's augmented train set.

`JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png` (palette PNG: ids 0..20,
255 = boundary/void), split lists `ImageSets/Segmentation/{train,val}.txt`.
When `SegmentationClassAug/` and a `train_aug.txt` list (the 10582-image set of
Hariharan et al.'s SBD, as used by DeepLab) are present, split "train" reads
them instead; split "train_aug" requires them.
"""

from __future__ import annotations

import os
import pathlib

from sesam_jax import report
from sesam_jax.data import base

CLASS_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def info() -> base.DatasetInfo:
  """Class names, colours and class count of this dataset."""
  return base.DatasetInfo("voc", CLASS_NAMES, base.default_colors(len(CLASS_NAMES)),
                          len(CLASS_NAMES))


def _find_root(data_dir: pathlib.Path) -> pathlib.Path:
  """Accepts VOC2012/, VOCdevkit/ or the folder holding VOCdevkit/."""
  for candidate in (data_dir, data_dir / "VOC2012", data_dir / "VOCdevkit" / "VOC2012"):
    if (candidate / "JPEGImages").is_dir():
      return candidate
  raise FileNotFoundError(
      f"no JPEGImages/ folder in {data_dir} (nor in VOC2012/ or VOCdevkit/VOC2012/ below it); "
      "pass --data-dir pointing at the extracted VOCtrainval_11-May-2012 VOC2012 folder.")


def _read_list(path: pathlib.Path) -> list[str]:
  """Image ids from a split list; lines are `id` or `/JPEGImages/id.jpg /Seg.../id.png`."""
  ids = []
  for line in path.read_text().splitlines():
    if line.strip():
      ids.append(pathlib.PurePosixPath(line.split()[0]).stem)
  return ids


def _aug_list(root: pathlib.Path) -> pathlib.Path | None:
  for candidate in (root / "ImageSets" / "Segmentation" / "train_aug.txt", root / "train_aug.txt"):
    if candidate.is_file():
      return candidate
  return None


def make_source(data_dir: str | os.PathLike, split: str = "train", *,
                augmented: bool | None = None) -> base.PairedFileSource:
  """VOC 2012 split "train", "val" or "train_aug".

  Args:
    data_dir: the VOC2012 folder (or VOCdevkit/, or the folder holding VOCdevkit/).
    split: "train", "val", "trainval" or "train_aug".
    augmented: for split "train": True requires the SBD set, False never uses it,
      None (default) uses it when `SegmentationClassAug/` and `train_aug.txt` exist.

  Returns:
    A PairedFileSource with 21 classes (255 = void).
  """
  root = _find_root(pathlib.Path(base.require_dir(
      data_dir, "VOC data dir", "pass --data-dir pointing at the VOC2012 folder.")))
  aug_list, aug_labels = _aug_list(root), root / "SegmentationClassAug"
  have_aug = aug_list is not None and aug_labels.is_dir()
  use_aug = split == "train_aug" or (split == "train" and (augmented or (augmented is None
                                                                          and have_aug)))
  if use_aug and not have_aug:
    raise FileNotFoundError(
        f"the SBD augmented train set needs {root / 'SegmentationClassAug'}/ and "
        f"{root / 'ImageSets/Segmentation/train_aug.txt'}; download SegmentationClassAug.zip "
        "and train_aug.txt (DeepLab's SBD conversion) into the VOC2012 folder, or use split "
        "'train'.")
  if use_aug:
    list_path, label_dir = aug_list, aug_labels
    report.log(f"voc: split {split!r} reads the SBD augmented set ({list_path}).")
  else:
    list_path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    label_dir = base.require_dir(root / "SegmentationClass", "VOC SegmentationClass folder",
                                 "extract the VOC2012 trainval archive completely.")
    if not list_path.is_file():
      raise FileNotFoundError(f"split list {list_path} not found; VOC splits are train, val, "
                              "trainval (and train_aug with SBD).")
  ids = _read_list(list_path)
  images = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
  labels = [label_dir / f"{i}.png" for i in ids]
  for kind, paths in (("image", images), ("label", labels)):
    missing = [p for p in paths if not p.is_file()]
    if missing:
      raise FileNotFoundError(
          f"voc: {len(missing)} {kind} file(s) listed in {list_path} are missing, e.g. "
          f"{missing[0]}; restore them or remove their ids from the list.")
  lut = base.identity_lut(len(CLASS_NAMES))
  return base.PairedFileSource(info(), ids, images, labels, lut, where=str(list_path))
