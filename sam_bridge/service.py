"""A worker process that owns a backend and refines requests sent to it.

The consumer (the training loop's host side, or `sesam refine`) calls
`submit(request)` and `get()`; the worker (spawned, so torch state never leaks
into a forked JAX process) builds its backend once and runs `refine.refine` on
each request. Guarantees:
  - bounded: at most `max_pending` requests are in flight (submitted, not yet
    collected); `submit` blocks (backpressure) or raises queue.Full;
  - keyed: results carry the request's example id and are checked against it
    (id, label shape and dtype) before they are handed out;
  - failures surface: a worker exception, a crash (process died) or a timeout
    (no answer within `timeout_s` of starting an example) raises SamServiceError
    naming the example in the consumer, or with `fallback=True` returns the weak
    label for that example (RefineResult.fallback, counted in `stats`); after a
    crash or timeout the worker is restarted and the other in-flight requests are
    resent, so none is lost or mixed up;
  - setup errors read as one line: a backend that cannot be built from the user's
    settings (bad weights, a missing package) raises `SamSetupError` at start with
    the worker's one-line reason, not the worker's traceback;
  - clean shutdown: `close()` (or the context manager) stops the worker, joining
    it and terminating it only if it does not exit in time. The worker ignores
    SIGINT (a terminal's Ctrl-C reaches the whole process group): the consumer
    decides when it stops.
With `cache=CacheConfig(...)` the worker keeps every image's encoder state
(sam_bridge.cache, keyed by example id, backend and working size) so that a
later request for the same image runs only the prompt decoder; with a cache
directory the states survive a worker restart. `torch_threads` (default 1)
bounds torch's CPU threads in the worker: it shares the host with the trainer.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
import traceback
from typing import Callable

import numpy as np

from sam_bridge import refine as refine_lib
from sam_bridge.api import RefineRequest, RefineResult, SamSetupError
from sam_bridge.backends import create_backend
from sam_bridge.cache import CacheConfig, EmbeddingCache
from sam_bridge.refine import RefineConfig

# How often an idle worker checks that the process that started it is still alive (s).
_PARENT_CHECK_S = 2.0
# Errors of building a backend that are the user's to fix (weights, packages): re-raised in the
# consumer as SamSetupError with their one line, not as a worker traceback.
_SETUP_ERRORS = (SamSetupError, FileNotFoundError, ImportError)


class SamServiceError(RuntimeError):
  """Refinement of one example failed (exception, crash or timeout in the worker)."""


def _set_torch_threads(n: int | None) -> None:
  """Caps torch's intra-op threads (env first: it counts only before torch is imported)."""
  if not n:
    return
  os.environ["OMP_NUM_THREADS"] = str(n)
  os.environ["MKL_NUM_THREADS"] = str(n)
  if "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(n)


def _worker_main(backend_spec, backend_kwargs, factory, config, seed, cache_config, torch_threads,
                 req_q, res_q, current) -> None:
  """Worker loop: build the backend, then refine requests until the None sentinel."""
  # Ctrl-C in a terminal reaches the whole process group: the consumer decides when the worker
  # stops (it checkpoints first, then closes the service), so the worker ignores it.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  _set_torch_threads(torch_threads)
  cache = None
  try:
    if factory is not None:
      backend = factory(**backend_kwargs)
    else:
      backend = create_backend(backend_spec, **backend_kwargs)
    _set_torch_threads(torch_threads)  # torch may have been imported by the backend just now.
    if cache_config is not None:
      cache = EmbeddingCache.from_config(cache_config)
    res_q.put(("ready", None, backend.name))
  except _SETUP_ERRORS as e:  # Bad weights, a missing package: one line for the user.
    res_q.put(("setup", None, str(e).strip().splitlines()[0] if str(e).strip() else repr(e)))
    return
  except BaseException:  # Everything else, so the consumer hears about it.
    res_q.put(("fatal", None, traceback.format_exc()))
    return
  parent = mp.parent_process()
  while True:
    try:
      item = req_q.get(timeout=_PARENT_CHECK_S)
    except queue.Empty:
      # The trainer was killed (SIGKILL, OOM): nobody will send the sentinel, so leave
      # instead of holding the model's memory as an orphan.
      if parent is not None and not parent.is_alive():
        break
      continue
    if item is None:
      break
    seq, request = item
    # Synchronous (shared memory), unlike the queue's feeder thread: it survives a hard crash.
    current.value = seq
    try:
      result = refine_lib.refine(backend, request, config, seed=seed, cache=cache)
      res_q.put(("ok", seq, result))
    except Exception:
      res_q.put(("error", seq, traceback.format_exc(limit=4)))


class Consumer:
  """What every refine service shares (`RefineService` here, `LocalRefineService` in a thread):
  `submit`, `get` and `in_flight` are each service's own; `map` is built on them."""

  def map(self, requests, *, ordered: bool = True):
    """Yields results for an iterable of requests, keeping up to max_pending in flight."""
    order = collections.deque()

    def take():
      result = self.get(order[0] if ordered else None)
      order.remove(result.example_id)
      return result

    for req in requests:
      if self.in_flight >= self.max_pending:
        yield take()
      self.submit(req)
      order.append(req.example_id)
    while order:
      yield take()


class RefineService(Consumer):
  """Refines RefineRequests in a worker process (see module docstring).

  Args:
    backend_spec: a `create_backend` spec ("oracle", "superpixel", "random:vit_b", ...).
    backend_kwargs: keywords for the backend (device, dtype, ...).
    config: RefineConfig used for every request.
    seed: sampling seed (combined with each example id).
    max_pending: the bound on requests in flight.
    timeout_s: seconds an example may take in the worker before it counts as hung.
    fallback: on failure return the weak label (counted) instead of raising.
    start_timeout_s: seconds to wait for the backend to be built.
    backend_factory: instead of a spec, a picklable module-level callable returning a
      Backend (tests use deliberately faulty ones).
    max_restarts: consecutive worker restarts (without a success between) before giving up.
    cache: CacheConfig: keep per-image encoder state in the worker (every request is
      then cached by its example id: send full-resolution images whose id names one
      image, not augmented crops; a changed image under the same id misses, it never
      reuses a wrong embedding). None = encode every request.
    torch_threads: torch CPU threads in the worker (None = torch's default).
  """

  def __init__(self, backend_spec: str = "oracle", *, backend_kwargs: dict | None = None,
               config: RefineConfig = RefineConfig(), seed: int = 0, max_pending: int = 8,
               timeout_s: float = 300.0, fallback: bool = False, start_timeout_s: float = 600.0,
               backend_factory: Callable | None = None, max_restarts: int = 3,
               cache: CacheConfig | None = None, torch_threads: int | None = 1):
    config.validate()
    if cache is not None and not config.cache_embeddings:
      config = dataclasses.replace(config, cache_embeddings=True)
    self._args = (backend_spec, dict(backend_kwargs or {}), backend_factory, config, seed, cache,
                  torch_threads)
    self.max_pending = max_pending
    self.timeout_s = timeout_s
    self.fallback = fallback
    self.start_timeout_s = start_timeout_s
    self.max_restarts = max_restarts
    self._ctx = mp.get_context("spawn")
    self._seq = 0
    self._by_seq: dict[int, RefineRequest] = {}  # In flight in the worker, by sequence number.
    self._seq_of: dict[str, int] = {}  # Example id -> sequence number, for everything uncollected.
    self._ready: collections.OrderedDict[str, RefineResult] = collections.OrderedDict()
    self._current: tuple[int, float] | None = None  # (seq, start time) of the example being worked on.
    self.stats = {"submitted": 0, "completed": 0, "fallbacks": 0, "errors": 0, "restarts": 0}
    self.backend_name = ""
    self._proc = None
    self._closed = False
    self._consecutive_restarts = 0
    self._start_worker()

  # --- lifecycle ---

  def _start_worker(self) -> None:
    # Fresh queues each time: a killed worker may have left the old ones half-read.
    self._req_q = self._ctx.Queue()
    self._res_q = self._ctx.Queue()
    self._current_seq = self._ctx.Value("q", -1, lock=False)
    self._proc = self._ctx.Process(target=_worker_main,
                                   args=(*self._args, self._req_q, self._res_q, self._current_seq),
                                   daemon=True, name="sam-bridge-worker")
    self._proc.start()
    deadline = time.monotonic() + self.start_timeout_s
    while True:
      try:
        kind, _, payload = self._res_q.get(timeout=0.05)
      except queue.Empty:
        if not self._proc.is_alive():
          raise SamServiceError(f"SAM worker exited with code {self._proc.exitcode} while building "
                                f"backend {self._args[0]!r}")
        if time.monotonic() > deadline:
          self._kill()
          raise SamServiceError(f"SAM worker did not build backend {self._args[0]!r} within "
                                f"{self.start_timeout_s:.0f} s")
        continue
      if kind == "ready":
        self.backend_name = payload
        break
      self._kill()
      if kind == "setup":
        raise SamSetupError(payload)
      raise SamServiceError(f"SAM worker could not build backend {self._args[0]!r}:\n{payload}")
    # Resend whatever was in flight in the previous worker, in order.
    for seq in sorted(self._by_seq):
      self._req_q.put((seq, self._by_seq[seq]))
    self._current = None

  def _kill(self) -> None:
    if self._proc is not None and self._proc.is_alive():
      self._proc.terminate()
      self._proc.join(5)
      if self._proc.is_alive():
        self._proc.kill()
        self._proc.join(5)

  def close(self) -> None:
    """Stops the worker (sentinel, join, terminate if stuck). Uncollected results are dropped."""
    if self._closed:
      return
    self._closed = True
    if self._proc is not None and self._proc.is_alive():
      try:
        self._req_q.put(None)
      except (OSError, ValueError):
        pass
      self._proc.join(10)
    self._kill()
    for q in (self._req_q, self._res_q):
      q.cancel_join_thread()
      q.close()

  def __enter__(self) -> "RefineService":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # --- consumer API ---

  @property
  def in_flight(self) -> int:
    """Requests submitted and not yet collected with get()."""
    return len(self._seq_of)

  def submit(self, request: RefineRequest, *, block: bool = True, timeout: float | None = None) -> None:
    """Queues one request; blocks while `max_pending` are in flight (backpressure).

    Raises:
      ValueError: the example id is already in flight.
      queue.Full: no room and `block` is False or `timeout` passed.
      RuntimeError: no room and every in-flight result is already done, waiting to be
        collected: call get() first (waiting would deadlock).
    """
    self._check_open()
    if request.example_id in self._seq_of:
      raise ValueError(f"example {request.example_id!r} is already in flight; ids must be unique")
    deadline = None if timeout is None else time.monotonic() + timeout
    while self.in_flight >= self.max_pending:
      if not block or (deadline is not None and time.monotonic() > deadline):
        raise queue.Full(f"{self.in_flight} requests in flight (max_pending={self.max_pending})")
      if len(self._ready) == self.in_flight:
        raise RuntimeError(f"all {self.in_flight} in-flight results are done and uncollected: "
                           "call get() before submitting more")
      self._pump(0.05)
    seq = self._seq
    self._seq += 1
    self._by_seq[seq] = request
    self._seq_of[request.example_id] = seq
    self._req_q.put((seq, request))
    self.stats["submitted"] += 1

  def get(self, example_id: str | None = None, *, timeout: float | None = None) -> RefineResult:
    """The result for `example_id` (or the oldest finished one), waiting for it.

    Raises:
      SamServiceError: that example failed and `fallback` is False.
      KeyError: `example_id` is not in flight.
      TimeoutError: nothing arrived within `timeout`.
    """
    self._check_open()
    if example_id is not None and example_id not in self._seq_of:
      raise KeyError(f"example {example_id!r} was not submitted (or was already collected)")
    if not self._seq_of:
      raise KeyError("nothing in flight")
    deadline = None if timeout is None else time.monotonic() + timeout
    pumped = False
    while True:
      key = example_id if example_id is not None else next(iter(self._ready), None)
      if key is not None and key in self._ready:
        result = self._ready.pop(key)
        del self._seq_of[key]
        if isinstance(result, SamServiceError):
          raise result
        return result
      remaining = 0.05 if deadline is None else deadline - time.monotonic()
      # Look at the worker's queue at least once, so that timeout=0 is a real poll.
      if remaining <= 0 and pumped:
        raise TimeoutError(f"no result within {timeout} s")
      self._pump(min(0.05, max(remaining, 0.0)))
      pumped = True

  # --- internals ---

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError("RefineService is closed")

  def _pump(self, wait: float) -> None:
    """Moves worker messages into `_ready`; detects crashes and timeouts."""
    try:
      kind, seq, payload = self._res_q.get(timeout=wait)
    except queue.Empty:
      self._check_worker()
      return
    except (EOFError, OSError):
      self._check_worker(force_dead=True)
      return
    if seq not in self._by_seq:
      return  # A late message from before a restart: that example was already settled.
    if kind == "ok":
      self._settle(seq, payload, None)
    elif kind == "error":
      self._settle(seq, None, f"refinement raised in the worker:\n{payload}")

  def _check_worker(self, force_dead: bool = False) -> None:
    seq_now = self._current_seq.value
    if seq_now >= 0 and (self._current is None or self._current[0] != seq_now):
      self._current = (seq_now, time.monotonic())
    dead = force_dead or not self._proc.is_alive()
    hung = (self._current is not None and self._current[0] in self._by_seq
            and time.monotonic() - self._current[1] > self.timeout_s)
    if not dead and not hung:
      return
    if dead:
      # Drain what the worker managed to send before dying.
      while True:
        try:
          kind, seq, payload = self._res_q.get_nowait()
        except (queue.Empty, EOFError, OSError):
          break
        if seq in self._by_seq:
          if kind == "ok":
            self._settle(seq, payload, None)
          elif kind == "error":
            self._settle(seq, None, f"refinement raised in the worker:\n{payload}")
    culprit = self._current[0] if self._current is not None and self._current[0] in self._by_seq else None
    if dead:
      why = f"the SAM worker died (exit code {self._proc.exitcode})"
    else:
      why = f"the SAM worker took longer than {self.timeout_s} s"
    self._kill()
    if culprit is not None:
      self._settle(culprit, None, why)
    self._consecutive_restarts += 1
    if self._consecutive_restarts > self.max_restarts:
      for seq in list(self._by_seq):
        self._settle(seq, None, f"{why}; restart limit ({self.max_restarts}) reached")
      raise SamServiceError(f"{why}; gave up after {self.max_restarts} restarts")
    self.stats["restarts"] += 1
    self._start_worker()

  def _settle(self, seq: int, result: RefineResult | None, error: str | None) -> None:
    request = self._by_seq.pop(seq)
    eid = request.example_id
    if error is None:
      error = check_result(request, result)
    if error is None:
      self.stats["completed"] += 1
      self._consecutive_restarts = 0
      self._ready[eid] = result
      return
    self.stats["errors"] += 1
    if self.fallback:
      self.stats["fallbacks"] += 1
      self._ready[eid] = RefineResult(eid, np.array(request.weak, np.uint8, copy=True),
                                      fallback=True, error=error, info={"backend": self.backend_name})
    else:
      self._ready[eid] = SamServiceError(f"example {eid!r}: {error}")


def check_result(request: RefineRequest, result) -> str | None:
  """Why a worker's answer cannot be this request's result, or None if it can."""
  if not isinstance(result, RefineResult):
    return f"worker returned {type(result).__name__}, not a RefineResult"
  if result.example_id != request.example_id:
    return f"worker returned the result of {result.example_id!r} for {request.example_id!r}"
  label = result.label
  if not isinstance(label, np.ndarray) or label.dtype != np.uint8 or label.shape != request.weak.shape:
    return (f"worker returned a label {getattr(label, 'shape', None)} {getattr(label, 'dtype', None)}, "
            f"expected {request.weak.shape} uint8")
  return None
