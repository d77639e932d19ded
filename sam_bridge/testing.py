"""Backends for tests of the bridge itself: fast, deterministic, and faulty on request.

`BoxBackend` answers every prompt with three squares around the prompt points
(no model). `FaultyBackend` is a BoxBackend that misbehaves when the image's
top-left pixel says so (red channel value): 1 = the process dies, 2 = it hangs,
3 = it returns masks of the wrong shape, 4 = it raises. Module-level factories
make them buildable in a spawned worker.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from sam_bridge.api import Prediction, PromptSet

CRASH, HANG, GARBAGE, RAISE = 1, 2, 3, 4


class BoxBackend:
  """Three squares (half-sides 2, 6, 12 px) around the prompt points' centre."""

  is_oracle = False

  def __init__(self):
    self.name = "box (test backend)"
    self._hw = None

  def set_image(self, image: np.ndarray, *, fine_label: np.ndarray | None = None) -> None:
    self._hw = image.shape[:2]
    self._marker = int(image[0, 0, 0])

  def image_state(self) -> dict[str, np.ndarray]:
    return {"hw": np.asarray(self._hw, np.int64), "marker": np.asarray(self._marker, np.int64)}

  def load_image_state(self, state: dict[str, np.ndarray]) -> None:
    self._hw = tuple(int(v) for v in state["hw"])
    self._marker = int(state["marker"])

  def predict(self, prompts: Sequence[PromptSet]) -> list[Prediction]:
    h, w = self._hw
    out = []
    for p in prompts:
      if len(p.points):
        cx, cy = p.points.mean(0)
      elif p.box is not None:
        cx, cy = (p.box[0] + p.box[2]) / 2, (p.box[1] + p.box[3]) / 2
      else:
        ys, xs = np.nonzero(p.mask)
        cx, cy = xs.mean(), ys.mean()
      masks = np.zeros((3, h, w), bool)
      for i, r in enumerate((2, 6, 12)):
        masks[i, max(int(cy) - r, 0):int(cy) + r + 1, max(int(cx) - r, 0):int(cx) + r + 1] = True
      out.append(Prediction(masks, np.float32([0.9, 0.8, 0.7])))
    return out


class FaultyBackend(BoxBackend):
  """A BoxBackend that fails on purpose, chosen by the image's pixel [0, 0, 0]."""

  def predict(self, prompts: Sequence[PromptSet]) -> list[Prediction]:
    if self._marker == CRASH:
      os._exit(3)  # A hard crash: no exception, no cleanup.
    if self._marker == HANG:
      time.sleep(3600)
    if self._marker == RAISE:
      raise RuntimeError("deliberate failure")
    preds = super().predict(prompts)
    if self._marker == GARBAGE:
      return [Prediction(np.ones((2, 5, 5), np.uint8), np.float32([np.nan, 1.0])) for _ in preds]
    return preds


def make_box_backend() -> BoxBackend:
  return BoxBackend()


def make_faulty_backend() -> FaultyBackend:
  return FaultyBackend()
