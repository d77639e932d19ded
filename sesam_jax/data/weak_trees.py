"""Weak labels stored as PNGs in a dataset's own folder tree: gtCoarse and scribble releases.

Both readers are `weak_sources.WeakLabelReader`s (a `WeakFn`) that find each
image's file from the image's id and folder, and map its stored ids to the
dataset's class ids (255 = unlabeled).
"""

from __future__ import annotations

import glob
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sesam_jax.data import ade20k, base, camvid, cityscapes
from sesam_jax.data.base import IGNORE_INDEX
from sesam_jax.data.weak_sources import (WeakLabelError, WeakLabelReader,
                                         int_tuple, map_ids, read_ids_png)


class CityscapesCoarseReader(WeakLabelReader):
  """`cityscapes_coarse[:ROOT]`: Cityscapes' coarse annotations (gtCoarse.zip).

  Layout, under the dataset root (ROOT, default: the root of the source's
  `leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png` images):
  `gtCoarse/<split>/<city>/<city>_<seq>_<frame>_gtCoarse_labelTrainIds.png`
  (0..18, 255 = unlabeled; made by cityscapesscripts' createTrainIdLabelImgs),
  or else `..._gtCoarse_labelIds.png` (ids 0..33), mapped to the 19 train ids
  as the fine reader maps gtFine (every other id unlabeled). gtCoarse exists
  for the splits `train`, `train_extra` and `val`.
  """
  kind = "coarse"

  def __init__(self, source: Any, location: str = "", *, split: str | None = None):
    """Args:
      source: a Cityscapes source (ids `<city>_<seq>_<frame>`).
      location: ROOT; needed when the source has no image files (e.g. tfds).
      split: the gtCoarse split folder; default: the images' split folder.
    """
    super().__init__(source)
    if self.info.class_names != cityscapes.CLASS_NAMES:
      raise ValueError(f"cityscapes_coarse reads Cityscapes' 19 classes; the dataset is "
                       f"{self.info.name}: use --dataset cityscapes.")
    self._train_lut = base.identity_lut(len(cityscapes.CLASS_NAMES))
    self._ids_lut = cityscapes.label_ids_lut()
    first = self.image_paths.get(source.ids[0]) if len(source) else None
    if not location and first is None:
      raise ValueError("cityscapes_coarse: this source has no image files to find the "
                       "dataset root from; give it as cityscapes_coarse:/path/to/cityscapes.")
    if split is None and first is None:
      raise ValueError("cityscapes_coarse: give the split as the reader option split=train.")
    self.root = pathlib.Path(location) if location else first.parents[3]
    self.split = split or first.parents[1].name
    base.require_dir(self.root / "gtCoarse" / self.split, f"Cityscapes gtCoarse ({self.split})",
                     f"extract gtCoarse.zip into {self.root} (coarse labels exist for train, "
                     "train_extra and val).")

  def read(self, example_id: str, hw: tuple[int, int] | None) -> np.ndarray:
    image = self.image_paths.get(example_id)
    city = image.parent.name if image is not None else example_id.rsplit("_", 2)[0]
    folder = self.root / "gtCoarse" / self.split / city
    train_ids = folder / f"{example_id}_gtCoarse_labelTrainIds.png"
    label_ids = folder / f"{example_id}_gtCoarse_labelIds.png"
    path, lut = (train_ids, self._train_lut) if train_ids.is_file() else (label_ids, self._ids_lut)
    values = read_ids_png(path, f"nor is {train_ids.name}; extract gtCoarse.zip into "
                                f"{self.root} or leave the image out of the split.")
    return map_ids(values, lut, path, hw)


def raw_ids_lut(info: base.DatasetInfo) -> np.ndarray:
  """The 256-entry table from a dataset's stored label ids to its class ids."""
  tables: dict[str, Callable[[], np.ndarray]] = {
      "cityscapes": cityscapes.label_ids_lut, "tfds_cityscapes": cityscapes.label_ids_lut,
      "ade20k": ade20k.reduce_zero_label_lut,
      "camvid": lambda: base.identity_lut(info.num_classes,
                                          void_values=(camvid.VOID_ID, IGNORE_INDEX))}
  if info.name not in tables:
    raise ValueError(f"scribble_png: ids=raw is defined for {', '.join(sorted(tables))}; "
                     f"{info.name} labels store class ids: use ids=train_ids.")
  return tables[info.name]()


class ScribblePngReader(WeakLabelReader):
  """`scribble_png:ROOT`: scribble PNGs in a dataset's own folder tree.

  Layout: one PNG per image somewhere under ROOT, found by the glob `pattern`
  (relative to ROOT, pathlib semantics) in which `{id}` stands for the image id
  (file stem) and `{parent}` for the name of the image's folder (e.g. the
  Cityscapes city; any folder for sources without image files); exactly one
  file must match. Scribbles for All's
  s4Cityscapes mirrors gtFine (`gtFine/<split>/<city>/<dense label's name>.png`,
  raw labelIds, 0 where unlabeled, grey RGB): read it with
  `pattern=gtFine/*/{parent}/{id}_*.png ids=raw unlabeled=0`. Values are
  `ids=train_ids` (class ids 0..C-1) or `ids=raw` (the dataset's stored ids,
  mapped as its fine labels are); the `unlabeled` values (default 255) mean
  "no scribble". Single-channel or grey RGB PNGs at the image's size.
  """
  kind = "scribbles"

  def __init__(self, source: Any, location: str, *, pattern: str = "**/{id}*.png",
               ids: str = "train_ids", unlabeled: int | str | Sequence[int] = (IGNORE_INDEX,)):
    """Args:
      source: the dataset source.
      location: ROOT.
      pattern: glob under ROOT with `{id}` (and optionally `{parent}`); a `**` in it
        walks the tree for every image (about 5 ms per image on a Cityscapes-sized
        tree), folders spelled out read one folder each.
      ids: "train_ids" or "raw".
      unlabeled: stored value(s) meaning unlabeled.
    """
    super().__init__(source)
    self.root = base.require_dir(location, "scribble folder",
                                 "pass scribble_png:ROOT with ROOT the scribbles' top folder.")
    if "{id}" not in pattern:
      raise ValueError(f"scribble_png: pattern={pattern!r} must contain {{id}} (the image id).")
    self.pattern = pattern
    unlabeled = int_tuple(unlabeled, "unlabeled")
    if ids == "train_ids":
      self._lut = base.identity_lut(self.num_classes, void_values=unlabeled)
    elif ids == "raw":
      self._lut = raw_ids_lut(self.info).copy()
      self._lut[list(unlabeled)] = IGNORE_INDEX
    else:
      raise ValueError(f"scribble_png: ids={ids!r}; choose train_ids or raw.")

  def path(self, example_id: str) -> pathlib.Path:
    """The one file under ROOT matching `pattern` for this image."""
    image = self.image_paths.get(example_id)
    parent = glob.escape(image.parent.name) if image is not None else "*"
    rel = self.pattern.format(id=glob.escape(example_id), parent=parent)
    found = sorted(self.root.glob(rel))
    if not found:
      raise FileNotFoundError(f"no scribble file {self.root / rel} for image {example_id!r}; "
                              "add it, or set the weak-label option pattern to match your "
                              "files' names.")
    if len(found) > 1:
      raise WeakLabelError(f"{len(found)} files match {self.root / rel} for image "
                           f"{example_id!r} ({found[0].name}, {found[1].name}, ...); make the "
                           "weak-label option pattern more specific.")
    return found[0]

  def read(self, example_id: str, hw: tuple[int, int] | None) -> np.ndarray:
    path = self.path(example_id)
    return map_ids(read_ids_png(path, "it vanished while reading."), self._lut, path, hw)
