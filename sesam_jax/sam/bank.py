"""Host side of SeSAM training: per-image SAM labels, refreshed every M steps.

The bank keeps, for every training image it has seen, the latest SAM label at
full resolution (with the step whose view made it) and the teacher's latest
confident pseudo-labels (>= theta2) mapped back to full resolution (the
"extension" of the weak label). Each step:

  1. `submit(batch, step)`: the due examples go to the bridge, keyed by image id
     with `step` (which seeds fresh prompts): `refresh="strict"` (the paper) the
     whole batch at each step t % M == 0, `"async"` 1/M of every batch (positions
     p with (p + step) % M == 0). `view="weak_aug"` (the paper, section 3.3) sends
     the step's weakly augmented crop; `view="full"` the full-resolution image (the
     bridge encodes each image once, then runs only the prompt decoder).
  2. `collect()` / `wait_due(step)`: finished results are moved into the bank (async
     waits at most `wait_s`; strict for every refresh due by `step`, at most
     `timeout_s`); a crop-space result is pasted back at full resolution.
  3. `settle(step)`: counts the refreshes due, done and skipped (`sam/refresh.py`).
  4. `batch_labels(batch, step)`: each example's full-resolution SAM label is brought
     into its crop with the example's recorded scale/crop/flip, and its age in
     steps is counted; examples never refined yet get none (255, "missing").
  5. `update_extension(batch, confident)`: the teacher's confident crop-space
     pseudo-labels replace the extension inside the crop window (the feed's, on a background
     thread while the next step runs: a request reading an image's extension waits for it).

With `confidence` (sam.sampling=confidence, the paper's baseline) the teacher's
confidence rides with each request: with `view="weak_aug"` the confidence on the
very crop SAM refines (the feed submits once the step has run; nothing is
stored); with `view="full"` the last confidence seen for the image, kept per image
at full resolution in 8 bits (`update_extension(..., confidence=...)`).

`prewarm()` does every image's first refresh from the full image and its weak
label alone (step -1) before training, in both views (the paper's initial SAM
labels, section 3.2). Labels and extensions are kept zlib-compressed
(`label_store.PackedLabels`); `get_state()` / `set_state()` carry them packed across
a restart (an item of the run's orbax checkpoint, one file per process). The source
should keep decoded examples (`sesam_jax.data.memo.MemoSource`). Bridge failures
surface through its service (SamServiceError), or come back as the weak label with
`fallback` set, which is counted here.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import queue
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sam_bridge.api import RefineRequest
from sesam_jax import report
from sesam_jax.data import augment
from sesam_jax.data.base import IGNORE_INDEX
from sesam_jax.sam import bank_work, label_store
from sesam_jax.sam.refresh import RefreshCounter

# The step a pre-warm request carries (before step 0; seeds its prompts apart from every refresh).
PREWARM_STEP = -1
# Prompt sampling of requests without a teacher (the pre-warm of a `confidence` run).
PAPER_SAMPLING = "sesam"


REFRESH_MODES = ("strict", "async")
VIEWS = ("weak_aug", "full")


@dataclasses.dataclass(frozen=True)
class SamLabelConfig:
  """Knobs of the SAM label bank (paper defaults where it gives one)."""
  refresh_every: int = 4          # M: SAM labels are refreshed every M steps
  refresh: str = "strict"         # strict: the whole batch every M-th step, waited for | async
  view: str = "weak_aug"          # weak_aug: refine the step's crop | full: the full image
  wait_s: float = 0.0             # async: longest wait for in-flight results before a step
  timeout_s: float = 300.0        # strict: longest wait for a step's due refreshes
  send_fine: bool = False         # attach fine labels (oracle backend only)
  confidence: bool = False        # requests carry the teacher's confidence (sampling=confidence)
  device: str = ""                # where SAM runs (`sam.device`), for the skip warning

  def __post_init__(self):
    if self.refresh not in REFRESH_MODES:
      raise ValueError(f"sam.refresh={self.refresh!r}: choose strict (the paper) or async.")
    if self.view not in VIEWS:
      raise ValueError(f"sam.view={self.view!r}: choose weak_aug (the paper) or full.")


class SamLabelBank:
  """Full-resolution SAM labels and teacher extensions per training image.

  Args:
    source: the training source (`source[i] -> {"id", "image", "label"}`).
    weak_fn: `fn(index, example) -> HxW uint8` full-resolution weak label (None: unreadable,
      skipped, as `base.SkipUnreadable.guard` returns it).
    service: the bridge service (`submit(request, block=False)`,
      `get(timeout=...)`, `in_flight`), e.g. `sam_bridge.service.RefineService`.
    cfg: SamLabelConfig.
    crop: side of the training crop.
  """

  def __init__(self, source: Any, weak_fn: Callable[[int, Mapping[str, Any]], np.ndarray],
               service: Any, cfg: SamLabelConfig, *, crop: int):
    if cfg.refresh_every < 1:
      raise ValueError(f"sam.refresh_every (M) must be >= 1, got {cfg.refresh_every}.")
    self.source, self.weak_fn, self.service, self.cfg, self.crop = source, weak_fn, service, cfg, crop
    self.labels = label_store.PackedLabels()     # index -> HxW uint8 SAM label
    self.extension = label_store.PackedLabels()  # index -> HxW uint8 confident pseudo-labels
    self.confidence = label_store.PackedLabels()  # index -> HxW uint8 teacher confidence
    self.hw: dict[int, tuple[int, int]] = {}     # index -> full-resolution size
    self.label_step: dict[int, int] = {}          # index -> the step whose view made its label
    # example id -> (index, crop geometry or None for a full-image request, step)
    self._pending: dict[str, tuple[int, augment.Geometry | None, int]] = {}
    self.refreshes = RefreshCounter(cfg.refresh, cfg.refresh_every, cfg.wait_s, cfg.device)
    self.stats: collections.Counter = collections.Counter()
    self.bridge_seconds: collections.Counter = collections.Counter()  # encode/decode/geometry
    self._pool = bank_work.ExamplePool(min(8, os.cpu_count() or 1))  # A step's examples.
    self._writer = bank_work.KeyedWriter()  # Extensions written while the next step runs.

  # --- requests ---------------------------------------------------------

  def refresh_positions(self, step: int, batch_size: int) -> list[int]:
    """Batch positions whose refresh is due at `step`: strict, the whole batch when
    step % M == 0 (none otherwise); async, 1/M of the batch (round-robin)."""
    m = self.cfg.refresh_every
    if self.cfg.refresh == "strict":
      return list(range(batch_size)) if step % m == 0 else []
    return [p for p in range(batch_size) if (p + step) % m == 0]

  def _full_hw(self, index: int) -> tuple[int, int]:
    if index not in self.hw:
      self.hw[index] = tuple(self.source[index]["label"].shape[:2])
    return self.hw[index]

  def _request(self, batch: Mapping[str, np.ndarray], p: int, step: int,
               confidence: np.ndarray | None = None, sampling: str | None = None, *,
               full: bool):
    """The RefineRequest of batch position `p` and its pending record, or (None, None).

    Args:
      batch: host batch ("index", "aug"; crop-space requests also "image", "weak", "label").
      p: position in the batch.
      step: the step whose batch this is (`PREWARM_STEP` before step 0): seeds the prompts.
      confidence: CxC uint8 teacher confidence on this crop (crop requests with
        sampling=confidence), or None.
      sampling: a sampling strategy for this request only (see `RefineRequest.sampling`).
      full: a full-image request (view=full, and the pre-warm), else the crop itself.
    """
    index = int(batch["index"][p])
    example_id = self.source.ids[index]
    self._writer.wait([index])  # Its extension (and confidence) as the last step left them.
    if full:
      example = self.source[index]
      if example is None:  # Unreadable, skipped (`data.base.SkipUnreadable`).
        return None, None
      self.hw[index] = tuple(example["label"].shape[:2])
      weak = self.weak_fn(index, example)
      if weak is None:  # Its weak label is unreadable, skipped (`SkipUnreadable.guard`).
        return None, None
      ext = self.extension.get(index)
      fine = example["label"] if self.cfg.send_fine else None
      conf = None
      if self.cfg.confidence and sampling is None:
        # The last confidence the teacher showed for this image (none yet: the paper's way).
        conf = self.confidence.get(index)
        if conf is None:
          sampling = PAPER_SAMPLING
      request = RefineRequest(example_id, example["image"], weak, extension=ext, fine=fine,
                              confidence=conf, step=int(step), sampling=sampling)
      return request, (index, None, int(step))
    geom = augment.Geometry.from_array(batch["aug"][p])
    ext = self.extension.get(index)
    ext_crop = None if ext is None else augment.apply_geometry(ext, geom, self.crop, nearest=True)
    fine = batch["label"][p] if self.cfg.send_fine else None
    conf = None if confidence is None else np.asarray(confidence, np.uint8)
    request = RefineRequest(example_id, np.asarray(batch["image"][p]), np.asarray(batch["weak"][p]),
                            extension=ext_crop, fine=fine, confidence=conf, step=int(step),
                            sampling=sampling)
    return request, (index, geom, int(step))

  def submit(self, batch: Mapping[str, np.ndarray], step: int,
             confidence: np.ndarray | None = None) -> int:
    """Sends the refreshes of `batch` due at `step` (`refresh_positions`); returns how many went.

    Args:
      batch: the host batch of `step`.
      step: its step: picks who is due and seeds the requests' prompts.
      confidence: BxCxC uint8 teacher confidence on the batch's crops (value / 255), sent
        with each crop request (sampling=confidence, view=weak_aug); None otherwise.
    """
    sent, due = 0, []
    for p in self.refresh_positions(step, len(batch["index"])):
      index = int(batch["index"][p])
      due.append(index)
      example_id = self.source.ids[index]
      if example_id in self._pending:
        self.stats["already_in_flight"] += 1  # Its previous refresh is not back yet.
        continue
      request, pending = self._request(batch, p, step,
                                       None if confidence is None else confidence[p],
                                       full=self.cfg.view == "full")
      if request is None:
        continue
      if not self._send(request):
        self.stats["queue_full"] += 1  # Backpressure: skip, never block the trainer.
        continue
      self._pending[example_id] = pending
      sent += 1
    self.stats["sent"] += sent
    self.refreshes.note_due(step, due)
    return sent

  def _send(self, request: RefineRequest) -> bool:
    """Submits without blocking; strict refreshes drain results while the queue is full
    (every one is waited for anyway), async ones are skipped (False)."""
    deadline = time.monotonic() + self.cfg.timeout_s
    while True:
      try:
        self.service.submit(request, block=False)
        return True
      except queue.Full:
        if self.cfg.refresh != "strict" or time.monotonic() > deadline:
          return False
        self.collect(wait_s=0.5)

  # --- results ----------------------------------------------------------

  def _store(self, result) -> None:
    index, geom, step = self._pending.pop(result.example_id)
    if result.fallback:
      self.stats["fallbacks"] += 1  # The service gave the weak label back.
    for part, seconds in result.info.get("seconds", {}).items():
      self.bridge_seconds[part] += float(seconds)  # Worker-side time, by stage.
    label = np.asarray(result.label, np.uint8)
    if geom is not None:
      # A crop-space result: back to full resolution, over the previous label.
      full = self.labels.get(index)
      if full is None:
        full = np.full(self._full_hw(index), IGNORE_INDEX, np.uint8)
      label = augment.paste_crop(full, label, geom)
    self.labels[index] = label
    self.label_step[index] = step
    self.stats["received"] += 1

  def collect(self, wait_s: float | None = None) -> int:
    """Moves finished results into the bank, waiting at most `wait_s` in all."""
    deadline = time.monotonic() + (self.cfg.wait_s if wait_s is None else wait_s)
    got = 0
    while self._pending:
      try:
        result = self.service.get(timeout=max(0.0, deadline - time.monotonic()))
      except (TimeoutError, KeyError):
        break
      self._store(result)
      got += 1
    return got

  def wait_due(self, step: int) -> int:
    """Strict refresh: waits until every refresh due by `step` is back (at most `timeout_s`).

    Returns:
      The number of results collected.

    Raises:
      TimeoutError: the bridge did not answer them within `timeout_s` (names the setting).
    """
    due_ids = {self.source.ids[i] for i in self.refreshes.due_by(step)}
    deadline = time.monotonic() + self.cfg.timeout_s
    got = 0
    while due_ids & self._pending.keys():
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        waiting = len(due_ids & self._pending.keys())
        raise TimeoutError(f"SAM refresh (sam.refresh=strict): {waiting} labels due by step "
                           f"{step} not back after {self.cfg.timeout_s} s (sam.timeout_s); "
                           "check the SAM bridge, or use sam.refresh=async.")
      try:
        result = self.service.get(timeout=remaining)
      except (TimeoutError, KeyError):
        continue
      self._store(result)
      got += 1
    return got

  def settle(self, step: int) -> None:
    """Counts the refreshes due by `step` as done or skipped (`RefreshCounter.settle`)."""
    self.refreshes.settle(step, self.label_step)

  def prewarm(self, *, progress: bool = True) -> int:
    """Refines every image that has no SAM label yet from its weak label alone, before step 0.

    This is the first refresh of each image, done up front and from the full image in
    either view (the paper's initial SAM labels, section 3.2): the first steps already
    have SAM labels for every example instead of waiting for the refreshes to reach
    them (with view=full the bridge also fills its embedding cache). Blocks: the
    requests go out as fast as the bridge's queue takes them. Requests carry step
    `PREWARM_STEP` (-1); with `confidence` (no teacher exists yet) they are sampled
    the paper's way (`PAPER_SAMPLING`), which the log says.

    Args:
      progress: show a progress bar.

    Returns:
      The number of images refined.
    """
    sampling = PAPER_SAMPLING if self.cfg.confidence else None
    if sampling:
      report.log(f"SAM pre-warm: no teacher yet, so its prompts use the paper's sampling "
                 f"({PAPER_SAMPLING}); refreshes during training use sam.sampling=confidence")
    todo = [i for i in range(len(self.source))
            if i not in self.labels and self.source.ids[i] not in self._pending]
    batch = {"index": np.asarray(todo, np.int32), "aug": np.zeros((len(todo), 4), np.float32)}
    received = self.stats["received"]
    bar = report.progress(None, total=len(todo), desc="SAM labels (pre-warm)", unit="img",
                          disable=None if progress else True)
    for p in range(len(todo)):
      request, pending = self._request(batch, p, PREWARM_STEP, sampling=sampling, full=True)
      if request is None:
        continue
      while True:
        try:
          self.service.submit(request, block=False)
          break
        except queue.Full:  # Drain finished results while the bridge works.
          bar.update(self.collect(wait_s=1.0))
      self._pending[request.example_id] = pending
      self.stats["sent"] += 1
      bar.update(self.collect(wait_s=0.0))
    # The service's per-example timeout, if it has one, bounds each wait.
    timeout_s = float(getattr(self.service, "timeout_s", None) or 300.0)
    while self._pending:
      got = self.collect(wait_s=timeout_s)
      if not got:
        raise TimeoutError(f"SAM pre-warm: no result from the bridge in {timeout_s} s "
                           f"({len(self._pending)} images in flight).")
      bar.update(got)
    bar.close()
    return self.stats["received"] - received

  def _each(self, fn: Callable[[Any], None], items: list) -> None:
    """`fn` over `items` on the bank's threads (`bank_work.ExamplePool`)."""
    self._pool.each(fn, items)

  def batch_labels(self, batch: Mapping[str, np.ndarray], step: int | None = None) -> np.ndarray:
    """BxCxC uint8 SAM labels for the batch's crops (255 where none).

    Args:
      batch: the host batch.
      step: the step that trains on it: the labels' ages (step - the step whose view made
        them) are counted (`RefreshCounter.note_ages`); None counts none.
    """
    b = len(batch["index"])
    out = np.full((b, self.crop, self.crop), IGNORE_INDEX, np.uint8)
    have, ages = [], []
    for p in range(b):
      index = int(batch["index"][p])
      if self.source.ids[index] in self._pending:
        self.stats["stale"] += 1
      if index in self.labels:
        have.append(p)
        if step is not None and index in self.label_step:
          ages.append(step - self.label_step[index])
      else:
        self.stats["missing"] += 1
    self.refreshes.note_ages(ages)

    def crop(p: int) -> None:
      geom = augment.Geometry.from_array(batch["aug"][p])
      out[p] = augment.apply_geometry(self.labels[int(batch["index"][p])], geom, self.crop,
                                      nearest=True)

    self._each(crop, have)
    return out

  def update_extension(self, batch: Mapping[str, np.ndarray], confident: np.ndarray,
                       confidence: np.ndarray | None = None, *, background: bool = False) -> None:
    """Records the teacher's confident pseudo-labels (BxCxC uint8, 255 = not confident) and,
    given, its BxCxC uint8 confidence (kept per image for view=full confidence sampling).

    With `background` the maps are written on the bank's writer thread and this returns at
    once; whatever reads an image's extension later (a request, `get_state`) waits for its
    writes first, so it sees what a synchronous call would have left.
    """
    positions = bank_work.positions_by_index(batch["index"])
    aug = np.array(batch["aug"], np.float32)  # Its own copy: the writer may run after the step.
    hw = {index: self._full_hw(index) for index in positions}  # The source, read here only.

    def update(index: int) -> None:
      bank_work.paste_crops(self.extension, index, positions[index], aug, confident, IGNORE_INDEX,
                            hw[index])
      if confidence is not None:
        bank_work.paste_crops(self.confidence, index, positions[index], aug, confidence, 0,
                              hw[index])

    if background:  # One image after another on the writer's thread, leaving the pool free.
      self._writer.submit(lambda: [update(index) for index in positions], positions)
    else:
      self._writer.wait(positions)  # Earlier background writes to these images come first.
      self._each(update, list(positions))

  def close(self) -> None:
    """Finishes the extensions' writes and stops the bank's threads (the service is closed by
    its owner)."""
    try:
      self._writer.close()
    finally:
      self._pool.close()

  # --- persistence (the checkpoint's `sam_bank` item) ---------------------

  def get_state(self) -> bytes:
    """The bank (labels, extensions, counters): its packed maps as they are, one buffer."""
    self._writer.wait()
    return label_store.to_bytes(
        {"label": self.labels, "ext": self.extension, "conf": self.confidence},
        {"stats": dict(self.stats), "label_step": {str(i): s for i, s in self.label_step.items()},
         "refreshes": self.refreshes.get_state()})

  def set_state(self, data: bytes) -> None:
    """Restores `get_state()`; results in flight at the time are simply re-requested later.

    A bank written by an older version (a pickled .npz) is not read, since unpickling a
    checkpoint could run code: the bank starts empty, says so in one line, and fills again as
    training refreshes its images (and the pre-warm, when it runs, refines them all up front).
    """
    self._writer.wait()
    if not label_store.is_packed_buffer(data):
      report.log("this checkpoint's SAM bank was written by an older version of sesam-jax "
                 "(pickled, so it is not read): resuming with an empty bank, which SAM "
                 "refreshes fill again")
      return
    extra = label_store.from_bytes(
        data, {"label": self.labels, "ext": self.extension, "conf": self.confidence})
    self.hw.update({i: self.labels.shape(i) for i in self.labels})
    self.stats = collections.Counter({k: int(v) for k, v in extra["stats"].items()})
    self.label_step = {int(i): int(s) for i, s in extra.get("label_step", {}).items()}
    self.refreshes.set_state(extra.get("refreshes", {}))

  def summary(self) -> dict[str, float]:
    """Counters for logs: sent, received, stale, missing, fallbacks, refresh_due / done /
    skipped, label_age_steps (the last step's mean), ..., and the bridge's worker-side
    seconds by stage (`bridge_encode`, `bridge_decode`, `bridge_geometry`, ...)."""
    return {**self.stats, **self.refreshes.summary(), "images_with_sam_label": len(self.labels),
            "in_flight": len(self._pending),
            "bank_bytes": self.labels.nbytes + self.extension.nbytes,
            **{f"bridge_{k}": round(v, 4) for k, v in self.bridge_seconds.items()}}
