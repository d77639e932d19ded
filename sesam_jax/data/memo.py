"""Bounded host memory for what training reads again: decoded examples and weak labels.

The SAM side of training needs an example's full-resolution image and weak label each time it
refreshes that image's SAM label, right after the input pipeline decoded the same example for
its batch. These wrappers keep what was decoded (or generated) in a least-recently-used cache
bounded in **bytes** (cachetools), so the second read is free and host memory does not grow with
the dataset: Cityscapes' 2,975 training images at 1024x2048 are ~6 GB of pixels, far more than a
cache needs to hold to bridge the few steps between the pipeline's read and the bank's.

Both wrappers are thread-safe (grain reads with several threads) and picklable (a worker process
gets an empty cache of its own).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import cachetools
import numpy as np

WeakFn = Callable[[int, Mapping[str, Any]], np.ndarray]


def _nbytes(value: Any) -> int:
  """Bytes held by an array, or by the arrays of a dict (strings and scalars count 64)."""
  if isinstance(value, np.ndarray):
    return int(value.nbytes)
  if isinstance(value, Mapping):
    return sum(_nbytes(v) for v in value.values())
  return 64


class _Locked:
  """A byte-bounded LRU guarded by a lock; `max_bytes` 0 keeps nothing."""

  def __init__(self, max_bytes: int) -> None:
    self.max_bytes = int(max_bytes)
    self._reset()

  def _reset(self) -> None:
    self._cache = cachetools.LRUCache(maxsize=max(self.max_bytes, 1), getsizeof=_nbytes)
    self._lock = threading.Lock()
    self.hits = self.misses = 0

  def get_or_make(self, key: Any, make: Callable[[], Any]) -> Any:
    with self._lock:
      if key in self._cache:
        self.hits += 1
        return self._cache[key]
    value = make()  # Outside the lock: decoding is the slow part, let threads overlap.
    with self._lock:
      self.misses += 1
      if self.max_bytes and _nbytes(value) <= self.max_bytes:
        self._cache[key] = value
    return value

  @property
  def nbytes(self) -> int:
    return int(self._cache.currsize)

  def __getstate__(self) -> dict:
    return {"max_bytes": self.max_bytes}

  def __setstate__(self, state: dict) -> None:
    self.max_bytes = state["max_bytes"]
    self._reset()


class MemoSource:
  """A dataset source whose decoded examples are kept in a byte-bounded LRU.

  Args:
    source: any source (`len`, `[i] -> {"id", "image", "label"}`, `info`, `ids`).
    max_bytes: cache bound in bytes (0 = no cache).

  Consumers must not modify the arrays they get (the pipeline and the SAM bank only read them).
  """

  def __init__(self, source: Any, max_bytes: int) -> None:
    self.source = source
    self.info = getattr(source, "info", None)
    self.ids = source.ids
    self.memo = _Locked(max_bytes)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> Any:
    index = int(index)
    return self.memo.get_or_make(index, lambda: self.source[index])

  def __repr__(self) -> str:
    return f"MemoSource({self.source!r}, {self.memo.max_bytes >> 20} MiB)"


def memoize_weak_fn(weak_fn: WeakFn, max_bytes: int) -> WeakFn:
  """`weak_fn` with its labels (keyed by example index) in a byte-bounded LRU.

  Args:
    weak_fn: `fn(index, example) -> HxW uint8` (deterministic in the index).
    max_bytes: cache bound in bytes (0 = no cache).

  Returns:
    The same function, memoised; `.memo` exposes hits, misses and nbytes.
  """
  memo = _Locked(max_bytes)

  def cached(index: int, example: Mapping[str, Any]) -> np.ndarray:
    return memo.get_or_make(int(index), lambda: weak_fn(index, example))

  cached.memo = memo  # type: ignore[attr-defined]
  return cached
