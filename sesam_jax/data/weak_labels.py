"""Weak labels from fine labels: the paper's three protocols (one image at a time).

Every function maps an HxW uint8 fine label (class ids, 255 = ignore) to an
HxW uint8 weak label with 255 = unlabeled:

- `points`: exactly one pixel per class present, drawn uniformly from that
  class's pixels (Paul et al. 2020's one click per class).
- `scribbles`: for each connected region above a minimum area, a stroke along
  the longest path of the region's skeleton (a random stretch of it, like a
  hand-drawn line that does not reach the region's ends), a few pixels wide and
  clipped to the region (ScribbleSup-style, Lin et al. 2016).
- `coarse`: for each connected region above a minimum area, its interior eroded
  away from every class boundary and traced as a simplified polygon; boundaries
  stay unlabeled (like Cityscapes gtCoarse and Das et al. 2023b).

Randomness comes from a generator seeded by (seed, stable hash of the image
id, kind), so a label is reproducible across processes and independent of the
order in which images are visited. Size-dependent defaults (minimum area,
widths, erosion) scale with the image so Cityscapes and CamVid get the same look.
Whole splits (folders of PNGs, quality statistics): `weak_splits`; the user's own weak labels:
`weak_sources`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from skimage import measure, morphology

from sesam_jax.data import base

KINDS = ("points", "scribbles", "coarse")
# 8-neighbourhood offsets used to link skeleton pixels into a graph.
_NEIGHBOURS = ((0, 1), (1, -1), (1, 0), (1, 1))
# Regions larger than this (pixels on a side) are thinned on a strided subsample.
SKELETON_MAX_SIDE = 256


def weak_label_rng(seed: int, image_id: str, kind: str) -> np.random.Generator:
  """The generator for one (seed, image, kind): independent of visiting order."""
  return np.random.default_rng(np.random.SeedSequence(
      [int(seed), base.stable_hash(str(image_id)), KINDS.index(kind)]))


def _check_label(label: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
  label = np.asarray(label)
  if label.ndim != 2:
    raise ValueError(f"weak labels need an HxW label map, got shape {label.shape}.")
  present = np.unique(label)
  bad = present[(present >= num_classes) & (present != ignore_index)]
  if bad.size:
    raise ValueError(f"label holds ids {bad.tolist()} outside 0..{num_classes - 1} and "
                     f"{ignore_index} (ignore); pass the dataset's num_classes.")
  return label


def _regions(label: np.ndarray, num_classes: int, ignore_index: int, min_area: float):
  """Connected regions (8-connected, one class each) with at least `min_area` pixels.

  Yields:
    (class id, (row slice, col slice) bounding box, bool mask inside the box).
  """
  # measure.label links neighbouring pixels of equal value: one call finds every
  # class's components. Ignore pixels become background 0 after the shift.
  shifted = np.where(label == ignore_index, 0, label.astype(np.int32) + 1)
  components = measure.label(shifted, background=0, connectivity=2)
  areas = np.bincount(components.ravel())
  class_of = np.zeros(len(areas), np.int64)
  class_of[components.ravel()] = shifted.ravel() - 1
  for k, box in enumerate(ndimage.find_objects(components), start=1):
    if box is not None and areas[k] >= min_area:
      yield int(class_of[k]), box, components[box] == k


def make_points(label: np.ndarray, rng: np.random.Generator, *, num_classes: int,
                ignore_index: int = base.IGNORE_INDEX) -> np.ndarray:
  """One pixel per class present, uniform over that class's pixels.

  Args:
    label: HxW uint8 fine label.
    rng: the image's generator (`weak_label_rng`).
    num_classes: number of classes; ids >= it other than `ignore_index` are an error.
    ignore_index: the fine label's ignore value.

  Returns:
    HxW uint8: one pixel per present class, 255 elsewhere.
  """
  label = _check_label(label, num_classes, ignore_index)
  weak = np.full(label.shape, base.IGNORE_INDEX, np.uint8)
  flat = label.ravel()
  for class_id in np.unique(flat):
    if class_id == ignore_index:
      continue
    where = np.flatnonzero(flat == class_id)
    weak.flat[where[rng.integers(len(where))]] = class_id
  return weak


def _longest_skeleton_path(mask: np.ndarray) -> np.ndarray:
  """Kx2 (row, col) pixels of the longest path of `mask`'s skeleton (in the box).

  The skeleton is a graph on its pixels (8-neighbours); two breadth-first
  searches (farthest node from anywhere, then farthest from that) give its
  diameter, exact on trees and a close approximation when the skeleton has loops.
  """
  skeleton = morphology.skeletonize(mask)
  pixels = np.argwhere(skeleton)
  if len(pixels) == 0:  # Degenerate (e.g. 2-pixel-wide) shapes: use the deepest pixel.
    depth = ndimage.distance_transform_edt(mask)
    return np.array([np.unravel_index(np.argmax(depth), mask.shape)])
  if len(pixels) == 1:
    return pixels
  index = np.full(mask.shape, -1, np.int64)
  index[pixels[:, 0], pixels[:, 1]] = np.arange(len(pixels))
  padded = np.pad(index, 1, constant_values=-1)
  rows, cols = [], []
  for dr, dc in _NEIGHBOURS:
    neighbour = padded[1 + pixels[:, 0] + dr, 1 + pixels[:, 1] + dc]
    keep = neighbour >= 0
    rows.append(np.flatnonzero(keep)), cols.append(neighbour[keep])
  rows, cols = np.concatenate(rows), np.concatenate(cols)
  graph = sparse.csr_matrix((np.ones(len(rows), np.int8), (rows, cols)),
                            shape=(len(pixels),) * 2)
  order = csgraph.breadth_first_order(graph, 0, directed=False, return_predecessors=False)
  start = order[-1]  # BFS visits by depth: the last node is a farthest one.
  order, predecessors = csgraph.breadth_first_order(graph, start, directed=False)
  path = [order[-1]]
  while path[-1] != start:
    path.append(predecessors[path[-1]])
  return pixels[np.array(path)]


def _skeleton_path(mask: np.ndarray, max_side: int = SKELETON_MAX_SIDE) -> np.ndarray:
  """Longest skeleton path of `mask` as Kx2 (row, col), 8-connected pixels.

  Thinning is the slow step (about 0.1 s for a 1000x1000 region), so large
  regions are thinned on a strided subsample and the path is scaled back and
  re-densified; the caller clips the stroke to the full-resolution mask.
  """
  step = -(-max(mask.shape) // max_side)  # Ceiling division.
  small = mask[step // 2::step, step // 2::step] if step > 1 else mask
  if step == 1 or not small.any():
    return _longest_skeleton_path(mask)
  corners = _longest_skeleton_path(small) * step + step // 2
  if len(corners) == 1:
    return corners
  # Consecutive subsample pixels are <= step apart: fill the gaps linearly.
  fractions = np.arange(step)[None, :, None] / step
  dense = corners[:-1, None, :] + (corners[1:] - corners[:-1])[:, None, :] * fractions
  dense = np.concatenate([np.rint(dense).reshape(-1, 2), corners[-1:]]).astype(np.int64)
  return np.minimum(dense, np.array(mask.shape) - 1)


def make_scribbles(label: np.ndarray, rng: np.random.Generator, *, num_classes: int,
                   ignore_index: int = base.IGNORE_INDEX, min_area: float | None = None,
                   width: int | None = None,
                   length_range: tuple[float, float] = (0.6, 1.0)) -> np.ndarray:
  """A stroke along each large region's skeleton, clipped to the region.

  Args:
    label: HxW uint8 fine label.
    rng: the image's generator.
    num_classes: number of classes.
    ignore_index: the fine label's ignore value.
    min_area: regions smaller than this (pixels) get no scribble; default
      2e-4 of the image (35 px at 480x360, 420 px at 2048x1024).
    width: stroke width in pixels; default 0.8% of the shorter side, odd, >= 3.
    length_range: the stroke covers a random stretch of this fraction of the
      skeleton's longest path.

  Returns:
    HxW uint8 scribbles, 255 elsewhere. Every scribble pixel lies in its region.
  """
  label = _check_label(label, num_classes, ignore_index)
  H, W = label.shape
  min_area = 2e-4 * H * W if min_area is None else min_area
  if width is None:
    width = max(3, int(round(0.008 * min(H, W))) | 1)
  weak = np.full(label.shape, base.IGNORE_INDEX, np.uint8)
  radius = width // 2
  offsets = np.stack(np.mgrid[-radius:radius + 1, -radius:radius + 1], -1).reshape(-1, 2)
  for class_id, box, mask in _regions(label, num_classes, ignore_index, min_area):
    path = _skeleton_path(mask)
    keep = max(1, int(round(len(path) * rng.uniform(*length_range))))
    begin = rng.integers(0, len(path) - keep + 1)
    path = path[begin:begin + keep]
    # A width x width square around every path pixel, clipped to the region.
    stroke = (path[:, None, :] + offsets[None]).reshape(-1, 2)
    stroke = stroke[(stroke >= 0).all(1) & (stroke < mask.shape).all(1)]
    inside = mask[stroke[:, 0], stroke[:, 1]]
    weak[box][stroke[inside, 0], stroke[inside, 1]] = class_id
  return weak


def _class_boundary_distance(label: np.ndarray) -> np.ndarray:
  """HxW float: distance of each pixel to the nearest change of label value."""
  edge = np.zeros(label.shape, bool)
  vertical = label[1:] != label[:-1]
  horizontal = label[:, 1:] != label[:, :-1]
  edge[1:] |= vertical
  edge[:-1] |= vertical
  edge[:, 1:] |= horizontal
  edge[:, :-1] |= horizontal
  if not edge.any():
    return np.full(label.shape, np.inf)
  return ndimage.distance_transform_edt(~edge)


def _fill_polygon(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """HxW bool raster of a Kx2 (row, col) polygon.

  PIL's scanline fill is used because skimage.draw.polygon tests every pixel of
  the bounding box against every edge (1.4 s for one Cityscapes-size image);
  PIL also sets the outline's pixels, half a pixel more than draw.polygon,
  which the erosion absorbs.
  """
  canvas = Image.new("1", (shape[1], shape[0]), 0)
  ImageDraw.Draw(canvas).polygon([(float(c), float(r)) for r, c in polygon], fill=1, outline=1)
  return np.asarray(canvas, bool)


def make_coarse(label: np.ndarray, rng: np.random.Generator, *, num_classes: int,
                ignore_index: int = base.IGNORE_INDEX, min_area: float | None = None,
                erosion: tuple[float, float] | None = None,
                tolerance: float | None = None) -> np.ndarray:
  """An eroded, polygon-simplified interior per region; boundaries unlabeled.

  Args:
    label: HxW uint8 fine label.
    rng: the image's generator.
    num_classes: number of classes.
    ignore_index: the fine label's ignore value.
    min_area: regions smaller than this (pixels) are dropped; default 1e-3 of
      the image (173 px at 480x360).
    erosion: (low, high) pixels kept clear of every class boundary, drawn per
      region; default (0.008, 0.02) of the shorter side (2.9-7.2 px at 360).
    tolerance: polygon simplification tolerance in pixels (Douglas-Peucker);
      default 0.005 of the shorter side, and never above the low erosion, so a
      polygon rarely crosses into a neighbour.

  Returns:
    HxW uint8 coarse label, 255 elsewhere.
  """
  label = _check_label(label, num_classes, ignore_index)
  H, W = label.shape
  short = min(H, W)
  min_area = 1e-3 * H * W if min_area is None else min_area
  erosion = (0.008 * short, 0.02 * short) if erosion is None else erosion
  tolerance = min(0.005 * short, erosion[0]) if tolerance is None else tolerance
  distance = _class_boundary_distance(label)
  weak = np.full(label.shape, base.IGNORE_INDEX, np.uint8)
  for class_id, box, mask in _regions(label, num_classes, ignore_index, min_area):
    interior = mask & (distance[box] > rng.uniform(*erosion))
    if interior.sum() < 4:
      continue
    # Polygons of the interior's outlines; even-odd filling keeps holes open.
    filled = np.zeros(mask.shape, bool)
    for contour in measure.find_contours(np.pad(interior, 1).astype(np.uint8), 0.5):
      polygon = measure.approximate_polygon(contour - 1, tolerance)
      if len(polygon) < 4:  # A closed triangle has 4 vertices (first == last).
        continue
      filled ^= _fill_polygon(polygon, mask.shape)
    target = weak[box]
    target[filled & (target == base.IGNORE_INDEX)] = class_id
  return weak


_MAKERS = {"points": make_points, "scribbles": make_scribbles, "coarse": make_coarse}


def make_weak_label(label: np.ndarray, kind: str, *, seed: int, image_id: str,
                    num_classes: int, ignore_index: int = base.IGNORE_INDEX, **kw) -> np.ndarray:
  """A weak label of `kind` from a fine label, deterministic in (seed, image_id).

  Args:
    label: HxW uint8 fine label (class ids, `ignore_index` = ignore).
    kind: "points", "scribbles" or "coarse".
    seed: protocol seed.
    image_id: the image's id (file stem); hashed stably into the generator.
    num_classes: number of classes.
    ignore_index: the fine label's ignore value.
    **kw: options of make_scribbles / make_coarse (min_area, width, erosion, ...).

  Returns:
    HxW uint8 weak label, 255 = unlabeled.
  """
  if kind not in _MAKERS:
    raise ValueError(f"unknown weak label kind {kind!r}; choose one of: {', '.join(KINDS)}.")
  rng = weak_label_rng(seed, image_id, kind)
  return _MAKERS[kind](label, rng, num_classes=num_classes, ignore_index=ignore_index, **kw)
