"""Prompts made from sparse weak labels (points, scribbles): the sparse-to-coarse stage.

Paper 3.2, "Types of Weak Supervision": SAM is prompted with the weak labels
themselves and the smallest of its three masks becomes the initial coarse mask.
A point annotation (a small blob) is prompted at its centre; a scribble stroke by
up to K points spaced evenly along it.
"""

from __future__ import annotations

import numpy as np


def stroke_points(mask: np.ndarray, *, k: int = 5, point_extent: int = 7) -> np.ndarray:
  """Prompt points for one weak stroke or point blob.

  A stroke is ordered along its principal axis (the direction of largest spread of
  its pixels) and K pixels at evenly spaced quantiles of that ordering are taken,
  which spaces them evenly along straight and gently curved strokes. A blob whose
  extent is at most `point_extent` pixels is a point: its pixel nearest the centroid.

  Args:
    mask: hxw bool, one connected component of the weak label (inside its box).
    k: maximum points per stroke (the paper's K = 5).
    point_extent: largest bounding-box side (pixels) treated as a single point.

  Returns:
    Nx2 float32 (x, y) relative to the box's top-left, 1 <= N <= k.
  """
  ys, xs = np.nonzero(mask)
  if len(ys) == 0:
    raise ValueError("empty stroke")
  coords = np.stack([xs, ys], axis=1).astype(np.float64)
  centre = coords.mean(0)
  if max(mask.shape) <= point_extent or len(ys) <= k:
    if len(ys) <= k and max(mask.shape) > point_extent:
      return coords.astype(np.float32)
    i = np.argmin(((coords - centre) ** 2).sum(1))
    return coords[i:i + 1].astype(np.float32)
  centred = coords - centre
  # Principal axis from the 2x2 covariance.
  _, vecs = np.linalg.eigh(centred.T @ centred)
  t = centred @ vecs[:, -1]
  order = np.argsort(t, kind="stable")
  picks = order[np.round(np.linspace(0, len(order) - 1, k)).astype(int)]
  return coords[np.unique(picks)].astype(np.float32)
