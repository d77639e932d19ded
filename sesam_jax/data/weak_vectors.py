"""Weak labels stored as geometry: ScribbleSup XML scribbles and CSV clicks, rasterised.

Both readers are `weak_sources.WeakLabelReader`s (a `WeakFn`): they draw an
HxW uint8 label (class ids, 255 = unlabeled) at the image's size. Classes are
given by name (matched to the dataset's class names ignoring case, spaces,
'_' and '-') or, in the CSV, by id. Strokes are the skimage.draw line through
the points, thickened by a disk of the stroke's width; what falls outside the
image is clipped.
"""

from __future__ import annotations

import csv
import collections
import pathlib
import re
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
from skimage import draw

from sesam_jax.data import base
from sesam_jax.data.base import IGNORE_INDEX
from sesam_jax.data.weak_sources import WeakLabelError, WeakLabelReader


def _normalise(name: str) -> str:
  return re.sub(r"[\s_\-]", "", name.lower())


def class_lookup(info: base.DatasetInfo) -> dict[str, int]:
  """Normalised class name -> class id of a dataset."""
  return {_normalise(n): i for i, n in enumerate(info.class_names)}


def _width(value: int | str, name: str = "width") -> int:
  try:
    width = int(value)
  except (TypeError, ValueError):
    width = 0
  if width < 1:
    raise ValueError(f"weak-label option {name}={value!r}: give a positive number of pixels.")
  return width


def _disk(width: int) -> np.ndarray:
  """Kx2 (row, col) offsets of a digital disk `width` pixels across (even widths round up)."""
  r = width // 2
  dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
  keep = dy ** 2 + dx ** 2 <= r * r + r  # r=1: the 3x3 square; r=2: 5x5 without corners.
  return np.stack([dy[keep], dx[keep]], 1)


def draw_stroke(label: np.ndarray, points_xy: np.ndarray, class_id: int, width: int) -> None:
  """Paints a polyline (or a single point) of `width` pixels into `label`, in place.

  Args:
    label: HxW uint8 canvas.
    points_xy: Nx2 (x, y) pixel coordinates; consecutive points are joined.
    class_id: value painted.
    width: stroke width in pixels (disk diameter; even widths round up to odd).
  """
  xy = np.rint(np.asarray(points_xy, np.float64)).astype(np.int64)
  rows, cols = [xy[:1, 1]], [xy[:1, 0]]
  for (x0, y0), (x1, y1) in zip(xy[:-1], xy[1:]):
    rr, cc = draw.line(y0, x0, y1, x1)
    rows.append(rr), cols.append(cc)
  centre = np.stack([np.concatenate(rows), np.concatenate(cols)], 1)
  pixels = (centre[:, None, :] + _disk(width)[None]).reshape(-1, 2)
  pixels = pixels[(pixels >= 0).all(1) & (pixels < label.shape).all(1)]
  label[pixels[:, 0], pixels[:, 1]] = class_id


class ScribbleSupReader(WeakLabelReader):
  """`scribblesup_xml:DIR`: ScribbleSup's PASCAL scribbles, `DIR/<image id>.xml` each.

  Layout of one file (Lin et al. 2016's release):

    <annotation>
      <filename>2007_000032.jpg</filename>
      <size><width>500</width><height>281</height></size>
      <polygon>
        <tag>aeroplane</tag>        (a class name of the dataset, `background` included)
        <point><X>104</X><Y>78</Y></point>
        <point><X>375</X><Y>183</Y></point> ...
      </polygon> ...
    </annotation>

  Each polygon is a scribble: the polyline through its points (0-based pixel
  x, y) drawn `width` pixels wide (default 3), later polygons over earlier
  ones. `<size>` must be the image's size and `<filename>`'s stem the image id.
  """
  kind = "scribbles"

  def __init__(self, source: Any, location: str, *, width: int | str = 3):
    """Args:
      source: the dataset source (class names: e.g. `voc`).
      location: DIR.
      width: stroke width in pixels.
    """
    super().__init__(source)
    self.dir = base.require_dir(location, "ScribbleSup folder",
                                "pass scribblesup_xml:DIR with DIR holding <image id>.xml.")
    self.width = _width(width)
    self.classes = class_lookup(self.info)

  def read(self, example_id: str, hw: tuple[int, int] | None) -> np.ndarray:
    path = self.dir / f"{example_id}.xml"
    try:
      root = ET.parse(path).getroot()
    except FileNotFoundError:
      raise FileNotFoundError(f"scribbles {path} not found; every image of the split needs "
                              f"<image id>.xml in {self.dir}.") from None
    except ET.ParseError as e:
      raise WeakLabelError(f"scribbles {path} are not valid XML ({e}); export them again."
                           ) from None
    try:
      size = (int(root.findtext("size/height")), int(root.findtext("size/width")))
    except (TypeError, ValueError):
      raise WeakLabelError(f"scribbles {path} have no <size><width>..</width><height>.."
                           "</height></size>; add the image's size.") from None
    filename = (root.findtext("filename") or "").strip()
    if filename and pathlib.PurePath(filename).stem != example_id:
      raise WeakLabelError(f"scribbles {path} are for image {filename!r}, not {example_id!r}; "
                           "name each file after its image.")
    if hw is not None and size != tuple(hw):
      raise WeakLabelError(f"scribbles {path} are for a {size[1]}x{size[0]} (WxH) image but "
                           f"image {example_id!r} is {hw[1]}x{hw[0]}; use the scribbles made "
                           "on this image (or its original size).")
    label = np.full(size, IGNORE_INDEX, np.uint8)
    for n, polygon in enumerate(root.iter("polygon"), 1):
      tag = (polygon.findtext("tag") or "").strip()
      if _normalise(tag) not in self.classes:
        raise WeakLabelError(f"scribbles {path}: polygon {n} has tag {tag!r}, not a class of "
                             f"{self.info.name} ({', '.join(self.info.class_names)}); fix the "
                             "tag or use the dataset these scribbles were made for.")
      try:
        xy = [(float(p.findtext("X")), float(p.findtext("Y"))) for p in polygon.iter("point")]
      except (TypeError, ValueError):
        raise WeakLabelError(f"scribbles {path}: polygon {n} has a point without numeric "
                             "<X> and <Y>; fix the file.") from None
      if xy:
        draw_stroke(label, np.array(xy), self.classes[_normalise(tag)], self.width)
    return label


class ClicksCsvReader(WeakLabelReader):
  """`clicks_csv:FILE`: point labels, one CSV row per click.

  Layout: a header row naming the columns `image,x,y,class` (any order, more
  columns allowed), then one row per click: `image` is the image id (file stem)
  or its file name, `x`, `y` are 0-based pixel coordinates (column, row;
  rounded to the nearest pixel), `class` is a class id or a class name of the
  dataset. Rows of images outside the split are ignored (one file may hold
  every split); an image of the split without rows is reported. Each click
  paints a disk `width` pixels across (default 1: the pixel itself).
  """
  kind = "points"
  COLUMNS = ("image", "x", "y", "class")

  def __init__(self, source: Any, location: str, *, width: int | str = 1):
    """Args:
      source: the dataset source.
      location: FILE.
      width: click diameter in pixels.
    """
    super().__init__(source)
    self.path = pathlib.Path(location)
    self.width = _width(width)
    names = {i: i for i in source.ids}
    for example_id, image in self.image_paths.items():
      names.setdefault(image.name, example_id), names.setdefault(image.stem, example_id)
    self.clicks: dict[str, list[tuple[int, float, float, int]]] = collections.defaultdict(list)
    self.errors: dict[str, str] = {}  # image id -> its first bad row, raised when it is read.
    first_other = self._parse(names, class_lookup(self.info))
    if not self.clicks and not self.errors and len(source):
      raise ValueError(f"no row of {self.path} names an image of this split"
                       f"{f' (e.g. {first_other!r})' if first_other else ''}; the image column "
                       f"holds image ids such as {source.ids[0]!r} or their file names.")

  def _parse(self, names: dict[str, str], classes: dict[str, int]) -> str | None:
    """Reads the file into `clicks` / `errors`; returns the first image not in the split."""
    try:
      with open(self.path, newline="") as f:
        rows = list(csv.reader(f))
    except FileNotFoundError:
      raise FileNotFoundError(f"clicks file {self.path} not found; pass clicks_csv:FILE with "
                              "one row `image,x,y,class` per click.") from None
    except (OSError, UnicodeDecodeError) as e:
      raise ValueError(f"cannot read clicks file {self.path} ({e}); save it as UTF-8 CSV."
                       ) from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if not set(self.COLUMNS) <= set(header):
      raise ValueError(f"clicks file {self.path} has header {rows[0] if rows else []}; its "
                       "first row must name the columns image,x,y,class.")
    col = {c: header.index(c) for c in self.COLUMNS}
    other = None
    for line, row in enumerate(rows[1:], 2):
      if not any(v.strip() for v in row):
        continue
      value = row[col["image"]].strip() if len(row) > col["image"] else ""
      key = next((names[k] for k in (value, pathlib.PurePath(value).name,
                                     pathlib.PurePath(value).stem) if k in names), None)
      if key is None:
        other = other or value
        continue
      try:
        x, y = float(row[col["x"]]), float(row[col["y"]])
        cls = row[col["class"]].strip()
      except (IndexError, ValueError):
        self.errors.setdefault(key, f"{self.path}:{line}: row {row} needs numeric x and y and a "
                                    "class; fix the row.")
        continue
      class_id = int(cls) if cls.isdigit() else classes.get(_normalise(cls), -1)
      if not 0 <= class_id < self.num_classes:
        self.errors.setdefault(key, f"{self.path}:{line}: class {cls!r} is not a class of "
                                    f"{self.info.name} (ids 0..{self.num_classes - 1} or "
                                    f"{', '.join(self.info.class_names)}); fix the row.")
        continue
      self.clicks[key].append((line, x, y, class_id))
    return other

  def read(self, example_id: str, hw: tuple[int, int] | None) -> np.ndarray:
    if example_id in self.errors:
      raise WeakLabelError(self.errors[example_id])
    clicks = self.clicks.get(example_id)
    if not clicks:
      raise WeakLabelError(f"{self.path} has no click for image {example_id!r}; add a row "
                           f"`{example_id},x,y,class` per click or leave the image out.")
    if hw is None:  # No image size known (check without images): fit the clicks.
      hw = (int(max(round(c[2]) for c in clicks)) + 1, int(max(round(c[1]) for c in clicks)) + 1)
    label = np.full(hw, IGNORE_INDEX, np.uint8)
    centre: dict[tuple[int, int], tuple[int, int]] = {}
    for line, x, y, class_id in clicks:
      col, row = int(round(x)), int(round(y))
      if not (0 <= row < hw[0] and 0 <= col < hw[1]):
        raise WeakLabelError(f"{self.path}:{line}: click ({x:g}, {y:g}) lies outside image "
                             f"{example_id!r} ({hw[1]}x{hw[0]}, WxH); x is the column, y the "
                             "row, both 0-based: fix the row.")
      earlier = centre.setdefault((row, col), (line, class_id))
      if earlier[1] != class_id:
        raise WeakLabelError(f"{self.path}:{line}: click ({x:g}, {y:g}) of image {example_id!r} "
                             f"gives class {class_id}, line {earlier[0]} gave {earlier[1]} at "
                             "the same pixel; keep one of them.")
      draw_stroke(label, np.array([[col, row]]), class_id, self.width)
    return label
