"""The host-side SAM label bank: round-robin refresh, alignment, staleness, resume."""

import collections
import pathlib
import re

import numpy as np
import pytest

from sam_bridge.api import RefineResult
from sesam_jax.data import input_pipeline
from sesam_jax.sam import bank as sam_labels
from tests.fakes import FakeSource


def _source(n=8, hw=(40, 56)):
  """Labels ((y // 8) * 7 + x // 8 + i) % 30 over 40x56 images, ids im0, im1, ..."""
  return FakeSource(n, hw, block=8, shift=1, modulo=30, id_format="im{}")


class _InlineService:
  """Answers each request at once with `fn(request)`; or never, if fn is None."""

  def __init__(self, fn):
    self.fn, self.done, self.requests = fn, collections.OrderedDict(), []

  def submit(self, request, block=True):
    self.requests.append(request)
    if self.fn is not None:
      self.done[request.example_id] = self.fn(request)

  def get(self, example_id=None, timeout=None):
    if not self.done:
      raise TimeoutError("nothing ready")
    return self.done.popitem(last=False)[1]


def _oracle(request):
  return RefineResult(request.example_id, np.asarray(request.fine, np.uint8))


def _batch(source, crop=24, batch_size=4, seed=0):
  return next(iter(input_pipeline.make_train_dataset(source, crop=crop, batch_size=batch_size,
                                                     seed=seed, scale_range=(0.7, 1.5))))


def _bank(source, service, **kw):
  """A bank refreshing as `async` on full images unless `kw` says otherwise."""
  kw = {"refresh": "async", "view": "full", **kw}
  cfg = sam_labels.SamLabelConfig(send_fine=True, **kw)
  return sam_labels.SamLabelBank(source, lambda i, e: e["label"], service, cfg, crop=24)


def test_round_robin_refreshes_a_quarter_of_each_batch():
  bank = _bank(_source(), _InlineService(_oracle))
  seen = collections.Counter()
  for step in range(8):
    seen.update(bank.refresh_positions(step, 8))
  assert len(bank.refresh_positions(0, 8)) == 2 and set(seen.values()) == {2}


def test_full_resolution_labels_follow_each_crop():
  source = _source()
  bank = _bank(source, _InlineService(_oracle))
  batch = _batch(source)
  assert bank.submit(batch, step=0) == 1  # Positions 0 (and 4, absent in a batch of 4).
  assert bank.collect() == 1
  labels = bank.batch_labels(batch)
  np.testing.assert_array_equal(labels[0], batch["label"][0])  # Same geometry as the fine label.
  assert np.all(labels[1:] == 255) and bank.stats["missing"] == 3
  # The request was at full resolution, as the embedding cache needs.
  assert bank.service.requests[0].image.shape[:2] == (40, 56)


def test_crop_space_results_are_mapped_back():
  source = _source()
  bank = _bank(source, _InlineService(_oracle), view="weak_aug")
  batch = _batch(source)
  bank.submit(batch, step=0)
  bank.collect()
  assert bank.service.requests[0].image.shape[:2] == (24, 24)
  index = int(batch["index"][0])
  full = bank.labels[index]
  assert full.shape == (40, 56) and (full != 255).any()
  again = bank.batch_labels(batch)[0]
  inside = batch["label"][0] != 255
  assert np.mean(again[inside] == batch["label"][0][inside]) > 0.97


def test_in_flight_results_never_block_and_count_as_stale():
  source = _source()
  bank = _bank(source, _InlineService(None))
  batch = _batch(source)
  bank.submit(batch, step=0)
  assert bank.collect(wait_s=0.0) == 0
  bank.batch_labels(batch)
  assert bank.stats["stale"] == 1 and bank.stats["missing"] == 4
  assert bank.submit(batch, step=0) == 0 and bank.stats["already_in_flight"] == 1


def test_extension_is_sent_with_the_next_refresh_and_survives_restart():
  source = _source()
  bank = _bank(source, _InlineService(_oracle))
  batch = _batch(source)
  confident = np.full((4, 24, 24), 255, np.uint8)
  confident[:, 5:10, 5:10] = 7
  bank.update_extension(batch, confident)
  bank.submit(batch, step=0)
  bank.collect()
  ext = bank.service.requests[0].extension
  assert ext.shape == (40, 56) and set(np.unique(ext)) == {7, 255}
  restored = _bank(source, _InlineService(_oracle))
  restored.set_state(bank.get_state())
  for a, b in ((bank.labels, restored.labels), (bank.extension, restored.extension)):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert restored.stats["sent"] == 1


def test_fallbacks_are_counted():
  source = _source()

  def failing(request):
    return RefineResult(request.example_id, np.asarray(request.weak), fallback=True, error="boom")

  bank = _bank(source, _InlineService(failing))
  bank.submit(_batch(source), step=0)
  bank.collect()
  assert bank.summary()["fallbacks"] == 1


class _SmallQueueService(_InlineService):
  """Holds at most two unanswered requests (queue.Full beyond); answers on `get`."""

  def __init__(self, fn):
    super().__init__(fn)
    self.queued = []

  def submit(self, request, block=True):
    import queue
    if len(self.queued) >= 2:
      raise queue.Full
    self.requests.append(request)
    self.queued.append(request)

  def get(self, example_id=None, timeout=None):
    if not self.queued:
      raise TimeoutError("nothing ready")
    return self.fn(self.queued.pop(0))


def test_prewarm_refines_every_image_without_a_label_once():
  source = _source(n=7)
  service = _SmallQueueService(_oracle)
  bank = _bank(source, service)
  bank.labels[3] = np.zeros((40, 56), np.uint8)  # Already has one (e.g. restored): skipped.
  assert bank.prewarm(progress=False) == 6
  assert sorted(bank.labels) == list(range(7)) and not bank._pending
  assert sorted(r.example_id for r in service.requests) == [f"im{i}" for i in range(7) if i != 3]
  # Full-resolution requests built from the weak label alone (no teacher extension yet).
  assert all(r.image.shape[:2] == (40, 56) and r.extension is None for r in service.requests)
  np.testing.assert_array_equal(bank.labels[5], source[5]["label"])
  assert bank.prewarm(progress=False) == 0  # Nothing left to do.


def test_prewarm_refines_full_images_in_the_weak_aug_view_too():
  source = _source(n=3)
  bank = _bank(source, _InlineService(_oracle), view="weak_aug")
  assert bank.prewarm(progress=False) == 3
  assert all(r.image.shape[:2] == (40, 56) for r in bank.service.requests)
  assert bank.label_step == {0: -1, 1: -1, 2: -1}


def _refining_service():
  """Runs the real refine() with the oracle backend on each request, in line."""
  from sam_bridge.backends import create_backend
  from sam_bridge.refine import RefineConfig, refine
  backend = create_backend("oracle")
  return _InlineService(lambda r: refine(backend, r, RefineConfig(work_long_side=64), seed=3))


def _prompts(result):
  return np.concatenate([r.points for r in result.records])


def test_each_refresh_of_an_image_sends_fresh_prompts_seeded_by_its_step():
  source = _source()
  batch = _batch(source)
  results = {}
  for step in (0, 4):  # M = 4: position 0 is refreshed at both steps.
    bank = _bank(source, _refining_service())
    assert bank.submit(batch, step=step) == 1
    request = bank.service.requests[0]
    results[step] = bank.service.done[request.example_id]
    assert request.step == step
  assert not np.array_equal(_prompts(results[0]), _prompts(results[4]))
  again = _bank(source, _refining_service())
  again.submit(batch, step=4)
  np.testing.assert_array_equal(_prompts(results[4]),
                                _prompts(next(iter(again.service.done.values()))))


def test_confidence_of_the_view_sam_sees(capsys):
  source = _source()
  batch = _batch(source)
  confidence = np.full((4, 24, 24), 200, np.uint8)
  # weak_aug: the confidence on the very crop SAM refines rides along; nothing is stored.
  crop = _bank(source, _InlineService(_oracle), confidence=True, view="weak_aug")
  assert crop.submit(batch, step=0, confidence=confidence) == 1
  assert crop.service.requests[0].confidence.shape == (24, 24) and not len(crop.confidence)
  # full: the last confidence stored for the image (8 bits, full resolution, 0 where unseen);
  # an image the teacher has not seen yet is sampled the paper's way.
  full = _bank(source, _InlineService(_oracle), confidence=True)
  full.submit(batch, step=0)
  assert (full.service.requests[0].sampling, full.service.requests[0].confidence) == ("sesam",
                                                                                      None)
  full.collect()
  full.update_extension(batch, np.full((4, 24, 24), 255, np.uint8), confidence=confidence)
  full.submit(batch, step=4)
  request = full.service.requests[-1]
  assert request.sampling is None and request.confidence.shape == (40, 56)
  assert set(np.unique(request.confidence)) <= {0, 200} and (request.confidence == 200).any()
  # The pre-warm has no teacher: step -1 and the paper's sampling, said in the log.
  fresh = _bank(_source(n=2), _SmallQueueService(_oracle), confidence=True)
  fresh.prewarm(progress=False)
  assert {(r.step, r.sampling, r.confidence) for r in fresh.service.requests} == {
      (-1, "sesam", None)}
  assert "no teacher yet" in capsys.readouterr().err


class _SlowService(_InlineService):
  """Answers each request after `delay` gets (a bridge slower than the steps)."""

  def __init__(self, fn, delay):
    super().__init__(fn)
    self.delay, self.calls = delay, 0

  def get(self, example_id=None, timeout=None):
    self.calls += 1
    if self.calls % self.delay:
      raise TimeoutError("not yet")
    return super().get(example_id, timeout)


def test_strict_refreshes_the_whole_batch_every_mth_step_and_waits():
  source = _source()
  bank = _bank(source, _SlowService(_oracle, delay=3), refresh="strict", view="weak_aug")
  batch = _batch(source)
  assert bank.refresh_positions(0, 4) == [0, 1, 2, 3] and bank.refresh_positions(1, 4) == []
  assert bank.submit(batch, step=0) == 4
  assert bank.wait_due(0) == 4 and not bank._pending
  bank.settle(0)
  labels = bank.batch_labels(batch, 0)
  # Made from this step's crops: exactly the crops' fine labels (the oracle), age 0.
  np.testing.assert_array_equal(labels, batch["label"])
  assert bank.refreshes.result() == {"due": 4, "done": 4, "skipped": 0, "mean_age_steps": 0.0}
  bank.batch_labels(batch, 2)
  assert bank.summary()["label_age_steps"] == 2.0


def test_async_skips_are_counted_and_warned_about_once(capsys):
  source = _source()
  bank = _bank(source, _InlineService(None), wait_s=0.0, device="cpu")  # Never answers.
  batch = _batch(source)
  for step in range(8):
    bank.submit(batch, step)
    bank.collect()
    bank.settle(step)
  totals = bank.refreshes.result()
  assert totals["due"] == 8 and totals["skipped"] == 8 and totals["done"] == 0
  err = capsys.readouterr().err
  assert err.count("warning:") == 1 and "sam.wait_s" in err and "sam.device" in err


def test_an_unreadable_weak_label_is_skipped():
  source = _source()
  bank = sam_labels.SamLabelBank(source, lambda i, e: None if i % 2 else e["label"],
                                 _InlineService(_oracle), sam_labels.SamLabelConfig(send_fine=True),
                                 crop=24)
  assert bank.prewarm(progress=False) == 4 and sorted(bank.labels) == [0, 2, 4, 6]


def test_labels_are_stored_compressed_and_the_state_round_trips_fast():
  import time
  source = _source(8, (256, 512))
  bank = _bank(source, _InlineService(_oracle))
  for i in range(8):
    bank.labels[i] = source[i]["label"]
    bank.extension[i] = np.where(source[i]["label"] < 10, source[i]["label"], 255).astype(np.uint8)
  raw = 2 * 8 * 256 * 512
  assert bank.summary()["bank_bytes"] < raw / 20
  start = time.perf_counter()
  restored = _bank(source, _InlineService(_oracle))
  restored.set_state(bank.get_state())
  assert time.perf_counter() - start < 1.0
  for i in range(8):
    np.testing.assert_array_equal(restored.labels[i], source[i]["label"])
    np.testing.assert_array_equal(restored.extension[i], bank.extension[i])
  assert restored.hw[3] == (256, 512)


_UNPICKLED = []


def _mark_unpickled():
  _UNPICKLED.append(True)


class _Payload:
  def __reduce__(self):
    return _mark_unpickled, ()


def test_a_pickled_bank_of_an_older_version_is_never_unpickled(capsys):
  """The bank of an older version (.npz with an object array) is skipped: the bank starts
  empty with one line, and the pickle in it never runs."""
  import io
  label = np.arange(40 * 56, dtype=np.uint8).reshape(40, 56) % 7
  buffer = io.BytesIO()
  np.savez_compressed(buffer, label_3=label, ext_3=label[::-1].copy(),
                      stats=np.array([_Payload()], dtype=object))
  bank = _bank(_source(), _InlineService(_oracle))
  bank.set_state(buffer.getvalue())
  assert not _UNPICKLED
  assert len(bank.labels) == len(bank.extension) == 0 and not bank.stats
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "written by an older version" in err[0] and "empty bank" in err[0]


def test_no_loader_unpickles():
  """No file this project reads is unpickled (a run directory may come from someone else)."""
  root = pathlib.Path(__file__).resolve().parents[2]
  found = [f"{p}:{n}" for folder in ("sesam_jax", "sam_bridge")
           for p in sorted((root / folder).rglob("*.py"))
           for n, line in enumerate(p.read_text().splitlines(), 1)
           if re.search(r"allow_pickle\s*=\s*True|pickle\.loads?\(", line)]
  assert not found, found
