"""Choosing one of SAM's three candidates per prompt (paper 3.2, "Best SAM Mask")."""

from __future__ import annotations

import numpy as np

from sam_bridge.refine_config import SELECTION_STRATEGIES  # The names RefineConfig.selection takes.


def coverage_compatibility(masks: np.ndarray, weak_crop: np.ndarray,
                           bbox: tuple[int, int, int, int], *, return_areas: bool = False):
  """r_i = |S_i n W| / |W| and p_i = |S_i n W| / |S_i| for every candidate.

  Args:
    masks: NxHxW bool candidates S_i (full image).
    weak_crop: hxw bool weak mask W inside its bounding box.
    bbox: (y0, x0, y1, x1) of `weak_crop` in the image.

  Returns:
    (r, p): two N float64 arrays; p = 0 for an empty candidate; with
    `return_areas`, (r, p, areas) with areas the N candidate pixel counts.
  """
  y0, x0, y1, x1 = bbox
  inter = np.count_nonzero(masks[:, y0:y1, x0:x1] & weak_crop[None], axis=(1, 2))
  area = np.array([np.count_nonzero(m) for m in masks])  # Per mask: the fast bool path.
  w_area = max(int(np.count_nonzero(weak_crop)), 1)
  r = inter / w_area
  p = np.where(area > 0, inter / np.maximum(area, 1), 0.0)
  return (r, p, area) if return_areas else (r, p)


def select_mask(r: np.ndarray, p: np.ndarray, scores: np.ndarray, areas: np.ndarray | None = None,
                *, strategy: str = "sesam", tau1: float = 0.3, tau2: float = 0.7,
                rng: np.random.Generator | None = None) -> tuple[int, bool]:
  """Index of the chosen candidate.

  Args:
    r, p: coverage and compatibility of each candidate (see coverage_compatibility).
    scores: the backend's scores.
    areas: candidate pixel counts (strategy "smallest").
    strategy: "sesam" (keep r >= tau1 and p >= tau2, take the highest p; if none
      qualifies, the highest p), "best_score" (highest backend score), "random",
      "smallest" (smallest non-empty candidate: the sparse-to-coarse rule).
    tau1, tau2: the paper's thresholds (0.3, 0.7).
    rng: numpy Generator, needed by "random".

  Returns:
    (index, qualified): qualified says whether the choice passed both thresholds.
  """
  qualified_mask = (r >= tau1) & (p >= tau2)
  if strategy == "sesam":
    if qualified_mask.any():
      idx = int(np.argmax(np.where(qualified_mask, p, -1.0)))
    else:
      idx = int(np.argmax(p))
  elif strategy == "best_score":
    idx = int(np.argmax(scores))
  elif strategy == "random":
    if rng is None:
      raise ValueError("selection strategy 'random' needs rng")
    idx = int(rng.integers(len(r)))
  elif strategy == "smallest":
    if areas is None:
      raise ValueError("selection strategy 'smallest' needs areas")
    idx = int(np.argmin(np.where(areas > 0, areas, np.iinfo(np.int64).max)))
  else:
    raise ValueError(f"unknown selection strategy {strategy!r}; choose from {SELECTION_STRATEGIES}")
  return idx, bool(qualified_mask[idx])
