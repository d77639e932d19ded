"""Merging per-instance masks into one label map."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from sam_bridge.api import UNLABELED


def merge_masks(weak: np.ndarray, masks: Sequence[np.ndarray], classes: Sequence[int],
                priorities: Sequence[float], *, ignore_index: int = UNLABELED,
                boxes: Sequence[tuple[int, int, int, int] | None] | None = None,
                areas: Sequence[int] | None = None) -> np.ndarray:
  """Paints instance masks into a label, weak pixels last.

  Conflict rule (two masks of different classes claim a pixel): the mask with the
  higher priority wins (refine.py passes each mask's compatibility p with the weak
  label: the mask that agrees best with the annotation is trusted most); equal
  priorities go to the smaller mask (the more specific object), full ties to the later
  mask in `masks`. Pixels labeled in
  the weak label always keep their weak class; pixels no mask claims stay unlabeled.

  Args:
    weak: HxW uint8 weak label, `ignore_index` = unlabeled.
    masks: HxW bool masks (full image) or, with `boxes`, masks cropped to their box.
    classes: class id of each mask.
    priorities: one float per mask.
    ignore_index: the unlabeled value.
    boxes: optional (y0, x0, y1, x1) per mask when masks are crops; None = full.
    areas: pixel count of each mask if already known (saves a pass).

  Returns:
    HxW uint8 label.
  """
  out = np.full(weak.shape, ignore_index, np.uint8)
  if areas is None:
    areas = [int(np.count_nonzero(m)) for m in masks]
  # Paint ascending (priority, -area): later paint wins, so highest priority, then smallest.
  order = sorted(range(len(masks)), key=lambda i: (priorities[i], -areas[i]))
  for i in order:
    box = boxes[i] if boxes is not None else None
    if box is None:
      np.copyto(out, np.uint8(classes[i]), where=masks[i])  # No index arrays, unlike out[m] = c.
    else:
      y0, x0, y1, x1 = box
      np.copyto(out[y0:y1, x0:x1], np.uint8(classes[i]), where=masks[i])
  labeled = weak != ignore_index
  out[labeled] = weak[labeled]
  return out
