"""LocalRefineService: a backend object refined in a thread, with RefineService's guarantees."""

import queue
import time

import numpy as np
import pytest

from tests import sam_fakes
from sam_bridge.api import RefineRequest
from sam_bridge.local_service import LocalRefineService
from sam_bridge.service import SamServiceError


class _SlowFaulty(sam_fakes.FaultyBackend):
  """Fails as FaultyBackend does, but a "hang" lasts 1 s (a thread cannot be killed)."""

  def predict(self, prompts):
    if self._marker == sam_fakes.HANG:
      time.sleep(1.0)
      return sam_fakes.BoxBackend.predict(self, prompts)
    return super().predict(prompts)


def _request(i, marker=0):
  rng = np.random.default_rng(i)
  image = rng.integers(10, 250, (40, 48, 3), dtype=np.uint8)
  image[0, 0, 0] = marker
  weak = np.full((40, 48), 255, np.uint8)
  weak[5 + i % 10:17 + i % 10, 5:17] = i % 7
  return RefineRequest(f"img{i}", image, weak)


def test_results_are_keyed_bounded_and_complete():
  with LocalRefineService(sam_fakes.BoxBackend(), max_pending=3) as svc:
    results = list(svc.map([_request(i) for i in range(8)]))
    assert [r.example_id for r in results] == [f"img{i}" for i in range(8)]
    for i, r in enumerate(results):
      keep = _request(i).weak != 255
      np.testing.assert_array_equal(r.label[keep], _request(i).weak[keep])
    assert svc.in_flight == 0 and svc.stats["completed"] == 8
    for i in range(3):
      svc.submit(_request(i))
    with pytest.raises(queue.Full):
      svc.submit(_request(9), block=False)
    with pytest.raises(ValueError, match="already in flight"):
      svc.submit(_request(1), block=False)
    assert svc.get("img2").example_id == "img2"


def test_failures_surface_or_fall_back_and_slow_examples_time_out():
  with LocalRefineService(_SlowFaulty(), timeout_s=0.3) as svc:
    svc.submit(_request(0, sam_fakes.RAISE))
    with pytest.raises(SamServiceError, match="img0.*deliberate failure"):
      svc.get("img0", timeout=10)
    svc.submit(_request(1, sam_fakes.GARBAGE))
    with pytest.raises(SamServiceError, match="img1"):
      svc.get("img1", timeout=10)
    svc.submit(_request(2, sam_fakes.HANG))
    with pytest.raises(SamServiceError, match="longer than 0.3 s"):
      svc.get("img2", timeout=10)
  with LocalRefineService(_SlowFaulty(), fallback=True) as svc:
    svc.submit(_request(3, sam_fakes.RAISE))
    r = svc.get(timeout=10)
    assert r.fallback and "deliberate" in r.error
    np.testing.assert_array_equal(r.label, _request(3, sam_fakes.RAISE).weak)
    assert svc.stats["fallbacks"] == 1
    with pytest.raises(TimeoutError):
      svc.submit(_request(4, sam_fakes.HANG))
      svc.get(timeout=0.0)


class _BatchEncoding(sam_fakes.BoxBackend):
  """Encodes many images per call (as the JAX SAM does); its first decode is slow, so requests
  submitted meanwhile queue up and reach the service's thread together."""
  encode_batch = 8

  def __init__(self):
    super().__init__()
    self.batches, self.single = [], 0

  def encode_images(self, images):
    self.batches.append(len(images))
    return [{"hw": np.asarray(im.shape[:2], np.int64), "marker": np.asarray(int(im[0, 0, 0]),
                                                                            np.int64)}
            for im in images]

  def set_image(self, image, *, fine_label=None):
    self.single += 1
    super().set_image(image, fine_label=fine_label)

  def predict(self, prompts):
    if not self.batches and self.single == 1:
      time.sleep(0.5)
    return super().predict(prompts)


def test_queued_requests_are_encoded_in_one_batch():
  from sam_bridge.cache import CacheConfig
  backend = _BatchEncoding()
  with LocalRefineService(backend, max_pending=8, cache=CacheConfig()) as svc:
    results = list(svc.map([_request(i) for i in range(6)]))
  assert [r.example_id for r in results] == [f"img{i}" for i in range(6)]
  # Every image was encoded once: requests that queued together in batched calls (refine()
  # then found their states in the cache), a request that came alone by refine() itself.
  assert backend.single + sum(backend.batches) == 6 and max(backend.batches) > 1
  for i, r in enumerate(results):
    keep = _request(i).weak != 255
    np.testing.assert_array_equal(r.label[keep], _request(i).weak[keep])
