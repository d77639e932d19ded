"""Point prompts for one instance: SeSAM's grid + distance sampling (eq. 2) and ablations.

SeSAM: the normalised distance transform (distance to the nearest background
pixel divided by its maximum) is the probability field; it peaks on the medial
axis (skeleton) and is lowest at the boundary, so no explicit skeletonisation is
done (the paper's skeleton is the ridge of this field). The bounding box
(s1 x s2 = S) is cut into ceil(s1/sqrt(S/K)) x ceil(s2/sqrt(S/K)) cells; K cells
holding mask pixels are drawn uniformly at random; one point is drawn from each
such cell with probability proportional to the field.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage as ndi

from sam_bridge.refine_config import SAMPLING_STRATEGIES  # The names RefineConfig.sampling takes.


def distance_field(mask: np.ndarray, *, max_pixels: int = 1 << 16) -> np.ndarray:
  """Euclidean distance to the nearest non-mask pixel, the box border counting as outside.

  Args:
    mask: hxw bool (an instance inside its bounding box).
    max_pixels: boxes larger than this are measured on a strided grid (stride s,
      distances times s) and spread back by repetition: the field only weights a
      random draw, and large regions (road, sky) would otherwise dominate the time.

  Returns:
    hxw float32, > 0 inside the mask, 0 outside.
  """
  stride = max(1, math.ceil(math.sqrt(mask.size / max_pixels)))
  if stride == 1:
    return ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1].astype(np.float32)
  small = ndi.distance_transform_edt(np.pad(mask[::stride, ::stride], 1))[1:-1, 1:-1]
  big = np.repeat(np.repeat(small.astype(np.float32) * stride, stride, 0), stride, 1)
  big = big[:mask.shape[0], :mask.shape[1]]
  # Pixels of the mask that the strided grid missed still get a small positive weight.
  return np.where(mask, np.maximum(big, 1.0), 0.0).astype(np.float32)


def grid_shape(height: int, width: int, k: int) -> tuple[int, int]:
  """Eq. 2: ceil(s1/sqrt(S/K)) x ceil(s2/sqrt(S/K)) cells for an s1 x s2 box."""
  side = math.sqrt(height * width / k)
  return math.ceil(height / side), math.ceil(width / side)


def cell_index(ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int],
               grid: tuple[int, int]) -> np.ndarray:
  """Row-major grid cell of each pixel (ys, xs) of an hxw box cut into `grid` rows x cols."""
  (h, w), (rows, cols) = shape, grid
  return (ys * rows // h) * cols + (xs * cols // w)


def grid_edges(shape: tuple[int, int], grid: tuple[int, int]) -> tuple[list[int], list[int]]:
  """First pixel row of each grid row and first column of each grid column, plus the ends.

  Pixel y is in grid row i exactly when edges_y[i] <= y < edges_y[i + 1] (as `cell_index`).
  """
  (h, w), (rows, cols) = shape, grid
  return ([-(-i * h // rows) for i in range(rows + 1)],
          [-(-j * w // cols) for j in range(cols + 1)])


def _weighted_pick(rng: np.random.Generator, weights: np.ndarray, n: int) -> np.ndarray:
  """n indices without replacement, P proportional to weights (Efraimidis-Spirakis keys)."""
  keys = np.log(rng.random(len(weights))) / np.maximum(weights, 1e-12)
  n = min(n, len(weights))
  return np.argpartition(-keys, n - 1)[:n] if n < len(weights) else np.arange(len(weights))


def sample_points(mask: np.ndarray, *, k: int = 5, strategy: str = "sesam",
                  rng: np.random.Generator, confidence: np.ndarray | None = None,
                  center_quantile: float = 0.8, boundary_band: float = 0.2,
                  trace: dict | None = None) -> np.ndarray:
  """K point prompts inside one instance.

  Args:
    mask: hxw bool, the instance inside its bounding box (non-empty).
    k: number of points K (paper: 5).
    strategy: "sesam" (grid + distance, eq. 2), "center" (uniform among pixels whose
      normalised distance >= center_quantile: near the distance maxima), "boundary"
      (uniform among pixels whose normalised distance <= boundary_band), "random"
      (uniform over the mask), "confidence" (the K most confident pixels, ties broken at
      random by `rng`; needs `confidence`, so it exists only in training with a teacher).
    rng: numpy Generator; the only source of randomness.
    confidence: hxw float confidence map aligned with `mask` (strategy "confidence").
    center_quantile, boundary_band: bands of the normalised distance field for the
      center/boundary ablations (ours; the paper gives no numbers).
    trace: a dict to fill with what the draw used (for figures): "field" (hxw float32, the
      normalised distance field the draw weights by, 0 outside the mask; None for "random"
      and "confidence"), "grid" ((rows, cols) of eq. 2, "sesam" only, else None) and
      "cells" (the grid cells drawn, "sesam" only). None (default) records nothing.

  Returns:
    min(k, area)x2 float32 (x, y) pixel coordinates relative to the box's top-left.
  """
  if strategy not in SAMPLING_STRATEGIES:
    raise ValueError(f"unknown sampling strategy {strategy!r}; choose from {SAMPLING_STRATEGIES}")
  ys, xs = np.nonzero(mask)
  if len(ys) == 0:
    raise ValueError("cannot sample points from an empty mask")
  if strategy == "confidence":
    if confidence is None:
      raise ValueError("sampling strategy 'confidence' needs a confidence map (the teacher's); "
                       "it exists only in training, not at label level")
    idx = top_k(confidence[ys, xs], k, rng)
  elif strategy == "random":
    idx = rng.choice(len(ys), size=min(k, len(ys)), replace=False)
  else:
    dist = distance_field(mask)[ys, xs]
    norm = dist / dist.max()
    if trace is not None:
      trace["field"] = np.zeros(mask.shape, np.float32)
      trace["field"][ys, xs] = norm
    if strategy == "center":
      pool = np.flatnonzero(norm >= center_quantile * norm.max())
      idx = pool[rng.choice(len(pool), size=min(k, len(pool)), replace=False)]
    elif strategy == "boundary":
      pool = np.flatnonzero(norm <= max(boundary_band, norm.min()))
      idx = pool[rng.choice(len(pool), size=min(k, len(pool)), replace=False)]
    else:
      idx = _sesam_indices(ys, xs, norm, mask.shape, k, rng, trace)
  if trace is not None:
    trace.setdefault("field", None)
    trace.setdefault("grid", None)
    trace.setdefault("cells", None)
  return np.stack([xs[idx], ys[idx]], axis=1).astype(np.float32)


def top_k(values: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """Indices of the k largest `values`, most confident first; ties at the k-th value broken
  at random by `rng` (uint8-quantised confidence ties often: a raster-order choice would
  pile the prompts up at the instance's top)."""
  n = len(values)
  if n <= k:
    return _ranked(np.arange(n), values)
  kth = np.partition(values, n - k)[n - k]  # The k-th largest value.
  above = np.flatnonzero(values > kth)
  ties = np.flatnonzero(values == kth)
  picked = np.concatenate([above, rng.choice(ties, size=k - len(above), replace=False)])
  return _ranked(picked, values)


def _ranked(indices: np.ndarray, values: np.ndarray) -> np.ndarray:
  return indices[np.argsort(-values[indices], kind="stable")]


def _sesam_indices(ys: np.ndarray, xs: np.ndarray, weight: np.ndarray, shape: tuple[int, int],
                   k: int, rng: np.random.Generator, trace: dict | None = None) -> np.ndarray:
  grid = grid_shape(*shape, k)
  cell = cell_index(ys, xs, shape, grid)
  occupied = np.unique(cell)
  chosen_cells = rng.choice(occupied, size=min(k, len(occupied)), replace=False)
  if trace is not None:
    trace["grid"], trace["cells"] = grid, chosen_cells
  # One weighted draw per chosen cell: the largest Efraimidis-Spirakis key wins.
  keys = np.log(rng.random(len(ys))) / np.maximum(weight, 1e-12)
  picked = []
  for c in chosen_cells:
    in_cell = np.flatnonzero(cell == c)
    picked.append(in_cell[np.argmax(keys[in_cell])])
  if len(picked) < k:
    # Fewer occupied cells than K (thin or sparse shapes): fill from the whole mask
    # with the same field, without repeating a pixel.
    rest = np.setdiff1d(np.arange(len(ys)), picked)
    if len(rest):
      picked.extend(rest[_weighted_pick(rng, weight[rest], k - len(picked))])
  return np.asarray(picked, np.int64)
