"""Requests, results and the Backend protocol, with their numpy layouts.

Coordinates are always (x, y) pixels in the frame of the image given to
`Backend.set_image` (x = column, y = row), float32. Masks are HxW bool in that
same frame. A backend sets an image once (its embedding is computed once), then
predicts many prompt sets in batches; every prompt set yields exactly three
candidate masks with three scores (SAM's multimask output).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

UNLABELED = 255  # Weak/refined label value for "no class".
NUM_CANDIDATES = 3  # SAM's multimask output: three granularities per prompt set.


class SamSetupError(ValueError):
  """SAM cannot be set up as asked: weights missing, not a SAM checkpoint, the wrong variant, a
  backend's package missing. Its message is one line naming the file (or setting) and the fix;
  a service re-raises it in the consumer as it was raised in the worker."""


@dataclasses.dataclass
class PromptSet:
  """One prompt for one object.

  Attributes:
    points: Nx2 float32 (x, y) pixels; may be empty (0x2) when a box or mask is given.
    point_labels: N int32, 1 = foreground, 0 = background.
    box: 4 float32 (x0, y0, x1, y1) pixels, inclusive corners, or None.
    mask: HxW bool region prompt (SAM's mask input), or None.
  """
  points: np.ndarray
  point_labels: np.ndarray
  box: np.ndarray | None = None
  mask: np.ndarray | None = None

  @staticmethod
  def from_points(points_xy: np.ndarray, labels: np.ndarray | None = None) -> "PromptSet":
    """Foreground points (Nx2 (x, y)) as a prompt set; labels default to all 1."""
    pts = np.asarray(points_xy, np.float32).reshape(-1, 2)
    lab = np.ones(len(pts), np.int32) if labels is None else np.asarray(labels, np.int32)
    return PromptSet(points=pts, point_labels=lab)

  @property
  def kind(self) -> tuple[int, bool, bool]:
    """(num points, has box, has mask): prompt sets of one kind batch together."""
    return (len(self.points), self.box is not None, self.mask is not None)


@dataclasses.dataclass
class Prediction:
  """Three candidate masks for one prompt set.

  Attributes:
    masks: 3xHxW bool, in the order the backend produces them.
    scores: 3 float32, the backend's own quality estimate (SAM: predicted IoU).
  """
  masks: np.ndarray
  scores: np.ndarray

  def validate(self, shape: tuple[int, int]) -> None:
    """Raises ValueError unless masks are 3xHxW bool matching `shape` and scores 3 finite floats."""
    m, s = self.masks, self.scores
    if not isinstance(m, np.ndarray) or m.dtype != bool or m.shape != (NUM_CANDIDATES, *shape):
      raise ValueError(f"backend returned masks {getattr(m, 'shape', type(m))} "
                       f"{getattr(m, 'dtype', '')}; expected {NUM_CANDIDATES}x{shape[0]}x{shape[1]} bool")
    if not isinstance(s, np.ndarray) or s.shape != (NUM_CANDIDATES,) or not np.all(np.isfinite(s)):
      raise ValueError(f"backend returned scores {s!r}; expected {NUM_CANDIDATES} finite floats")


@dataclasses.dataclass
class LowResPrediction:
  """Three candidates for one prompt set as the backend's low-resolution logits.

  Attributes:
    logits: 3xsxs float32 logits (mask = logits > 0) in the backend's low-resolution
      frame; the image occupies its top-left `LowResBackend.lowres_extent()`.
    scores: 3 float32, as in Prediction.
  """
  logits: np.ndarray
  scores: np.ndarray


@runtime_checkable
class Backend(Protocol):
  """A promptable segmenter, frozen. `name` says what it is in every report."""

  name: str
  is_oracle: bool

  def set_image(self, image: np.ndarray, *, fine_label: np.ndarray | None = None) -> None:
    """Encodes one image (HxWx3 uint8) once; `fine_label` (HxW uint8) only for the oracle."""

  def predict(self, prompts: Sequence[PromptSet]) -> list[Prediction]:
    """Three candidates per prompt set for the current image, batched inside."""


@runtime_checkable
class CachingBackend(Backend, Protocol):
  """A Backend whose per-image encoder state can be saved and restored (sam_bridge.cache).

  `load_image_state(image_state())` after `set_image(x)` must leave the backend
  predicting exactly as after `set_image(x)` itself, without encoding again.
  """

  def image_state(self) -> dict[str, np.ndarray]:
    """The current image's encoder state as a flat dict of numeric numpy arrays."""

  def load_image_state(self, state: dict[str, np.ndarray]) -> None:
    """Makes `state` (from image_state) the current image."""


@runtime_checkable
class LowResBackend(Backend, Protocol):
  """A Backend that can hand out low-resolution candidates (SAM: its 256x256 logits).

  refine() then chooses among candidates at that resolution and upsamples only the
  chosen mask of each prompt set: SAM's full-size post-processing of all three
  candidates is most of its decode time otherwise.
  """

  def predict_lowres(self, prompts: Sequence[PromptSet]) -> list[LowResPrediction]:
    """Like predict, without upsampling."""

  def lowres_extent(self) -> tuple[float, float]:
    """(height, width) in low-resolution pixels that the current image covers (from the top-left)."""

  def upsample(self, logits: np.ndarray) -> np.ndarray:
    """Nxsxs float32 logits -> NxHxW bool masks of the current image (as predict would give)."""


@dataclasses.dataclass
class RefineRequest:
  """One example sent to the refiner / service.

  Attributes:
    example_id: the image id (stem); results are keyed by it.
    image: HxWx3 uint8.
    weak: HxW uint8 weak label, 255 = unlabeled.
    extension: optional HxW uint8 confident pseudo-labels (theta2) extending the weak
      label where it is 255; 255 = none.
    fine: optional HxW uint8 fine label, for the oracle backend only.
    cache_key: optional key under which the image's encoder state is cached (with a
      `cache` given to refine); None = the example id when `RefineConfig.cache_embeddings`
      is set, else no caching.
    step: the training step whose batch asked for this refresh (-1: the pre-warm before
      step 0). Prompt sampling is seeded by (seed, example id, step), so every refresh of
      an image draws fresh prompts and a run repeats its own draws; None = (seed, example
      id) only, for one-off refinement.
    confidence: optional HxW uint8 teacher confidence (value / 255, 0 = none), for
      sampling "confidence" (the teacher's softmax maximum on this image's last view).
    sampling: optional point-sampling strategy for this request only, overriding
      `RefineConfig.sampling` (a "confidence" run's pre-warm has no teacher yet and
      samples as "sesam").
  """
  example_id: str
  image: np.ndarray
  weak: np.ndarray
  extension: np.ndarray | None = None
  fine: np.ndarray | None = None
  cache_key: str | None = None
  step: int | None = None
  confidence: np.ndarray | None = None
  sampling: str | None = None


@dataclasses.dataclass
class InstanceRecord:
  """What happened to one instance (one connected component of one class)."""
  class_id: int
  area: int  # Pixels of the instance mask W (working resolution).
  bbox: tuple[int, int, int, int]  # (y0, x0, y1, x1), exclusive ends.
  points: np.ndarray  # Kx2 float32 (x, y) prompts sent (working resolution).
  chosen: int  # Index of the selected candidate, -1 if none was used.
  coverage: float  # r of the chosen candidate.
  compatibility: float  # p of the chosen candidate.
  qualified: bool  # Whether the chosen candidate passed both thresholds.
  stage: str = "instances"  # "sparse" (sparse-to-coarse) or "instances".


@dataclasses.dataclass
class InstanceTrace:
  """Everything refine() computed for one prompt set (`RefineConfig(trace=True)`), for figures.

  All coordinates are at the working resolution (`RefineTrace.working_hw`).

  Attributes:
    stage: "instances" (stage 2), "sparse" (a stroke of the sparse-to-coarse stage) or "naive".
    class_id: the instance's class.
    bbox: (y0, x0, y1, x1) of `mask`, exclusive ends.
    mask: hxw bool instance W inside its bounding box (the weak region prompted).
    points: Kx2 float32 (x, y) prompt points in image coordinates (0x2 for box/mask prompts).
    field: hxw float32 sampling probability field (normalised distance, 0 outside W), or None.
    grid: (rows, cols) of the sampling grid (eq. 2) over `bbox`, or None.
    grid_edges: (first row of each grid row + end, first column of each grid column + end),
      relative to the box (`geometry.sampling.grid_edges`), or None.
    cells: the grid cells the points were drawn from (row-major), or None.
    candidates: 3xHxW bool, the backend's three candidate masks (whole working image).
    scores: 3 float32, the backend's scores.
    coverage: 3 float64, r = |S n W| / |W| of each candidate.
    compatibility: 3 float64, p = |S n W| / |S| of each candidate.
    chosen: index of the selected candidate (-1: none used).
    qualified: whether the choice passed r >= tau1 and p >= tau2.
    lowres: r and p were computed on the backend's low-resolution logits (SAM), so they are
      close to, not exactly, the values of the upsampled `candidates`.
  """
  stage: str
  class_id: int
  bbox: tuple[int, int, int, int]
  mask: np.ndarray
  points: np.ndarray
  field: np.ndarray | None
  grid: tuple[int, int] | None
  grid_edges: tuple[list[int], list[int]] | None
  cells: np.ndarray | None
  candidates: np.ndarray
  scores: np.ndarray
  coverage: np.ndarray
  compatibility: np.ndarray
  chosen: int
  qualified: bool
  lowres: bool = False


@dataclasses.dataclass
class RefineTrace:
  """What refine() did to one image, at the working resolution (`RefineConfig(trace=True)`).

  Attributes:
    working_hw: (H, W) of the working resolution.
    image: HxWx3 uint8, the image as the backend saw it.
    weak: HxW uint8 weak label (255 = unlabeled).
    region: HxW uint8 label the instances were cut from (the stage-1 coarse label for
      points/scribbles, extended by the teacher's labels when given), None in naive mode.
    instances: one InstanceTrace per prompt set, in prompting order (sparse stage first).
  """
  working_hw: tuple[int, int]
  image: np.ndarray
  weak: np.ndarray
  region: np.ndarray | None = None
  instances: list[InstanceTrace] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RefineResult:
  """The SeSAM label for one example.

  Attributes:
    example_id: as in the request.
    label: HxW uint8 refined label, 255 = unlabeled.
    coarse: HxW uint8 stage-1 label for points/scribbles (sparse to coarse), else None.
    records: per-instance records (both stages).
    fallback: True when the service returned the weak label because refinement failed.
    error: the failure message when `fallback` is True.
    info: backend name and timings (seconds).
    trace: with `RefineConfig(trace=True)`, what refinement computed (RefineTrace); else None.
  """
  example_id: str
  label: np.ndarray
  coarse: np.ndarray | None = None
  records: list[InstanceRecord] = dataclasses.field(default_factory=list)
  fallback: bool = False
  error: str = ""
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  trace: RefineTrace | None = None
