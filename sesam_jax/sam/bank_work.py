"""The SAM label bank's host work off the training loop's path: threads and crop pasting.

Two kinds of threads serve `SamLabelBank`:

  - `ExamplePool`: a step's per-example work (unpacking, resampling, pasting, packing: zlib,
    numpy and PIL release the GIL) side by side, the caller waiting for all of it;
  - `KeyedWriter`: one background thread writing the teacher's extensions in the order they
    came, while the loop goes on to its next step. A reader waits only for the writes to the
    images it reads (`wait(keys)`), so every read sees what a synchronous write would have left.

`paste_crops` is the write itself: an image's crop-space maps pasted into its full-resolution
map, unpacked and packed once per image however many crops of it the batch holds.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import numpy as np

from sesam_jax.data import augment


class ExamplePool:
  """`each(fn, items)`: `fn` over `items` on up to `threads` threads, created when first needed.

  Args:
    threads: the most threads (1: everything runs in the caller's thread).
    name: prefix of the threads' names.
  """

  def __init__(self, threads: int, name: str = "sam-bank") -> None:
    self.threads, self.name = int(threads), name
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None

  def each(self, fn: Callable[[Any], None], items: list) -> None:
    """Runs `fn` on every item and returns once all are done (re-raising a worker's error)."""
    if len(items) <= 1 or self.threads <= 1:
      for item in items:
        fn(item)
      return
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(self.threads,
                                                         thread_name_prefix=self.name)
    for _ in self._pool.map(fn, items):  # Re-raises a worker's exception here.
      pass

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown()
      self._pool = None


class KeyedWriter:
  """One background thread running writes in submission order, each to a set of keys.

  Meant to be driven from one thread (the training loop's): `submit` and `wait` are not
  themselves thread-safe. A write's error is raised by the next `submit`, `wait` or `close`.

  Args:
    name: the thread's name.
  """

  def __init__(self, name: str = "sam-bank-writer") -> None:
    self.name = name
    self._executor: concurrent.futures.ThreadPoolExecutor | None = None
    self._last: dict[Any, concurrent.futures.Future] = {}  # key -> the last write to it
    self._unchecked: list[concurrent.futures.Future] = []  # writes whose outcome is not read

  def submit(self, fn: Callable[[], None], keys: Iterable[Any]) -> None:
    """Queues `fn` (which writes `keys`) after every write queued before it."""
    self._drop_done()
    if self._executor is None:
      self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.name)
    future = self._executor.submit(fn)
    self._unchecked.append(future)
    for key in keys:
      self._last[key] = future

  def wait(self, keys: Iterable[Any] | None = None) -> None:
    """Returns once the writes to `keys` (None: every write) are done."""
    if keys is None:
      futures = set(self._last.values())
    else:
      futures = {self._last[k] for k in keys if k in self._last}
    concurrent.futures.wait(futures)
    self._drop_done()

  def _drop_done(self) -> None:
    """Forgets the finished writes, raising (once) the error of one that failed."""
    done: list[concurrent.futures.Future] = []
    pending: list[concurrent.futures.Future] = []
    for future in self._unchecked:  # One look at each: one finishing meanwhile stays pending.
      (done if future.done() else pending).append(future)
    self._unchecked = pending
    self._last = {k: f for k, f in self._last.items() if f in self._unchecked}
    for future in done:
      future.result()  # A failed write surfaces at the next call, not never.

  def close(self) -> None:
    """Waits for every write, then stops the thread."""
    try:
      self.wait()
    finally:
      if self._executor is not None:
        self._executor.shutdown()
        self._executor = None


def positions_by_index(indices: np.ndarray) -> dict[int, list[int]]:
  """Batch positions of each image (an image twice in a batch is one task)."""
  positions: dict[int, list[int]] = collections.defaultdict(list)
  for p, index in enumerate(np.asarray(indices).tolist()):
    positions[int(index)].append(p)
  return dict(positions)


def paste_crops(store: MutableMapping[int, np.ndarray], index: int, positions: list[int],
                aug: np.ndarray, crops: np.ndarray, fill: int, full_hw: tuple[int, int]) -> None:
  """Pastes an image's crop-space maps into its full-resolution map in `store`.

  Args:
    store: index -> HxW uint8 (`label_store.PackedLabels` or a dict).
    index: the image.
    positions: its positions in the batch, pasted in this order.
    aug: Bx4 float32 geometry rows of the batch (`augment.Geometry.as_array`).
    crops: BxCxC uint8 crop-space maps.
    fill: value of a map the store does not hold yet.
    full_hw: (H, W) of the image.
  """
  full = store.get(index)  # A fresh array (unpacked), updated in place.
  if full is None:
    full = np.full(full_hw, fill, np.uint8)
  for p in positions:
    augment.paste_crop(full, np.asarray(crops[p], np.uint8), augment.Geometry.from_array(aug[p]))
  store[index] = full
