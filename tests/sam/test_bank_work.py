"""The bank's threads: background extension writes leave exactly what synchronous ones did."""

import threading
import time

import numpy as np
import pytest

from sesam_jax.data import augment
from sesam_jax.sam import bank_work
from tests.sam.test_sam_bank import _InlineService, _bank, _batch, _oracle, _source


def _paste_by_ix(full, crop_map, geom):
  """`augment.paste_crop` as it was written before (np.ix_), the reference."""
  where = augment._inverse_window(crop_map.shape[0], geom, full.shape[:2])
  if where is not None:
    rows, cols, cy, cx = where
    full[rows, cols] = crop_map[np.ix_(cy, cx)]
  return full


def test_paste_crop_writes_the_pixels_the_ix_gather_did():
  rng = np.random.default_rng(0)
  for _ in range(50):
    hw = (int(rng.integers(20, 90)), int(rng.integers(20, 90)))
    crop = int(rng.integers(8, 48))
    geom = augment.sample_geometry(rng, hw, crop, scale_range=(0.3, 2.5))
    start = rng.integers(0, 30, hw).astype(np.uint8)
    crop_map = rng.integers(0, 255, (crop, crop)).astype(np.uint8)
    np.testing.assert_array_equal(augment.paste_crop(start.copy(), crop_map, geom),
                                  _paste_by_ix(start.copy(), crop_map, geom))


@pytest.mark.parametrize("view,confidence", [("weak_aug", False), ("full", True)])
def test_background_extensions_equal_synchronous_ones(monkeypatch, view, confidence):
  slow = bank_work.paste_crops

  def paste_slowly(*args, **kw):  # The writer lags behind the loop, so reads must wait.
    time.sleep(0.01)
    slow(*args, **kw)

  monkeypatch.setattr(bank_work, "paste_crops", paste_slowly)
  source = _source(n=6)
  banks = [_bank(source, _InlineService(_oracle), refresh="strict", refresh_every=2, view=view,
                 confidence=confidence) for _ in range(2)]
  rng = np.random.default_rng(1)
  crops = []
  for step in range(8):
    batch = _batch(source, seed=step % 3)  # Images come back within a few steps.
    confident = np.where(rng.random((4, 24, 24)) < 0.3, step % 5, 255).astype(np.uint8)
    conf = rng.integers(0, 256, (4, 24, 24)).astype(np.uint8) if confidence else None
    for background, bank in zip((False, True), banks):
      bank.submit(batch, step)
      bank.wait_due(step)
      crops.append(bank.batch_labels(batch, step))
      bank.update_extension(batch, confident, confidence=conf, background=background)
    np.testing.assert_array_equal(crops[-2], crops[-1])
  sync, background = banks
  sent = [(r.example_id, r.step, r.extension, r.confidence) for r in sync.service.requests]
  assert len(sent) == len(background.service.requests) > 8
  for (i, s, ext, conf), r in zip(sent, background.service.requests):
    assert (i, s) == (r.example_id, r.step)
    for a, b in ((ext, r.extension), (conf, r.confidence)):
      assert (a is None) == (b is None)
      if a is not None:
        np.testing.assert_array_equal(a, b)
  background.get_state()  # Waits for the writer (the stores' order is the threads' own).
  for name in ("labels", "extension") + (("confidence",) if confidence else ()):
    a, b = getattr(sync, name), getattr(background, name)
    assert sorted(a) == sorted(b) and len(a) > 0
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert sync.stats == background.stats and sync.label_step == background.label_step
  for bank in banks:
    bank.close()


def test_reads_wait_for_their_own_images_and_a_failed_write_is_raised():
  writer = bank_work.KeyedWriter()
  release, written = threading.Event(), []
  writer.submit(lambda: (release.wait(5), written.append(3)), [3])
  writer.wait([4])  # Another image's read does not wait for image 3's write.
  assert not written
  release.set()
  writer.wait([3])
  assert written == [3]

  def fail():
    raise ValueError("bad write")

  writer.submit(fail, [5])
  with pytest.raises(ValueError, match="bad write"):
    writer.wait([5])
  writer.close()
