"""A SAM-free promptable segmenter: Felzenszwalb superpixels at three scales.

Candidate i is the union of the scale-i superpixels under the positive points
(minus those under negative points); box prompts take the superpixels with at
least half their area inside the box, clipped to it; mask prompts those with at
least half their area inside the mask. Scales go fine -> coarse, so the three
candidates grow like SAM's subpart/part/whole. Score: colour homogeneity,
1 / (1 + mean per-channel std / 32), a cheap stand-in for SAM's predicted IoU.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import skimage.segmentation

from sam_bridge.api import Prediction, PromptSet


class SuperpixelBackend:
  """Superpixel candidates (see module docstring); name "superpixel"."""

  is_oracle = False

  def __init__(self, *, scales: Sequence[float] = (100.0, 400.0, 1600.0), sigma: float = 0.8,
               min_size: int = 20):
    self.name = "superpixel"
    self.scales = tuple(scales)
    self.sigma = sigma
    self.min_size = min_size
    self._segs = None

  def set_image(self, image: np.ndarray, *, fine_label: np.ndarray | None = None) -> None:
    """Segments HxWx3 uint8 `image` at every scale once (fine_label is ignored)."""
    if image.ndim != 3 or image.shape[2] != 3:
      raise ValueError(f"image must be HxWx3 uint8, got {image.shape}")
    self._segs, self._stats = [], []
    flat = image.reshape(-1, 3).astype(np.float64)
    for scale in self.scales:
      seg = skimage.segmentation.felzenszwalb(image, scale=scale, sigma=self.sigma,
                                              min_size=self.min_size)
      n = int(seg.max()) + 1
      f = seg.ravel()
      count = np.bincount(f, minlength=n).astype(np.float64)
      s1 = np.stack([np.bincount(f, flat[:, c], n) for c in range(3)], 1)
      s2 = np.stack([np.bincount(f, flat[:, c] ** 2, n) for c in range(3)], 1)
      self._segs.append(seg)
      self._stats.append((count, s1, s2))

  def image_state(self) -> dict[str, np.ndarray]:
    """The segmentations (int32) and their per-segment colour sums, per scale."""
    if self._segs is None:
      raise RuntimeError("call set_image before image_state")
    state = {}
    for i, (seg, (count, s1, s2)) in enumerate(zip(self._segs, self._stats)):
      state.update({f"seg_{i}": seg.astype(np.int32), f"count_{i}": count, f"s1_{i}": s1, f"s2_{i}": s2})
    return state

  def load_image_state(self, state: dict[str, np.ndarray]) -> None:
    """Restores `image_state()`: no segmentation."""
    n = sum(k.startswith("seg_") for k in state)
    if n != len(self.scales):
      raise ValueError(f"superpixel state has {n} scales, this backend {len(self.scales)}")
    self._segs = [state[f"seg_{i}"] for i in range(n)]
    self._stats = [(state[f"count_{i}"], state[f"s1_{i}"], state[f"s2_{i}"]) for i in range(n)]

  def predict(self, prompts: Sequence[PromptSet]) -> list[Prediction]:
    if self._segs is None:
      raise RuntimeError("call set_image before predict")
    return [self._one(p) for p in prompts]

  def _one(self, p: PromptSet) -> Prediction:
    masks, scores = [], []
    for seg, (count, s1, s2) in zip(self._segs, self._stats):
      h, w = seg.shape
      lut = np.zeros(len(count), bool)
      clip = None
      if len(p.points):
        xi = np.clip(np.round(p.points[:, 0]).astype(int), 0, w - 1)
        yi = np.clip(np.round(p.points[:, 1]).astype(int), 0, h - 1)
        ids = seg[yi, xi]
        lut[ids[p.point_labels == 1]] = True
        lut[ids[p.point_labels == 0]] = False
      if p.box is not None:
        x0, y0, x1, y1 = [int(round(v)) for v in p.box]
        clip = (max(y0, 0), max(x0, 0), min(y1 + 1, h), min(x1 + 1, w))
        inside = np.bincount(seg[clip[0]:clip[2], clip[1]:clip[3]].ravel(), minlength=len(count))
        lut |= inside * 2 >= count
      if p.mask is not None:
        inside = np.bincount(seg[p.mask], minlength=len(count))
        lut |= (inside * 2 >= count) & (inside > 0)
      m = lut[seg]
      if clip is not None:
        box_mask = np.zeros_like(m)
        box_mask[clip[0]:clip[2], clip[1]:clip[3]] = True
        m &= box_mask
      n = count[lut].sum()
      if n > 0:
        mean = s1[lut].sum(0) / n
        std = np.sqrt(np.maximum(s2[lut].sum(0) / n - mean ** 2, 0)).mean()
        scores.append(1.0 / (1.0 + std / 32.0))
      else:
        scores.append(0.0)
      masks.append(m)
    return Prediction(np.stack(masks), np.asarray(scores, np.float32))
