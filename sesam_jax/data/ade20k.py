"""ADE20K SceneParsing (MIT Scene Parsing benchmark, `ADEChallengeData2016` layout).

`images/{training,validation}/*.jpg` and `annotations/{training,validation}/*.png`;
annotation 0 is "other objects" and becomes ignore, 1..150 become 0..149
("reduce zero label", as in mmsegmentation and the SeSAM paper's setup).
"""

from __future__ import annotations

import os

import numpy as np

from sesam_jax.data import base

CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step",
    "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag")
SPLIT_FOLDERS = {"train": "training", "training": "training", "val": "validation",
                 "validation": "validation"}


def info() -> base.DatasetInfo:
  """Class names, colours and class count of this dataset."""
  return base.DatasetInfo("ade20k", CLASS_NAMES, base.default_colors(len(CLASS_NAMES) + 1)[1:],
                          len(CLASS_NAMES))


def reduce_zero_label_lut() -> np.ndarray:
  """256-entry table: 0 -> 255 (ignore), k -> k-1 for k in 1..150, others rejected."""
  lut = np.full(256, base.INVALID, np.int16)
  lut[0] = base.IGNORE_INDEX
  lut[1:len(CLASS_NAMES) + 1] = np.arange(len(CLASS_NAMES))
  lut[base.IGNORE_INDEX] = base.IGNORE_INDEX
  return lut


def make_source(data_dir: str | os.PathLike, split: str = "train") -> base.PairedFileSource:
  """ADE20K split "train" (training/) or "val" (validation/).

  Args:
    data_dir: the `ADEChallengeData2016` folder, or a folder containing it.
    split: "train" or "val" (also "training" / "validation").

  Returns:
    A PairedFileSource with 150 classes, annotation 0 read as ignore.
  """
  fix = ("pass --data-dir pointing at ADEChallengeData2016 (from ADEChallengeData2016.zip, with "
         "images/ and annotations/).")
  root = base.require_dir(data_dir, "ADE20K data dir", fix)
  if not (root / "images").is_dir() and (root / "ADEChallengeData2016").is_dir():
    root = root / "ADEChallengeData2016"
  if split not in SPLIT_FOLDERS:
    raise ValueError(f"ade20k has splits 'train' and 'val', got {split!r}.")
  folder = SPLIT_FOLDERS[split]
  image_dir = base.require_dir(root / "images" / folder, f"ADE20K images ({split})", fix)
  label_dir = base.require_dir(root / "annotations" / folder, f"ADE20K annotations ({split})", fix)
  ids, images, labels = base.pair_by_stem(image_dir, label_dir, dataset="ade20k")
  return base.PairedFileSource(info(), ids, images, labels, reduce_zero_label_lut(),
                               where=str(image_dir))
