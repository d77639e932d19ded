"""What the training loop feeds the step: host batches, read ahead of the step that uses them.

The loop dispatches step t, then calls `after_dispatch(t, batch, aux)`: all host work for the
following steps (reading the next batch from the pipeline, and whatever a method adds: SeSAM
submits that batch's SAM requests and joins SAM labels) runs while step t is on the device.

    feed.prepare()                                  # once, before the first step
    for step in ...:
      batch = feed.next(step)                       # ready (prepared during the last step)
      state, metrics, aux = step_fn(state, shard(batch), rng)
      feed.after_dispatch(step, batch, aux, more=step + 1 < num_steps)
    feed.checkpoint_items()                         # saved beside the train state

`Feed` reads `lookahead` batches beyond the next one, so that a method can start work on a batch
(SAM requests) steps before the batch is used. Its checkpointed data position is the iterator's
state *before* the oldest batch not yet used by a step, so a resumed run sees that batch again.
A method extends `Feed` by overriding `_on_read` (a batch was read), `_join` (complete a batch
just before it is used) and `_observe` (a dispatched step's `aux`, one step later).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]


class DataPosition:
  """grain's checkpoint protocol (`get_state` / `set_state` as JSON bytes) for a feed's position.

  The grain orbax handler saves it as `process_<i>-of-<n>.json`, one file per process.
  """

  def __init__(self, feed: "Feed") -> None:
    self._feed = feed

  def get_state(self) -> bytes:
    return json.dumps(self._feed.position()).encode()

  def set_state(self, state: bytes) -> None:
    self._feed.rewind(json.loads(state))

  def start_prefetch(self) -> None:
    if hasattr(self._feed.iterator, "start_prefetch"):
      self._feed.iterator.start_prefetch()


class Feed:
  """Pipeline batches for the loop (every method; SeSAM's `SamFeed` extends it).

  Args:
    iterator: the grain training iterator (`get_state`, `set_state`, `next`).
    lookahead: batches read beyond the next one (0: read each batch one step before its use).
  """

  def __init__(self, iterator: Any, *, lookahead: int = 0) -> None:
    self.iterator = iterator
    self.lookahead = int(lookahead)
    # Batches read and not yet used by a dispatched step: (iterator state before it, batch, step).
    self._queue: collections.deque[tuple[Any, Batch, int]] = collections.deque()
    self._ready: tuple[int, Batch] | None = None
    self._position = DataPosition(self)

  # --- the loop's interface ------------------------------------------------

  def prepare(self) -> dict[str, Any]:
    """Work before the first step (after a restore); returns fields for the run's summary."""
    return {}

  def next(self, step: int) -> Batch:
    """The host batch of `step` (prepared by the last `after_dispatch`, else now)."""
    if self._ready is None or self._ready[0] != step:
      self._ready = (step, self._prepare(step))
    return self._ready[1]

  def after_dispatch(self, step: int, batch: Mapping[str, np.ndarray], aux: Mapping[str, Any],
                     *, more: bool = True) -> None:
    """Host work once `step` is dispatched: its `aux` noted, the next batch made ready.

    Args:
      step: the step just dispatched.
      batch: its host batch (as `next` returned it).
      aux: its device outputs (read one step later, never blocking on this step).
      more: whether another step follows (False: nothing more is read).
    """
    self._queue.popleft()  # `step` has used its batch.
    self._ready = None
    self._observe(step, batch, aux)
    if more:
      self._ready = (step + 1, self._prepare(step + 1))

  def checkpoint_items(self) -> dict[str, Any]:
    """Objects saved beside the train state (name -> get_state/set_state object)."""
    return {"data": self._position}

  def summary(self) -> dict[str, Any]:
    """Counters for the logs and the run's result."""
    return {}

  def result_fields(self) -> dict[str, Any]:
    """Fields for the run's result.json (default `summary()`; may add structured ones)."""
    return self.summary()

  def close(self) -> None:
    """Releases what the feed holds (workers, services)."""

  # --- data position -------------------------------------------------------

  def position(self) -> Any:
    """The iterator state before the oldest unused batch (what a resumed run starts from)."""
    return self._queue[0][0] if self._queue else self.iterator.get_state()

  def rewind(self, state: Any) -> None:
    """Moves the iterator to a saved `position()`, dropping batches read ahead."""
    self.iterator.set_state(state)
    self._queue.clear()
    self._ready = None

  # --- for subclasses ------------------------------------------------------

  def _read(self, step: int) -> None:
    state = self.iterator.get_state()
    batch = next(self.iterator)
    self._queue.append((state, batch, step))
    self._on_read(batch, step)

  def _prepare(self, step: int) -> Batch:
    """Reads up to `step + lookahead` and returns the joined batch of `step` (at the queue head)."""
    while not self._queue or self._queue[-1][2] < step + self.lookahead:
      self._read(self._queue[-1][2] + 1 if self._queue else step)
    head_step = self._queue[0][2]
    if head_step != step:
      raise RuntimeError(f"feed: asked for the batch of step {step}, holds step {head_step}'s")
    return self._join(self._queue[0][1], step)

  def _on_read(self, batch: Batch, step: int) -> None:
    """A batch for `step` was read from the pipeline (`lookahead` steps before its use)."""

  def _join(self, batch: Batch, step: int) -> Batch:
    """The batch as the step gets it (SeSAM adds its SAM labels)."""
    return batch

  def _observe(self, step: int, batch: Mapping[str, np.ndarray], aux: Mapping[str, Any]) -> None:
    """The aux outputs of a dispatched step."""


def local_rows(array: Any) -> np.ndarray:
  """This host's rows of a batch-sharded jax array (or a numpy array), in order."""
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
