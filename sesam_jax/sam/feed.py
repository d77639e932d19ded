"""SeSAM's feed: pipeline batches joined with SAM labels, refreshed while the steps run.

`SamFeed` extends the loop's `Feed` (sesam_jax.data.feed) with the SAM label bank:

  - a batch read from the pipeline (one step ahead of its use) sends its share of
    SAM requests right away (`SamLabelBank.submit`, carrying the batch's step, which
    seeds fresh prompts), so the bridge has a whole step to answer them;
    with sam.sampling=confidence the share goes out instead once the batch's step is
    done, with the teacher's confidence on its crops (the step's `aux["confidence"]`,
    uint8), so the answer serves the image's next visit;
  - just before a batch is used, finished results are collected and each example's
    SAM label is brought into its crop (`batch["sam"]`);
  - the teacher's confident labels of step t (the step's `aux["confident"]`) extend
    the weak labels once step t+1 is dispatched, never stalling the device;
  - the bank is saved with the train state (checkpoint item `sam_bank`).
All of this runs in `Feed.after_dispatch`, while the device computes.
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

  def _on_read(self, batch: Batch, step: int) -> None:
    if not self.bank.cfg.confidence:
      self.bank.submit(batch, step)  # Requests go out a step before the batch is used.

  def _join(self, batch: Batch, step: int) -> Batch:
    self.bank.collect()
    return {**batch, "sam": self.bank.batch_labels(batch)}

  def _observe(self, step: int, batch: Mapping[str, np.ndarray], aux: Mapping[str, Any]) -> None:
    # Step t's outputs are read once step t+1 is dispatched (t is done by then).
    self._flush_teacher()
    self._last = (step, batch, aux)

  def _flush_teacher(self) -> None:
    if self._last is not None:
      step, batch, aux = self._last
      self._last = None
      self.bank.update_extension(batch, local_rows(aux["confident"]))
      if self.bank.cfg.confidence:  # The batch's refreshes, with the teacher's confidence.
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
  if s.cache_embeddings:
    cache = CacheConfig(directory=s.cache_dir or str(Layout.of(workdir).sam_embeddings))
  return backend.service(config=resolver.refine_config(config), seed=config.seed,
                         max_pending=s.max_pending, timeout_s=s.timeout_s, fallback=s.fallback,
                         cache=cache)


def make_sam_feed(config: ml_collections.ConfigDict, iterator: Any, source: Any, weak_fn: Any,
                  workdir: str) -> SamFeed:
  """The SeSAM feed: a bank over `source` (decoded examples kept) with its own service."""
  bank_cfg = SamLabelConfig(
      refresh_every=config.sam.refresh_every, cache_embeddings=config.sam.cache_embeddings,
      wait_s=config.sam.wait_s, send_fine=config.sam.backend == "oracle",
      confidence=config.sam.sampling == "confidence")
  bank = SamLabelBank(source, weak_fn, start_service(config, workdir), bank_cfg, crop=config.crop)
  return SamFeed(iterator, bank, prewarm=config.sam.prewarm and config.sam.cache_embeddings)
