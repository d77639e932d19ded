"""Host side of SeSAM training: per-image SAM labels, refreshed round-robin.

The bank keeps, for every training image it has seen, the latest SAM label at
full resolution and the teacher's latest confident pseudo-labels (>= theta2)
mapped back to full resolution (the "extension" of the weak label). Each step:

  1. `submit(batch, step)`: 1/M of the batch (positions p with (p + step) % M == 0,
     so an image is refreshed about every M-th visit) is sent to the bridge
     service, keyed by image id and carrying `step`: prompt sampling is seeded by
     (run seed, image id, step), so every refresh draws fresh prompts. With
     `cache_embeddings` the request is the full-resolution image + weak label +
     extension (the bridge encodes each image once and afterwards runs only the
     prompt decoder); without it, the request is the augmented crop itself (the
     paper's variation from weak views). With `confidence` (sam.sampling=confidence)
     the batch's teacher confidence goes along, mapped like the extension; it is
     kept only in the requests in flight, never per image.
  2. `collect()`: finished results are moved into the bank, never blocking
     longer than `wait_s`. A crop-space result is mapped back to full
     resolution (`augment.invert_geometry`).
  3. `batch_labels(batch)`: each example's full-resolution SAM label is brought
     into its crop with the example's recorded scale/crop/flip; examples whose
     refresh is still in flight use the label they had (counted as "stale"),
     and examples never refined yet get none (255, counted as "missing").
  4. `update_extension(batch, confident)`: the teacher's confident crop-space
     pseudo-labels replace the extension inside the crop window.

`prewarm()` does every image's first refresh (from the weak label alone, as
step -1) before training starts, so that the first steps have SAM labels too.
Labels and extensions are kept zlib-compressed (`label_store.PackedLabels`:
a Cityscapes-sized bank fits in a few hundred MB instead of 12 GB).
`get_state()` / `set_state()` carry them across a restart as they are packed (the
bank is an item of the run's orbax checkpoint, one file per process).
The source should keep decoded examples (`sesam_jax.data.memo.MemoSource`): a
refresh reads the full-resolution image the input pipeline just decoded.
The bridge's own failures surface through its service (SamServiceError), or
come back as the weak label with `fallback` set, which is counted here.
"""

from __future__ import annotations

import collections
import concurrent.futures
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
from sesam_jax.sam import label_store

# The step a pre-warm request carries (before step 0; seeds its prompts apart from every refresh).
PREWARM_STEP = -1
# Prompt sampling of requests without a teacher (the pre-warm of a `confidence` run).
PAPER_SAMPLING = "sesam"


@dataclasses.dataclass(frozen=True)
class SamLabelConfig:
  """Knobs of the SAM label bank (paper defaults where it gives one)."""
  refresh_every: int = 4          # M: each step refreshes 1/M of its batch
  cache_embeddings: bool = True   # requests at full resolution (bridge caches the encoder)
  wait_s: float = 0.0             # longest wait for in-flight results before a step
  send_fine: bool = False         # attach fine labels (oracle backend only)
  confidence: bool = False        # requests carry the teacher's confidence (sampling=confidence)


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
    self.hw: dict[int, tuple[int, int]] = {}     # index -> full-resolution size
    self._pending: dict[str, tuple[int, augment.Geometry | None]] = {}
    self.stats: collections.Counter = collections.Counter()
    self.bridge_seconds: collections.Counter = collections.Counter()  # encode/decode/geometry
    self._threads = min(8, os.cpu_count() or 1)  # Per-example host work of a step, side by side.
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None

  # --- requests ---------------------------------------------------------

  def refresh_positions(self, step: int, batch_size: int) -> list[int]:
    """Batch positions refreshed at `step` (round-robin, 1/M of the batch)."""
    m = self.cfg.refresh_every
    return [p for p in range(batch_size) if (p + step) % m == 0]

  def _full_hw(self, index: int) -> tuple[int, int]:
    if index not in self.hw:
      self.hw[index] = tuple(self.source[index]["label"].shape[:2])
    return self.hw[index]

  def _request(self, batch: Mapping[str, np.ndarray], p: int, step: int,
               confidence: np.ndarray | None = None, sampling: str | None = None):
    """The RefineRequest of batch position `p` and its pending record, or (None, None).

    Args:
      batch: host batch ("index", "aug"; crop-space requests also "image", "weak", "label").
      p: position in the batch.
      step: the step whose batch this is (`PREWARM_STEP` before step 0): seeds the prompts.
      confidence: CxC uint8 teacher confidence on this crop (sampling=confidence), or None.
      sampling: a sampling strategy for this request only (see `RefineRequest.sampling`).
    """
    index = int(batch["index"][p])
    geom = augment.Geometry.from_array(batch["aug"][p])
    example_id = self.source.ids[index]
    common = dict(step=int(step), sampling=sampling)
    if self.cfg.cache_embeddings:
      example = self.source[index]
      if example is None:  # Unreadable, skipped (`data.base.SkipUnreadable`).
        return None, None
      hw = self.hw[index] = tuple(example["label"].shape[:2])
      weak = self.weak_fn(index, example)
      if weak is None:  # Its weak label is unreadable, skipped (`SkipUnreadable.guard`).
        return None, None
      ext = self.extension.get(index)
      fine = example["label"] if self.cfg.send_fine else None
      conf = None
      if confidence is not None:  # The crop's confidence at full resolution, 0 outside it.
        conf = augment.invert_geometry(np.asarray(confidence, np.uint8), geom, hw, fill=0)
      request = RefineRequest(example_id, example["image"], weak, extension=ext, fine=fine,
                              confidence=conf, **common)
      return request, (index, None)
    ext = self.extension.get(index)
    ext_crop = None if ext is None else augment.apply_geometry(ext, geom, self.crop, nearest=True)
    fine = batch["label"][p] if self.cfg.send_fine else None
    conf = None if confidence is None else np.asarray(confidence, np.uint8)
    request = RefineRequest(example_id, np.asarray(batch["image"][p]), np.asarray(batch["weak"][p]),
                            extension=ext_crop, fine=fine, confidence=conf, **common)
    return request, (index, geom)

  def submit(self, batch: Mapping[str, np.ndarray], step: int,
             confidence: np.ndarray | None = None) -> int:
    """Sends this step's share of `batch` for refinement; returns how many went out.

    Args:
      batch: the host batch of `step`.
      step: its step: picks the share (round-robin) and seeds the requests' prompts.
      confidence: BxCxC uint8 teacher confidence on the batch's crops (value / 255), sent
        with each request (sampling=confidence); None otherwise.
    """
    sent = 0
    for p in self.refresh_positions(step, len(batch["index"])):
      example_id = self.source.ids[int(batch["index"][p])]
      if example_id in self._pending:
        self.stats["already_in_flight"] += 1  # Its previous refresh is not back yet.
        continue
      request, pending = self._request(batch, p, step,
                                       None if confidence is None else confidence[p])
      if request is None:
        continue
      try:
        self.service.submit(request, block=False)
      except queue.Full:
        self.stats["queue_full"] += 1  # Backpressure: skip, never block the trainer.
        continue
      self._pending[example_id] = pending
      sent += 1
    self.stats["sent"] += sent
    return sent

  # --- results ----------------------------------------------------------

  def _store(self, result) -> None:
    index, geom = self._pending.pop(result.example_id)
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

  def prewarm(self, *, progress: bool = True) -> int:
    """Refines every image that has no SAM label yet from its weak label alone, before step 0.

    This is the first refresh of each image, done up front: the bridge encodes
    each image once (filling its embedding cache) and the first steps already
    have SAM labels for every example instead of waiting for the round-robin
    to reach them. Needs `cache_embeddings` (full-resolution requests). Blocks:
    the requests go out as fast as the bridge's queue takes them. Requests carry
    step `PREWARM_STEP` (-1); with `confidence` (no teacher exists yet) they are
    sampled the paper's way (`PAPER_SAMPLING`), which the log says.

    Args:
      progress: show a progress bar.

    Returns:
      The number of images refined.
    """
    if not self.cfg.cache_embeddings:
      raise ValueError("SamLabelBank.prewarm needs cache_embeddings=True (full-resolution "
                       "requests); set sam.prewarm=False for the crop-space behaviour.")
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
      request, pending = self._request(batch, p, PREWARM_STEP, sampling=sampling)
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
    """`fn` over `items` on the bank's threads: unpacking, packing (zlib) and resampling
    (numpy, PIL) release the GIL, so a step's examples are handled side by side."""
    if len(items) <= 1 or self._threads <= 1:
      for item in items:
        fn(item)
      return
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(self._threads,
                                                         thread_name_prefix="sam-bank")
    for _ in self._pool.map(fn, items):  # Re-raises a worker's exception here.
      pass

  def batch_labels(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """BxCxC uint8 SAM labels for the batch's crops (255 where none)."""
    b = len(batch["index"])
    out = np.full((b, self.crop, self.crop), IGNORE_INDEX, np.uint8)
    have = []
    for p in range(b):
      index = int(batch["index"][p])
      if self.source.ids[index] in self._pending:
        self.stats["stale"] += 1
      if index in self.labels:
        have.append(p)
      else:
        self.stats["missing"] += 1

    def crop(p: int) -> None:
      geom = augment.Geometry.from_array(batch["aug"][p])
      out[p] = augment.apply_geometry(self.labels[int(batch["index"][p])], geom, self.crop,
                                      nearest=True)

    self._each(crop, have)
    return out

  def update_extension(self, batch: Mapping[str, np.ndarray], confident: np.ndarray) -> None:
    """Records the teacher's confident pseudo-labels (BxCxC uint8, 255 = not confident)."""
    positions: dict[int, list[int]] = collections.defaultdict(list)
    for p in range(len(batch["index"])):
      positions[int(batch["index"][p])].append(p)  # An image twice in a batch: one task.

    def update(index: int) -> None:
      ext = self.extension.get(index)  # A fresh array (unpacked), updated in place.
      if ext is None:
        ext = np.full(self._full_hw(index), IGNORE_INDEX, np.uint8)
      for p in positions[index]:
        geom = augment.Geometry.from_array(batch["aug"][p])
        augment.paste_crop(ext, np.asarray(confident[p], np.uint8), geom)
      self.extension[index] = ext

    self._each(update, list(positions))

  def close(self) -> None:
    """Stops the bank's threads (the service is closed by its owner)."""
    if self._pool is not None:
      self._pool.shutdown()
      self._pool = None

  # --- persistence (the checkpoint's `sam_bank` item) ---------------------

  def get_state(self) -> bytes:
    """The bank (labels, extensions, counters): its packed maps as they are, one buffer."""
    return label_store.to_bytes({"label": self.labels, "ext": self.extension},
                                {"stats": dict(self.stats)})

  def set_state(self, data: bytes) -> None:
    """Restores `get_state()`; results in flight at the time are simply re-requested later.

    A bank written by an older version (a pickled .npz) is not read, since unpickling a
    checkpoint could run code: the bank starts empty, says so in one line, and fills again as
    training refreshes its images (and the pre-warm, when it runs, refines them all up front).
    """
    if not label_store.is_packed_buffer(data):
      report.log("this checkpoint's SAM bank was written by an older version of sesam-jax "
                 "(pickled, so it is not read): resuming with an empty bank, which SAM "
                 "refreshes fill again")
      return
    extra = label_store.from_bytes(data, {"label": self.labels, "ext": self.extension})
    self.hw.update({i: self.labels.shape(i) for i in self.labels})
    self.stats = collections.Counter({k: int(v) for k, v in extra["stats"].items()})

  def summary(self) -> dict[str, float]:
    """Counters for logs: sent, received, stale, missing, fallbacks, ..., and the bridge's
    worker-side seconds by stage (`bridge_encode`, `bridge_decode`, `bridge_geometry`, ...)."""
    return {**self.stats, "images_with_sam_label": len(self.labels),
            "in_flight": len(self._pending),
            "bank_bytes": self.labels.nbytes + self.extension.nbytes,
            **{f"bridge_{k}": round(v, 4) for k, v in self.bridge_seconds.items()}}
