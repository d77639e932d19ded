"""The bridge tests' scene: two cars and a pedestrian touching one of them, on road."""

import numpy as np
import scipy.ndimage as ndi


def scene(h: int = 60, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
  """(image HxWx3 uint8, fine label HxW uint8): class 8 = car, 9 = pedestrian, 0 = road."""
  fine = np.zeros((h, w), np.uint8)
  fine[10:40, 10:40] = 8
  fine[10:40, 40:50] = 9
  fine[45:58, 55:75] = 8
  image = np.stack([fine * 20, fine * 10, 255 - fine * 20], -1).astype(np.uint8)
  return image, fine


def coarse(fine: np.ndarray, shrink: int = 1) -> np.ndarray:
  """A coarse weak label: each connected object shrunk by `shrink` px, the rest unlabeled."""
  weak = np.full(fine.shape, 255, np.uint8)
  for c in np.unique(fine):
    lab, n = ndi.label(fine == c)
    for i in range(1, n + 1):
      weak[ndi.binary_erosion(lab == i, iterations=shrink)] = c
  return weak
