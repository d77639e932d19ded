"""A refine service that runs a backend object in a thread of the calling process.

`RefineService` builds its backend in a worker process from a spec: right for PyTorch SAM on a
GPU host. A backend that must live in the caller's process (a JAX SAM on the trainer's own
accelerator, where a second process cannot reach the devices) is built by the caller and handed
here; one thread runs `refine.refine` on it, with the same consumer interface and guarantees:
bounded (`max_pending`), keyed by example id, results checked against their request, failures
surfacing in the consumer (SamServiceError naming the example) or, with `fallback`, the weak
label counted in `stats`. A thread cannot be killed: an example that takes longer than
`timeout_s` is settled as failed (or fallen back) and its late result is dropped.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time

import numpy as np

from sam_bridge import refine as refine_lib
from sam_bridge.api import Backend, RefineRequest, RefineResult
from sam_bridge.cache import CacheConfig, EmbeddingCache
from sam_bridge.refine import RefineConfig
from sam_bridge.service import Consumer, SamServiceError, check_result


class LocalRefineService(Consumer):
  """Refines RefineRequests with `backend` in one thread of this process.

  Args:
    backend: a built Backend (e.g. the JAX SAM on this process's devices).
    config: RefineConfig used for every request.
    seed: sampling seed (combined with each example id).
    max_pending: the bound on requests in flight.
    timeout_s: seconds an example may take before it counts as failed.
    fallback: on failure return the weak label (counted) instead of raising.
    cache: CacheConfig: keep per-image encoder state (as RefineService does).
  """

  def __init__(self, backend: Backend, *, config: RefineConfig = RefineConfig(), seed: int = 0,
               max_pending: int = 8, timeout_s: float = 300.0, fallback: bool = False,
               cache: CacheConfig | None = None) -> None:
    config.validate()
    if cache is not None and not config.cache_embeddings:
      config = dataclasses.replace(config, cache_embeddings=True)
    self.backend, self.config, self.seed = backend, config, seed
    self.max_pending, self.timeout_s, self.fallback = max_pending, timeout_s, fallback
    self.backend_name = backend.name
    self._cache = None if cache is None else EmbeddingCache.from_config(cache)
    self._requests: queue.Queue = queue.Queue()
    self._cond = threading.Condition()
    self._in_flight: dict[str, RefineRequest] = {}   # submitted, not yet collected
    self._ready: collections.OrderedDict[str, object] = collections.OrderedDict()
    self._started: dict[str, float] = {}             # example id -> when the thread took it
    self.stats = {"submitted": 0, "completed": 0, "fallbacks": 0, "errors": 0, "timeouts": 0}
    self._closed = False
    self._thread = threading.Thread(target=self._work, name="sam-local-worker", daemon=True)
    self._thread.start()

  # --- worker thread ---

  def _work(self) -> None:
    while True:
      requests = [self._requests.get()]
      # Queued requests go together: a backend that encodes many images per call (the JAX
      # SAM on an accelerator) encodes their images in one batch first.
      batch = max(1, int(getattr(self.backend, "encode_batch", 1)))
      while len(requests) < batch and requests[-1] is not None:
        try:
          requests.append(self._requests.get_nowait())
        except queue.Empty:
          break
      stop = requests[-1] is None
      requests = [r for r in requests if r is not None and self._wanted(r)]
      if len(requests) > 1:
        try:
          refine_lib.encode_ahead(self.backend, requests, self.config, self._cache)
        except Exception:  # Each request's own refine() reports the failure.
          pass
      for request in requests:
        self._work_on(request)
      if stop:
        return

  def _wanted(self, request: RefineRequest) -> bool:
    with self._cond:
      eid = request.example_id
      return eid in self._in_flight and eid not in self._ready

  def _work_on(self, request: RefineRequest) -> None:
    with self._cond:
      if not self._wanted(request):
        return  # Settled (timed out) or dropped (closed) before it started.
      self._started[request.example_id] = time.monotonic()
    try:
      result, error = refine_lib.refine(self.backend, request, self.config, seed=self.seed,
                                        cache=self._cache), None
    except Exception as e:  # Everything a refinement raises reaches the consumer.
      result, error = None, f"refinement raised: {type(e).__name__}: {e}"
    with self._cond:
      self._started.pop(request.example_id, None)
      if self._wanted(request):
        self._settle(request, result, error)
      self._cond.notify_all()

  def _settle(self, request: RefineRequest, result: RefineResult | None, error: str | None) -> None:
    """Stores the outcome of `request` (the lock is held)."""
    eid = request.example_id
    if error is None:
      error = check_result(request, result)
    if error is None:
      self.stats["completed"] += 1
      self._ready[eid] = result
      return
    self.stats["errors"] += 1
    if self.fallback:
      self.stats["fallbacks"] += 1
      self._ready[eid] = RefineResult(eid, np.array(request.weak, np.uint8, copy=True),
                                      fallback=True, error=error,
                                      info={"backend": self.backend_name})
    else:
      self._ready[eid] = SamServiceError(f"example {eid!r}: {error}")

  def _check_timeouts(self) -> None:
    """Settles an example that has run longer than `timeout_s` (the lock is held)."""
    now = time.monotonic()
    for eid, started in list(self._started.items()):
      if now - started > self.timeout_s and eid not in self._ready:
        self.stats["timeouts"] += 1
        self._settle(self._in_flight[eid], None,
                     f"the SAM backend took longer than {self.timeout_s} s")

  # --- consumer API (as RefineService) ---

  @property
  def in_flight(self) -> int:
    """Requests submitted and not yet collected with get()."""
    return len(self._in_flight)

  def submit(self, request: RefineRequest, *, block: bool = True,
             timeout: float | None = None) -> None:
    """Queues one request; blocks while `max_pending` are in flight (see RefineService.submit)."""
    self._check_open()
    deadline = None if timeout is None else time.monotonic() + timeout
    with self._cond:
      if request.example_id in self._in_flight:
        raise ValueError(f"example {request.example_id!r} is already in flight; ids must be unique")
      while len(self._in_flight) >= self.max_pending:
        if not block or (deadline is not None and time.monotonic() > deadline):
          raise queue.Full(f"{len(self._in_flight)} requests in flight "
                           f"(max_pending={self.max_pending})")
        if len(self._ready) == len(self._in_flight):
          raise RuntimeError(f"all {len(self._in_flight)} in-flight results are done and "
                             "uncollected: call get() before submitting more")
        self._cond.wait(0.05)
      self._in_flight[request.example_id] = request
      self.stats["submitted"] += 1
    self._requests.put(request)

  def get(self, example_id: str | None = None, *, timeout: float | None = None) -> RefineResult:
    """The result for `example_id` (or the oldest finished one), waiting for it.

    Raises:
      SamServiceError: that example failed and `fallback` is False.
      KeyError: `example_id` is not in flight.
      TimeoutError: nothing arrived within `timeout`.
    """
    self._check_open()
    deadline = None if timeout is None else time.monotonic() + timeout
    with self._cond:
      if example_id is not None and example_id not in self._in_flight:
        raise KeyError(f"example {example_id!r} was not submitted (or was already collected)")
      if not self._in_flight:
        raise KeyError("nothing in flight")
      while True:
        self._check_timeouts()
        key = example_id if example_id is not None else next(iter(self._ready), None)
        if key is not None and key in self._ready:
          result = self._ready.pop(key)
          del self._in_flight[key]
          self._cond.notify_all()
          if isinstance(result, SamServiceError):
            raise result
          return result
        remaining = 0.05 if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
          raise TimeoutError(f"no result within {timeout} s")
        self._cond.wait(min(0.05, remaining))

  def close(self) -> None:
    """Stops the thread after the example it is working on; uncollected results are dropped."""
    if self._closed:
      return
    self._closed = True
    with self._cond:
      self._in_flight.clear()  # Queued requests the thread has not started are skipped.
      self._ready.clear()
    self._requests.put(None)
    self._thread.join(timeout=max(self.timeout_s, 1.0))

  def __enter__(self) -> "LocalRefineService":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError("LocalRefineService is closed")
