"""Instance separation: connected components of every class mask (paper eq. 1)."""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.ndimage as ndi
import skimage.measure

from sam_bridge.api import UNLABELED


@dataclasses.dataclass
class Instance:
  """One connected component of one class.

  Attributes:
    class_id: the class of every pixel in `mask`.
    bbox: (y0, x0, y1, x1) in the full label, exclusive ends.
    mask: (y1-y0)x(x1-x0) bool, the instance inside its bounding box.
  """
  class_id: int
  bbox: tuple[int, int, int, int]
  mask: np.ndarray

  @property
  def area(self) -> int:
    return int(self.mask.sum())

  @property
  def slices(self) -> tuple[slice, slice]:
    y0, x0, y1, x1 = self.bbox
    return slice(y0, y1), slice(x0, x1)

  def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
    """The instance as an HxW bool mask of the full image."""
    out = np.zeros(shape, bool)
    out[self.slices] = self.mask
    return out


def find_instances(label: np.ndarray, *, min_area: int = 16, connectivity: int = 2,
                   ignore_index: int = UNLABELED) -> list[Instance]:
  """Splits every class mask of `label` into connected components (eq. 1).

  One pass labels all classes at once: scikit-image joins neighbouring pixels of
  equal value, which is CC(M^(c)) for every c together.

  Args:
    label: HxW uint8 class ids, `ignore_index` = unlabeled.
    min_area: components with fewer pixels are dropped (noise specks give SAM
      meaningless prompts). Not from the paper, which does not state one.
    connectivity: 1 = 4-neighbourhood, 2 = 8-neighbourhood.
    ignore_index: the unlabeled value.

  Returns:
    Instances in scan order of their first pixel.
  """
  label = np.asarray(label)
  if label.ndim != 2:
    raise ValueError(f"label must be HxW, got shape {label.shape}")
  # skimage labels regions of equal value; `background` pixels form no component.
  cc = skimage.measure.label(label, background=ignore_index, connectivity=connectivity)
  return _instances_from_cc(cc, label, min_area)


def _instances_from_cc(cc: np.ndarray, label: np.ndarray, min_area: int) -> list[Instance]:
  if cc.max() == 0:
    return []
  areas = np.bincount(cc.ravel())
  out = []
  for idx, sl in enumerate(ndi.find_objects(cc), start=1):
    if sl is None or areas[idx] < min_area:
      continue
    crop = cc[sl] == idx
    # Any pixel of the component gives its class.
    first = np.argmax(crop)
    cls = int(label[sl].ravel()[first])
    out.append(Instance(cls, (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop), crop))
  return out


def class_instances(label: np.ndarray, *, min_area: int = 16,
                    ignore_index: int = UNLABELED) -> list[Instance]:
  """The no-instance-separation ablation: one "instance" per class (the whole class mask).

  Args:
    label: HxW uint8, `ignore_index` = unlabeled.
    min_area: classes with fewer pixels are dropped.
    ignore_index: the unlabeled value.

  Returns:
    One Instance per class present, with the class's bounding box.
  """
  out = []
  present = np.flatnonzero(np.bincount(label.ravel(), minlength=256)[:256] >= max(min_area, 1))
  for cls in present:
    if cls == ignore_index:
      continue
    m = label == cls
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    out.append(Instance(int(cls), (int(y0), int(x0), int(y1), int(x1)), m[y0:y1, x0:x1]))
  return out
