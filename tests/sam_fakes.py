"""SAM-bridge backends for tests of the bridge: fast, deterministic, and faulty on request.

`BoxBackend` answers every prompt with three squares around the prompt points
(no model). `FaultyBackend` is a BoxBackend that misbehaves when the image's
top-left pixel says so (red channel value): 1 = the process dies, 2 = it hangs,
3 = it returns masks of the wrong shape, 4 = it raises. Module-level factories
make them buildable in a spawned worker: it imports this module as `tests.sam_fakes`, found
through the sys.path the worker inherits (multiprocessing's spawn), so tests run from the
repository root. Only numpy and `sam_bridge` here: the bridge's worker never imports jax.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np
import scipy.ndimage as ndi

from sam_bridge.api import LowResPrediction, Prediction, PromptSet

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


class LowResBoxBackend(BoxBackend):
  """A BoxBackend that also speaks the low-resolution protocol, like SAM's decoder.

  Its logits live on a grid 4x coarser than the image (padded to a square, as SAM's
  256x256 frame): each cell's logit is the square's coverage of the cell minus 1/2, and
  `upsample` interpolates them bilinearly, so low-res selection meets the same
  boundary blur it meets with SAM.
  """

  def __init__(self, factor: int = 4):
    super().__init__()
    self.name = "box low-res (test backend)"
    self.factor = factor

  def lowres_extent(self) -> tuple[float, float]:
    return self._hw[0] / self.factor, self._hw[1] / self.factor

  def _side(self) -> int:
    return -(-max(self._hw) // self.factor)

  def predict_lowres(self, prompts: Sequence[PromptSet]) -> list[LowResPrediction]:
    f, s = self.factor, self._side()
    out = []
    for pred in self.predict(prompts):
      padded = np.zeros((3, s * f, s * f), np.float32)
      padded[:, :self._hw[0], :self._hw[1]] = pred.masks
      logits = padded.reshape(3, s, f, s, f).mean((2, 4)) - 0.5
      out.append(LowResPrediction(logits.astype(np.float32), pred.scores))
    return out

  def upsample(self, logits: np.ndarray) -> np.ndarray:
    f = self.factor
    h, w = self._hw
    out = np.zeros((len(logits), h, w), bool)
    for i, lg in enumerate(logits):
      # Cell centres sit at (j + 0.5) * f - 0.5 in image pixels: sample between them linearly.
      ys = (np.arange(h) + 0.5) / f - 0.5
      xs = (np.arange(w) + 0.5) / f - 0.5
      grid = np.meshgrid(ys, xs, indexing="ij")
      out[i] = ndi.map_coordinates(lg, grid, order=1, mode="nearest") > 0
    return out


class SlowBackend(BoxBackend):
  """A BoxBackend that takes `seconds` per image (a SAM slower than the training steps)."""

  def __init__(self, seconds: float = 0.5):
    super().__init__()
    self.name, self.seconds = "slow box (test backend)", seconds

  def set_image(self, image: np.ndarray, *, fine_label: np.ndarray | None = None) -> None:
    time.sleep(self.seconds)
    super().set_image(image, fine_label=fine_label)


def make_box_backend() -> BoxBackend:
  return BoxBackend()


def make_faulty_backend() -> FaultyBackend:
  return FaultyBackend()


def make_thread_probe_backend() -> BoxBackend:
  """A BoxBackend whose name reports torch's thread count in the worker (imports torch)."""
  import torch
  backend = BoxBackend()
  backend.name = f"box (test backend) torch_threads={torch.get_num_threads()}"
  return backend
