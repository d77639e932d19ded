"""Host-side weak geometric augmentation: random scale, crop, horizontal flip.

One random draw (a `Geometry`) is applied to the image, the weak label and the
fine label alike, and travels with the example, so that anything computed on
the full-resolution image later (SAM masks from cached embeddings) can be
brought into the same crop with `apply_geometry`.

The crop is resampled directly from the matching window of the source image
(PIL's `resize(box=...)`), which equals "resize the whole image by `scale`,
pad to at least `crop` with the fill value, take the window at (y0, x0), flip"
without ever materialising the scaled image (a 2x Cityscapes frame is 2048x4096).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from sesam_jax.data.base import IGNORE_INDEX



@dataclasses.dataclass(frozen=True)
class Geometry:
  """One draw of the weak geometric augmentation.

  Attributes:
    scale: resize factor applied to the source image (scaled size is
      round(H * scale) x round(W * scale)).
    y0, x0: top-left corner of the crop in the scaled image, which is padded
      at the bottom/right with the fill value when smaller than the crop.
    flip: whether the crop is mirrored left-right.
  """
  scale: float
  y0: int
  x0: int
  flip: bool

  def as_array(self) -> np.ndarray:
    """Packs the draw as float32 [scale, y0, x0, flip] (the batch's "aug" row)."""
    return np.array([self.scale, self.y0, self.x0, float(self.flip)], np.float32)

  @classmethod
  def from_array(cls, row: np.ndarray) -> "Geometry":
    return cls(float(row[0]), int(row[1]), int(row[2]), bool(row[3] > 0.5))


def scaled_size(hw: tuple[int, int], scale: float) -> tuple[int, int]:
  """Size (H, W) of an HxW image resized by `scale` (at least 1x1)."""
  return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def sample_geometry(rng: np.random.Generator, hw: tuple[int, int], crop: int, *,
                    scale_range: tuple[float, float] = (0.5, 2.0),
                    flip_prob: float = 0.5) -> Geometry:
  """Draws a random scale (uniform in `scale_range`), crop corner and flip."""
  scale = float(rng.uniform(*scale_range))
  sh, sw = scaled_size(hw, scale)
  y0 = int(rng.integers(0, max(sh - crop, 0) + 1))
  x0 = int(rng.integers(0, max(sw - crop, 0) + 1))
  return Geometry(scale, y0, x0, bool(rng.random() < flip_prob))


def _window(hw: tuple[int, int], geom: Geometry, crop: int) -> tuple[int, int, int, int]:
  """(scaled H, scaled W, window H, window W): the crop's part inside the scaled image."""
  sh, sw = scaled_size(hw, geom.scale)
  return sh, sw, max(0, min(crop, sh - geom.y0)), max(0, min(crop, sw - geom.x0))


def apply_geometry(array: np.ndarray, geom: Geometry, crop: int, *, nearest: bool,
                   fill: int = IGNORE_INDEX) -> np.ndarray:
  """Brings a full-resolution map into the augmented crop.

  Args:
    array: HxW or HxWxC uint8 (an image, a label map, a mask).
    geom: the draw recorded for the example.
    crop: side of the square crop.
    nearest: nearest-neighbour resampling (labels, masks); else bilinear (images).
    fill: value of padded pixels (255 for labels; images use 0).

  Returns:
    crop x crop (x C) uint8 array.
  """
  h, w = array.shape[:2]
  sh, sw, ch, cw = _window((h, w), geom, crop)
  out = np.full((crop, crop) + array.shape[2:], fill, dtype=array.dtype)
  if ch and cw:
    sy, sx = sh / h, sw / w  # Exact per-axis factors after rounding.
    box = (geom.x0 / sx, geom.y0 / sy, (geom.x0 + cw) / sx, (geom.y0 + ch) / sy)
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    window = Image.fromarray(array).resize((cw, ch), resample=resample, box=box)
    out[:ch, :cw] = np.asarray(window)
  if geom.flip:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def valid_mask(hw: tuple[int, int], geom: Geometry, crop: int) -> np.ndarray:
  """CxC uint8: 1 where the crop shows the image, 0 on the padding (after the flip)."""
  _, _, ch, cw = _window(hw, geom, crop)
  out = np.zeros((crop, crop), np.uint8)
  out[:ch, :cw] = 1
  return np.ascontiguousarray(out[:, ::-1]) if geom.flip else out


def _inverse_window(crop: int, geom: Geometry, full_hw: tuple[int, int]
                    ) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
  """Where a crop lands at full resolution: (rows, cols) slices and, for each of those full
  pixels, the crop row / column under its centre; None if the crop shows none of the image."""
  h, w = full_hw
  sh, sw, ch, cw = _window(full_hw, geom, crop)
  if ch == 0 or cw == 0:
    return None
  sy, sx = sh / h, sw / w
  # Full-image pixels whose footprint [Y, Y+1) meets the window (a contiguous range), each taking
  # the window pixel under its centre (clipped at the window's edge).
  ys, xs = np.arange(h), np.arange(w)
  ry = np.flatnonzero((ys + 1 > geom.y0 / sy) & (ys < (geom.y0 + ch) / sy))
  rx = np.flatnonzero((xs + 1 > geom.x0 / sx) & (xs < (geom.x0 + cw) / sx))
  cy = np.clip(np.floor((ry + 0.5) * sy - geom.y0).astype(int), 0, ch - 1)
  cx = np.clip(np.floor((rx + 0.5) * sx - geom.x0).astype(int), 0, cw - 1)
  if geom.flip:  # The crop is stored mirrored: column c of the window is crop column crop-1-c.
    cx = crop - 1 - cx
  return slice(ry[0], ry[-1] + 1), slice(rx[0], rx[-1] + 1), cy, cx


def invert_geometry(crop_map: np.ndarray, geom: Geometry, full_hw: tuple[int, int], *,
                    fill: int = IGNORE_INDEX) -> np.ndarray:
  """Brings a crop-space label map back to full resolution (nearest).

  The inverse of `apply_geometry` for label maps: pixels of the full image
  that the crop window does not cover get `fill`. Used to extend an image's
  full-resolution weak label with the teacher's confident pseudo-labels, which
  are predicted on the augmented crop.

  Args:
    crop_map: CxC uint8 map in crop coordinates (after flip).
    geom: the draw that produced the crop.
    full_hw: (H, W) of the full-resolution image.
    fill: value outside the crop window.

  Returns:
    HxW uint8.
  """
  out = np.full(tuple(full_hw), fill, dtype=crop_map.dtype)
  return paste_crop(out, crop_map, geom)


def paste_crop(full: np.ndarray, crop_map: np.ndarray, geom: Geometry) -> np.ndarray:
  """Writes a crop-space map into the part of the full-resolution map `full` that the crop
  shows (in place, nearest), leaving the rest of `full` as it is; returns `full`.

  What `invert_geometry` does without the full-size fill: an image's SAM label or teacher
  extension is updated inside one crop window at the cost of that window alone.
  """
  where = _inverse_window(crop_map.shape[0], geom, full.shape[:2])
  if where is not None:
    rows, cols, cy, cx = where
    # Two takes, not `crop_map[np.ix_(cy, cx)]`: the same pixels, ~4x faster at 1024x2048.
    full[rows, cols] = crop_map.take(cy, axis=0).take(cx, axis=1)
  return full
