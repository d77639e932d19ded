"""The oracle backend: three candidates cut from the fine label around the prompts.

For upper bounds and tests, never a SAM: its name is always "oracle". Fine
connected components (8-connected, per class) stand in for objects. For a
prompt the candidates are, in order:
  0 part:  the whole candidate restricted to a disk of radius
           `part_radius` * sqrt(area/pi) around each of the first `part_points`
           prompt points (default 1 point: at most a quarter of the object; with
           all K points the "part" covers nearly the whole object and is no longer
           a part);
  1 whole: the fine component(s) under the positive points;
  2 over:  the whole merged with every touching component of another class.
Scores are fixed (`scores`, default part 0.9 > whole 0.8 > over 0.7): a modelling
choice that mimics SAM's habit of scoring parts highest (paper Fig. 2), so that
best-score selection behaves as the paper describes; it is not a measurement.
Box prompts take the components with most of their area inside the box (or under
its centre), clipped to the box; mask prompts the components overlapping the
mask most.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.ndimage as ndi
import skimage.measure

from sam_bridge.api import UNLABELED, Prediction, PromptSet


class OracleBackend:
  """Candidates from the fine label (see module docstring)."""

  is_oracle = True

  def __init__(self, *, part_radius: float = 0.5, part_points: int = 1, scores: Sequence[float] = (0.9, 0.8, 0.7),
               ignore_index: int = UNLABELED):
    self.name = "oracle"
    self.part_radius = part_radius
    self.part_points = part_points
    self.scores = np.asarray(scores, np.float32)
    self.ignore_index = ignore_index
    self._comp = None

  def set_image(self, image: np.ndarray, *, fine_label: np.ndarray | None = None) -> None:
    """Labels the fine components. `fine_label`: HxW uint8, required."""
    if fine_label is None:
      raise ValueError("the oracle backend needs the fine label with every image "
                       "(RefineRequest.fine); use another backend when fine labels are absent")
    if fine_label.shape != image.shape[:2]:
      raise ValueError(f"fine label {fine_label.shape} does not match image {image.shape[:2]}")
    shifted = fine_label.astype(np.int32) + 1
    shifted[fine_label == self.ignore_index] = 0
    self._comp = skimage.measure.label(shifted, background=0, connectivity=2)
    n = int(self._comp.max())
    self._comp_class = np.full(n + 1, -1, np.int32)
    self._comp_class[self._comp.ravel()] = shifted.ravel() - 1
    self._tables()

  def _tables(self) -> None:
    self._objects = [None] + list(ndi.find_objects(self._comp))
    self._area = np.bincount(self._comp.ravel(), minlength=len(self._comp_class))

  def image_state(self) -> dict[str, np.ndarray]:
    """The fine components (int32 map) and each component's class."""
    if self._comp is None:
      raise RuntimeError("call set_image before image_state")
    return {"components": self._comp.astype(np.int32), "component_class": self._comp_class}

  def load_image_state(self, state: dict[str, np.ndarray]) -> None:
    """Restores `image_state()`."""
    self._comp = state["components"]
    self._comp_class = state["component_class"]
    self._tables()

  def predict(self, prompts: Sequence[PromptSet]) -> list[Prediction]:
    if self._comp is None:
      raise RuntimeError("call set_image before predict")
    return [self._one(p) for p in prompts]

  def _seeds(self, p: PromptSet) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Component ids of the prompt, the anchor points (Nx2 x,y), and a clip box."""
    h, w = self._comp.shape
    pts = p.points[p.point_labels == 1] if len(p.points) else np.zeros((0, 2), np.float32)
    ids: list[int] = []
    if len(pts):
      xi = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
      yi = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
      ids.extend(self._comp[yi, xi].tolist())
    box = None
    if p.box is not None:
      x0, y0, x1, y1 = [int(round(v)) for v in p.box]
      box = (max(y0, 0), max(x0, 0), min(y1 + 1, h), min(x1 + 1, w))
      crop = self._comp[box[0]:box[2], box[1]:box[3]]
      inside = np.bincount(crop.ravel(), minlength=len(self._area))
      ids.extend(np.flatnonzero(inside * 2 >= self._area).tolist())
      ids.append(int(self._comp[(box[0] + box[2] - 1) // 2, (box[1] + box[3] - 1) // 2]))
      if not len(pts):
        pts = np.array([[(box[1] + box[3] - 1) / 2, (box[0] + box[2] - 1) / 2]], np.float32)
    if p.mask is not None and p.mask.any():
      inside = np.bincount(self._comp[p.mask], minlength=len(self._area))
      inside[0] = 0
      if inside.any():
        ids.append(int(np.argmax(inside)))
      ids.extend(np.flatnonzero((inside * 2 >= self._area) & (inside > 0)).tolist())
      if not len(pts):
        ys, xs = np.nonzero(p.mask)
        pts = np.array([[xs.mean(), ys.mean()]], np.float32)
    ids_arr = np.unique(np.asarray([i for i in ids if i > 0], np.int64))
    return ids_arr, pts, box

  def _one(self, p: PromptSet) -> Prediction:
    h, w = self._comp.shape
    ids, pts, box = self._seeds(p)
    if len(ids) == 0:
      # Prompts on unlabeled fine pixels: nothing to show, three empty masks.
      return Prediction(np.zeros((3, h, w), bool), np.zeros(3, np.float32))
    lut = np.zeros(len(self._area), bool)
    lut[ids] = True
    whole = lut[self._comp]
    if box is not None:
      clip = np.zeros((h, w), bool)
      clip[box[0]:box[2], box[1]:box[3]] = True
      whole &= clip
    part = self._part(whole, pts)
    over = self._over(whole, ids, lut)
    return Prediction(np.stack([part, whole, over]), self.scores.copy())

  def _bbox(self, ids: np.ndarray) -> tuple[int, int, int, int]:
    sls = [self._objects[i] for i in ids]
    return (min(s[0].start for s in sls), min(s[1].start for s in sls),
            max(s[0].stop for s in sls), max(s[1].stop for s in sls))

  def _part(self, whole: np.ndarray, pts: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(whole)
    if len(ys) == 0 or len(pts) == 0:
      return whole.copy()
    radius = self.part_radius * np.sqrt(len(ys) / np.pi)
    # Squared distance of every whole-pixel to its nearest prompt point.
    d2 = np.full(len(ys), np.inf)
    for x, y in pts[:self.part_points]:
      d2 = np.minimum(d2, (xs - x) ** 2 + (ys - y) ** 2)
    part = np.zeros_like(whole)
    keep = d2 <= radius ** 2
    part[ys[keep], xs[keep]] = True
    return part

  def _over(self, whole: np.ndarray, ids: np.ndarray, lut: np.ndarray) -> np.ndarray:
    h, w = whole.shape
    y0, x0, y1, x1 = self._bbox(ids)
    y0, x0, y1, x1 = max(y0 - 1, 0), max(x0 - 1, 0), min(y1 + 1, h), min(x1 + 1, w)
    crop = whole[y0:y1, x0:x1]
    ring = ndi.binary_dilation(crop, structure=np.ones((3, 3), bool)) & ~crop
    neighbours = np.unique(self._comp[y0:y1, x0:x1][ring])
    classes = set(self._comp_class[ids].tolist())
    neighbours = [n for n in neighbours if n > 0 and self._comp_class[n] not in classes]
    if not neighbours:
      return whole.copy()
    lut2 = np.zeros_like(lut)
    lut2[neighbours] = True
    return whole | lut2[self._comp]
