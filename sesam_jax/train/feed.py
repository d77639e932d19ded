"""What the training loop feeds the step: plain batches, or batches joined with SAM labels.

`Feed` hands out the pipeline's batches as they come. `SamFeed` (method "sesam")
keeps one batch prefetched so that the SAM requests for it go out while the
current step runs, joins each batch with its SAM labels from the bank
(`sam_labels.SamLabelBank`), and feeds the teacher's confident labels of
step t back into the bank once step t+1 is dispatched (no device stall).

Both expose `checkpoint_item`, the object orbax/grain saves as the data
position: for `SamFeed` the position *before* the prefetched batch, so a
resumed run sees that batch again.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from sesam_jax import report
from sesam_jax.train import sam_labels


class Feed:
  """Batches straight from the pipeline (supervised, fixmatch, sam_baseline)."""

  def __init__(self, iterator: Any):
    self.iterator = iterator

  @property
  def checkpoint_item(self) -> Any:
    return self.iterator

  def next(self, step: int) -> dict[str, np.ndarray]:
    del step
    return next(self.iterator)

  def after_step(self, step: int, batch: Mapping[str, np.ndarray], confident: Any) -> None:
    del step, batch, confident

  def save(self, workdir: str, step: int) -> None:
    del workdir, step

  def restore(self, workdir: str, step: int) -> None:
    del workdir, step

  def prepare(self) -> dict[str, Any]:
    """Work before the first step (after a restore); returns fields for the run's summary."""
    return {}

  def summary(self) -> dict[str, Any]:
    return {}

  def close(self) -> None:
    pass


class _PositionBeforePrefetch:
  """grain's checkpoint protocol over a saved iterator state (bytes of JSON)."""

  def __init__(self, iterator: Any):
    self.iterator = iterator
    self.state: Any = None

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, state: bytes) -> None:
    self.state = json.loads(state)
    self.iterator.set_state(self.state)

  def start_prefetch(self) -> None:
    if hasattr(self.iterator, "start_prefetch"):
      self.iterator.start_prefetch()


def _local_rows(array: Any) -> np.ndarray:
  """This host's rows of a batch-sharded jax array, in order."""
  if isinstance(array, np.ndarray):
    return array
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, rows = set(), []
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:  # Replicas of one row block on several devices: keep one.
      seen.add(start)
      rows.append(np.asarray(s.data))
  return np.concatenate(rows)


class SamFeed(Feed):
  """Batches with SAM labels (`batch["sam"]`), refreshed through the bridge service.

  Args:
    iterator: the grain training iterator.
    bank: the SAM label bank (owns the service).
  """

  def __init__(self, iterator: Any, bank: sam_labels.SamLabelBank, *, prewarm: bool = False):
    super().__init__(iterator)
    self.bank = bank
    self.prewarm = prewarm
    self._position = _PositionBeforePrefetch(iterator)
    self._next: dict[str, np.ndarray] | None = None
    self._last: tuple[Mapping[str, np.ndarray], Any] | None = None

  @property
  def checkpoint_item(self) -> Any:
    return self._position

  def _prefetch(self, step: int) -> None:
    self._position.state = self.iterator.get_state()
    self._next = next(self.iterator)
    self.bank.submit(self._next, step)  # Requests go out before the step that needs them.

  def next(self, step: int) -> dict[str, np.ndarray]:
    if self._next is None:
      self._prefetch(step)
    batch = self._next
    self._prefetch(step + 1)
    self.bank.collect()
    return {**batch, "sam": self.bank.batch_labels(batch)}

  def _flush_extension(self) -> None:
    if self._last is not None:
      batch, confident = self._last
      self._last = None
      self.bank.update_extension(batch, _local_rows(confident))

  def after_step(self, step: int, batch: Mapping[str, np.ndarray], confident: Any) -> None:
    # Step t's confident labels are read once step t+1 is dispatched.
    self._flush_extension()
    self._last = (batch, confident)

  def _path(self, workdir: str, step: int) -> pathlib.Path:
    return pathlib.Path(workdir) / "sam_labels" / f"process{jax.process_index()}_{step}.npz"

  def save(self, workdir: str, step: int) -> None:
    """Writes the bank next to the checkpoint of `step` (temp name, then rename)."""
    self._flush_extension()
    path = self._path(workdir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(self.bank.state())
    os.replace(tmp, path)
    for old in sorted(path.parent.glob(f"process{jax.process_index()}_*.npz"),
                      key=lambda p: int(p.stem.rsplit("_", 1)[1]))[:-3]:
      old.unlink()

  def restore(self, workdir: str, step: int) -> None:
    path = self._path(workdir, step)
    if path.is_file():
      self.bank.load_state(path.read_bytes())
      report.log(f"SAM labels restored for {len(self.bank.labels)} images from {path}")
    else:
      report.log(f"no SAM labels saved at step {step} ({path}); they are rebuilt as training goes")

  def prepare(self) -> dict[str, Any]:
    """With `prewarm`: every image without a SAM label is refined before step 0 (timed)."""
    if not self.prewarm:
      return {}
    start = time.time()
    n = self.bank.prewarm()
    if n:
      report.log(f"SAM labels pre-warmed for {n} images; "
                 f"{len(self.bank.labels)} of {len(self.bank.source)} have one")
    return {"prewarm_seconds": round(time.time() - start, 2)}

  def summary(self) -> dict[str, Any]:
    return {f"sam/{k}": v for k, v in self.bank.summary().items()}

  def close(self) -> None:
    self.bank.service.close()


def make_sam_service(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """The bridge's worker process for `config.sam` (spawned; owns the torch model)."""
  from sam_bridge.cache import CacheConfig
  from sam_bridge.refine import RefineConfig
  from sam_bridge.service import RefineService
  s = config.sam
  spec = s.backend if not s.checkpoint else f"{s.backend}:{s.checkpoint}"
  kwargs = {} if s.backend in ("oracle", "superpixel") else {"device": s.device, "dtype": s.dtype}
  if s.decoder_dtype and s.backend.partition(":")[0] in ("transformers", "random"):
    kwargs["decoder_dtype"] = s.decoder_dtype
  refine_cfg = RefineConfig(weak_kind="coarse" if config.weak == "fine" else config.weak,
                            k=s.k, tau1=s.tau1, tau2=s.tau2, sampling=s.sampling,
                            selection=s.selection, prompt=s.prompt, instances=s.instances,
                            work_long_side=s.work_long_side)
  cache = None
  if s.cache_embeddings:
    cache = CacheConfig(directory=s.cache_dir or os.path.join(workdir, "sam_embeddings"))
  return RefineService(spec, backend_kwargs=kwargs, config=refine_cfg, seed=config.seed,
                       max_pending=s.max_pending, timeout_s=s.timeout_s, fallback=s.fallback,
                       cache=cache)


def make_feed(config: ml_collections.ConfigDict, iterator: Any, train_source: Any,
              workdir: str) -> Feed:
  """The feed for `config.method`."""
  if config.method != "sesam":
    return Feed(iterator)
  from sesam_jax.data.input_pipeline import weak_label_fn
  bank_cfg = sam_labels.SamLabelConfig(
      refresh_every=config.sam.refresh_every, cache_embeddings=config.sam.cache_embeddings,
      wait_s=config.sam.wait_s, send_fine=config.sam.backend == "oracle")
  weak_fn = weak_label_fn(train_source, config.weak, weak_seed=config.weak_seed)
  bank = sam_labels.SamLabelBank(train_source, weak_fn, make_sam_service(config, workdir),
                                 bank_cfg, crop=config.crop)
  return SamFeed(iterator, bank, prewarm=config.sam.prewarm and config.sam.cache_embeddings)
