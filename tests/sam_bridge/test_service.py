"""RefineService: ordering, keying, backpressure, and deliberate worker faults."""

import queue

import numpy as np
import pytest

from tests import sam_fakes
from sam_bridge.api import RefineRequest, RefineResult
from sam_bridge.service import RefineService, SamServiceError, check_result


def _request(i: int, marker: int = 0) -> RefineRequest:
  rng = np.random.default_rng(i)
  image = rng.integers(10, 250, (40, 48, 3), dtype=np.uint8)
  image[0, 0, 0] = marker
  weak = np.full((40, 48), 255, np.uint8)
  # A per-example square whose class encodes the example, so mix-ups are visible.
  y, x = 5 + i % 10, 5 + (3 * i) % 20
  weak[y:y + 12, x:x + 12] = i % 7
  return RefineRequest(f"img{i}", image, weak)


def _check(result: RefineResult, i: int) -> None:
  req = _request(i)
  assert result.example_id == f"img{i}"
  labeled = req.weak != 255
  np.testing.assert_array_equal(result.label[labeled], req.weak[labeled])
  assert set(np.unique(result.label)) <= {i % 7, 255}


@pytest.fixture(scope="module")
def faulty_service():
  with RefineService(backend_factory=sam_fakes.make_faulty_backend, max_pending=4, timeout_s=1.5,
                     fallback=True, start_timeout_s=60) as svc:
    yield svc


def test_results_keyed_and_complete(faulty_service):
  results = list(faulty_service.map([_request(i) for i in range(10)]))
  assert [r.example_id for r in results] == [f"img{i}" for i in range(10)]
  for i, r in enumerate(results):
    _check(r, i)
    assert not r.fallback


def test_faults_fall_back_without_touching_other_examples(faulty_service):
  markers = {2: sam_fakes.CRASH, 4: sam_fakes.GARBAGE, 5: sam_fakes.RAISE, 7: sam_fakes.HANG}
  before = dict(faulty_service.stats)
  reqs = [_request(i, markers.get(i, 0)) for i in range(9)]
  results = {r.example_id: r for r in faulty_service.map(reqs, ordered=False)}
  assert sorted(results) == sorted(r.example_id for r in reqs)
  for i in range(9):
    r = results[f"img{i}"]
    if i in markers:
      assert r.fallback and r.error
      np.testing.assert_array_equal(r.label, reqs[i].weak)  # The weak label, unchanged.
    else:
      assert not r.fallback
      _check(r, i)
  assert faulty_service.stats["fallbacks"] - before["fallbacks"] == 4
  assert faulty_service.stats["restarts"] - before["restarts"] == 2  # Crash and hang.


def test_error_surfaces_when_no_fallback():
  with RefineService(backend_factory=sam_fakes.make_faulty_backend, max_pending=2, timeout_s=5,
                     start_timeout_s=60) as svc:
    svc.submit(_request(0, sam_fakes.RAISE))
    svc.submit(_request(1))
    with pytest.raises(SamServiceError, match="(?s)img0.*deliberate failure"):
      svc.get("img0")
    _check(svc.get("img1"), 1)
    # Backpressure: two in flight fill the service; a third cannot enter without waiting.
    svc.submit(_request(2))
    svc.submit(_request(3))
    with pytest.raises(queue.Full):
      svc.submit(_request(4), block=False)
    with pytest.raises(ValueError, match="already in flight"):
      svc.submit(_request(3), timeout=0.1)
    _check(svc.get("img3"), 3)
    _check(svc.get("img2"), 2)


def test_result_checks_catch_mismatches():
  req = _request(0)
  assert check_result(req, RefineResult("img1", req.weak.copy())) is not None
  assert check_result(req, RefineResult("img0", np.zeros((3, 3), np.uint8))) is not None
  assert check_result(req, "garbage") is not None
  assert check_result(req, RefineResult("img0", req.weak.copy())) is None


def test_worker_torch_threads_are_capped():
  pytest.importorskip("torch")
  with RefineService(backend_factory=sam_fakes.make_thread_probe_backend, torch_threads=1,
                     start_timeout_s=120) as svc:
    assert svc.backend_name.endswith("torch_threads=1")


def test_zero_timeout_polls_the_worker():
  """get(timeout=0) must collect a finished result (the trainer polls that way)."""
  import time as _time
  img = np.zeros((16, 16, 3), np.uint8)
  weak = np.full((16, 16), 255, np.uint8)
  weak[4:12, 4:12] = 1
  with RefineService("superpixel") as service:
    service.submit(RefineRequest("a", img, weak))
    deadline = _time.monotonic() + 60
    while True:
      try:
        result = service.get(timeout=0)
        break
      except TimeoutError:
        assert _time.monotonic() < deadline, "result never collected with timeout=0"
        _time.sleep(0.05)
  assert result.example_id == "a"


def _start_service_and_report_worker_pid(conn):
  service = RefineService("superpixel", start_timeout_s=60)
  service.submit(_request(0))  # Starts the worker.
  service.get("img0", timeout=60)
  conn.send(service._proc.pid)
  import time as _time
  _time.sleep(600)  # Killed by the test long before this.


def test_worker_exits_when_its_trainer_is_killed():
  """A SIGKILLed trainer cannot send the sentinel; its worker must not live on as an orphan."""
  import multiprocessing
  import os
  import signal
  import time as _time
  ctx = multiprocessing.get_context("spawn")
  ours, theirs = ctx.Pipe()
  trainer = ctx.Process(target=_start_service_and_report_worker_pid, args=(theirs,))
  trainer.start()
  assert ours.poll(120), "the trainer never started its worker"
  worker_pid = ours.recv()
  os.kill(trainer.pid, signal.SIGKILL)
  trainer.join()
  deadline = _time.monotonic() + 30
  while _time.monotonic() < deadline:
    try:
      os.kill(worker_pid, 0)  # Raises once the worker is gone (reaped by init).
    except ProcessLookupError:
      return
    _time.sleep(0.2)
  os.kill(worker_pid, signal.SIGKILL)
  raise AssertionError("the SAM worker outlived its killed trainer by 30 s")
