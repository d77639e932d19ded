"""The candidates of each prompt set, and the chosen masks, for `refine` (sam_bridge.refine).

`Candidates` asks the backend for three candidates per prompt set and scores them against the
weak instance: at full resolution (any backend: `predict` masks) or at the decoder's own low
resolution (SAM: `predict_lowres`, then only the chosen mask of each prompt set is upsampled).
`trace_instance` records one prompt set for `RefineConfig(trace=True)`.
"""

from __future__ import annotations

import time

import numpy as np

from sam_bridge import geometry
from sam_bridge.api import Backend, InstanceTrace, PromptSet, RefineTrace


class Timer:
  """Wall seconds and process CPU seconds per phase (CPU time is robust on shared machines)."""

  def __init__(self):
    self.t = {"encode": 0.0, "decode": 0.0, "upsample": 0.0, "total": 0.0}
    self.cpu = {"encode": 0.0, "decode": 0.0, "upsample": 0.0, "total": 0.0}
    self._cpu0 = {}

  def start(self) -> float:
    t0 = time.perf_counter()
    self._cpu0[t0] = time.process_time()
    return t0

  def add(self, key: str, t0: float) -> None:
    self.t[key] = self.t.get(key, 0.0) + time.perf_counter() - t0
    self.cpu[key] = self.cpu.get(key, 0.0) + time.process_time() - self._cpu0.pop(t0)


def has_lowres(backend) -> bool:
  return all(hasattr(backend, a) for a in ("predict_lowres", "lowres_extent", "upsample"))


class Candidates:
  """The three candidates of each prompt set, and the chosen masks at working resolution.

  Full resolution (any backend): `backend.predict` masks; coverage/compatibility on them.
  Low resolution (SAM, `config.lowres_selection`): the decoder's sxs logits, restricted to
  the part the image covers; each working pixel belongs to the low-res cell its centre
  falls in, so an instance W becomes per-cell pixel counts, |S n W| = sum over S's cells
  of W's counts and |S| = sum of S's cells' pixel counts (exact wherever S is constant
  over a cell; the error is at S's boundary, a cell wide). Only the chosen candidate of
  each prompt set is upsampled, all of them in one batch.
  """

  def __init__(self, backend: Backend, prompts: list[PromptSet], timer: Timer, hw: tuple[int, int],
               lowres: bool):
    self.backend, self.hw, self.timer = backend, hw, timer
    self.lowres = bool(lowres and prompts and has_lowres(backend))
    t0 = timer.start()
    if not prompts:
      preds = []
    elif self.lowres:
      preds = backend.predict_lowres(prompts)
    else:
      preds = backend.predict(prompts)
    timer.add("decode", t0)
    if len(preds) != len(prompts):
      raise ValueError(f"backend {backend.name} returned {len(preds)} predictions for {len(prompts)} prompts")
    self.preds = preds
    if not self.lowres:
      for p in preds:
        p.validate(hw)
      return
    fh, fw = backend.lowres_extent()
    s = preds[0].logits.shape[-1]
    self.ch, self.cw = min(s, max(1, int(np.ceil(fh - 1e-6)))), min(s, max(1, int(np.ceil(fw - 1e-6))))
    h, w = hw
    self.cell_y = np.minimum(((np.arange(h) + 0.5) * fh / h).astype(np.int64), self.ch - 1)
    self.cell_x = np.minimum(((np.arange(w) + 0.5) * fw / w).astype(np.int64), self.cw - 1)
    self.npix = np.outer(np.bincount(self.cell_y, minlength=self.ch),
                         np.bincount(self.cell_x, minlength=self.cw)).ravel().astype(np.float64)
    for p in preds:
      if p.logits.ndim != 3 or p.logits.shape[0] != 3 or not np.all(np.isfinite(p.scores)):
        raise ValueError(f"backend {backend.name} returned low-res logits {p.logits.shape}; expected 3xsxs")

  def scores(self, i: int) -> np.ndarray:
    return self.preds[i].scores

  def stats(self, i: int, crop: np.ndarray, bbox: tuple[int, int, int, int]):
    """(r, p, areas) of prompt set i's candidates against the weak crop at `bbox`."""
    if not self.lowres:
      return geometry.coverage_compatibility(self.preds[i].masks, crop, bbox, return_areas=True)
    y0, x0, y1, x1 = bbox
    cells = (self.cell_y[y0:y1, None] * self.cw + self.cell_x[None, x0:x1])[crop]
    counts = np.bincount(cells, minlength=self.ch * self.cw).astype(np.float64)
    cand = (self.preds[i].logits[:, :self.ch, :self.cw] > 0).reshape(3, -1)
    inter = cand @ counts
    area = cand @ self.npix
    r = inter / max(float(crop.sum()), 1.0)
    p = np.where(area > 0, inter / np.maximum(area, 1.0), 0.0)
    return r, p, area

  def candidate_masks(self, i: int) -> np.ndarray:
    """3xHxW bool: all three candidates of prompt set i at working resolution (for traces)."""
    if not self.lowres:
      return self.preds[i].masks
    return self.backend.upsample(self.preds[i].logits)

  def chosen_masks(self, picks: list[tuple[int, int]]) -> list[np.ndarray]:
    """HxW bool working-resolution masks of the (prompt set, candidate) pairs in `picks`."""
    if not self.lowres:
      return [self.preds[i].masks[c] for i, c in picks]
    if not picks:
      return []
    t0 = self.timer.start()
    masks = self.backend.upsample(np.stack([self.preds[i].logits[c] for i, c in picks]))
    self.timer.add("upsample", t0)
    if masks.shape != (len(picks), *self.hw) or masks.dtype != bool:
      raise ValueError(f"backend {self.backend.name} upsampled to {masks.shape} {masks.dtype}; "
                       f"expected {len(picks)}x{self.hw[0]}x{self.hw[1]} bool")
    return list(masks)


def trace_instance(trace: RefineTrace, cands: Candidates, i: int, stage: str, class_id: int,
                    bbox: tuple[int, int, int, int], mask: np.ndarray, prompt: PromptSet,
                    r: np.ndarray, p: np.ndarray, idx: int, qualified: bool,
                    sampled: dict | None = None) -> None:
  """Appends prompt set i's InstanceTrace (only called with `config.trace`)."""
  sampled = sampled or {}
  grid = sampled.get("grid")
  edges = None if grid is None else geometry.grid_edges(mask.shape, grid)
  trace.instances.append(InstanceTrace(
      stage, int(class_id), tuple(int(v) for v in bbox), mask, prompt.points,
      sampled.get("field"), grid, edges, sampled.get("cells"), cands.candidate_masks(i),
      np.asarray(cands.scores(i)), np.asarray(r, np.float64), np.asarray(p, np.float64),
      int(idx), bool(qualified), cands.lowres))
