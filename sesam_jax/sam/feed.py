"""SeSAM's feed: pipeline batches joined with SAM labels, refreshed while the steps run.

`SamFeed` extends the loop's `Feed` (sesam_jax.data.feed) with the SAM label bank:

  - a batch read from the pipeline (one step ahead of its use) sends its due SAM
    refreshes right away (`SamLabelBank.submit`, carrying the batch's step, which
    seeds fresh prompts), so the bridge has a whole step to answer them; with
    sam.sampling=confidence and sam.view=weak_aug they go out instead once the
    batch's step is done, with the teacher's confidence on the very crops SAM
    refines (the step's `aux["confidence"]`, uint8), and serve later visits;
  - just before a batch is used: with sam.refresh=strict the feed waits for every
    refresh due by this step (`wait_due`), with async at most sam.wait_s; the
    refreshes are counted (`settle`) and each example's SAM label is brought into
    its crop (`batch["sam"]`), its age counted;
  - the teacher's confident labels of step t (the step's `aux["confident"]`) extend
    the weak labels once step t+1 is dispatched, never stalling the device, on the bank's
    writer thread (with sam.view=full and confidence sampling, its confidence is kept per
    image too);
  - the bank is saved with the train state (checkpoint item `sam_bank`).
All of this runs in `Feed.after_dispatch`, while the device computes (a strict wait
included: the next batch's labels are waited for while the current step runs).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from sam_bridge.cache import CacheConfig
from sesam_jax import report
from sesam_jax.run.layout import SAM_BANK_ITEM, Layout
from sesam_jax.sam import resolver
from sesam_jax.sam.bank import SamLabelBank, SamLabelConfig
from sesam_jax.data.feed import Batch, Feed, local_rows


class SamFeed(Feed):
  """Batches with SAM labels (`batch["sam"]`, BxCxC uint8, 255 = none).

  Args:
    iterator: the grain training iterator.
    bank: the SAM label bank (owns the service).
    prewarm: refine every image without a SAM label before the first step.
  """

  def __init__(self, iterator: Any, bank: SamLabelBank, *, prewarm: bool = False) -> None:
    super().__init__(iterator, lookahead=1)
    self.bank = bank
    self.prewarm = prewarm
    self._last: tuple[int, Mapping[str, np.ndarray], Mapping[str, Any]] | None = None

  @property
  def _submit_after_step(self) -> bool:
    """Refreshes go out once their step ran (they need its teacher's confidence on the crop)."""
    return self.bank.cfg.confidence and self.bank.cfg.view == "weak_aug"

  def _on_read(self, batch: Batch, step: int) -> None:
    if not self._submit_after_step:
      self.bank.submit(batch, step)  # Requests go out a step before the batch is used.

  def _join(self, batch: Batch, step: int) -> Batch:
    if self.bank.cfg.refresh == "strict":
      self.bank.wait_due(step)
    self.bank.collect()
    self.bank.settle(step)
    return {**batch, "sam": self.bank.batch_labels(batch, step)}

  def _observe(self, step: int, batch: Mapping[str, np.ndarray], aux: Mapping[str, Any]) -> None:
    # Step t's outputs are read once step t+1 is dispatched (t is done by then).
    self._flush_teacher()
    self._last = (step, batch, aux)

  def _flush_teacher(self) -> None:
    if self._last is not None:
      step, batch, aux = self._last
      self._last = None
      cfg = self.bank.cfg
      keep = local_rows(aux["confidence"]) if cfg.confidence and cfg.view == "full" else None
      # Written on the bank's thread while the next step runs (requests wait for their images).
      self.bank.update_extension(batch, local_rows(aux["confident"]), confidence=keep,
                                 background=True)
      if self._submit_after_step:  # The batch's refreshes, with the teacher's confidence.
        self.bank.submit(batch, step, confidence=local_rows(aux["confidence"]))

  def checkpoint_items(self) -> dict[str, Any]:
    self._flush_teacher()  # The saved bank includes the last step's extension.
    return {**super().checkpoint_items(), SAM_BANK_ITEM: self.bank}

  def prepare(self) -> dict[str, Any]:
    """With `prewarm`: every image without a SAM label is refined before step 0 (timed).

    Returns:
      {"sam/backend": what refines (e.g. "oracle", "random SamModel vit_b"), and with the
      pre-warm "prewarm_seconds", "prewarmed" (images refined)}.
    """
    info: dict[str, Any] = {"sam/backend": getattr(self.bank.service, "backend_name", "")}
    if not self.prewarm:
      return info
    start = time.time()
    n = self.bank.prewarm()
    if n:
      report.log(f"SAM labels pre-warmed for {n} images; "
                 f"{len(self.bank.labels)} of {len(self.bank.source)} have one")
    return {**info, "prewarm_seconds": round(time.time() - start, 2), "prewarmed": n}

  def summary(self) -> dict[str, Any]:
    """The bank's counters as "sam/<name>" (logged, and in result.json: every key is in
    `sesam_jax.run.result.FIELDS` / `PATTERNS`)."""
    return {f"sam/{k}": v for k, v in self.bank.summary().items()}

  def result_fields(self) -> dict[str, Any]:
    """`summary()` and the run's refreshes as `sam_refresh` {due, done, skipped,
    mean_age_steps}, for result.json."""
    return {**self.summary(), "sam_refresh": self.bank.refreshes.result()}

  def close(self) -> None:
    self.bank.close()
    self.bank.service.close()


def start_service(config: ml_collections.ConfigDict, workdir: str,
                  backend: resolver.SamBackend | None = None) -> Any:
  """The refine service for `config.sam` (a worker process, or a thread for a JAX SAM)."""
  s = config.sam
  backend = backend or resolver.from_config(s)
  if backend.decoder_note:
    report.log(backend.decoder_note)
  cache = None
  if s.view == "full":  # Full-image requests: each image's encoder state is kept by id.
    cache = CacheConfig(directory=s.cache_dir or str(Layout.of(workdir).sam_embeddings))
  return backend.service(config=resolver.refine_config(config), seed=config.seed,
                         max_pending=s.max_pending, timeout_s=s.timeout_s, fallback=s.fallback,
                         cache=cache)


def make_sam_feed(config: ml_collections.ConfigDict, iterator: Any, source: Any, weak_fn: Any,
                  workdir: str) -> SamFeed:
  """The SeSAM feed: a bank over `source` (decoded examples kept) with its own service."""
  s = config.sam
  backend = resolver.from_config(s)
  bank_cfg = SamLabelConfig(
      refresh_every=s.refresh_every, refresh=s.refresh, view=s.view, wait_s=s.wait_s,
      timeout_s=s.timeout_s, send_fine=s.backend == "oracle",
      confidence=s.sampling == "confidence",
      device=f"{s.device}: SAM runs {backend.where}")
  bank = SamLabelBank(source, weak_fn, start_service(config, workdir, backend), bank_cfg,
                      crop=config.crop)
  return SamFeed(iterator, bank, prewarm=s.prewarm)
