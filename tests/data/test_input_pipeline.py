"""Host pipeline: geometry bookkeeping, determinism, resumable iterator state."""

import numpy as np
import pytest

from sesam_jax.data import augment, input_pipeline
from tests.fakes import FakeSource


def test_apply_geometry_matches_full_resize_then_crop():
  rng = np.random.default_rng(0)
  label = rng.integers(0, 20, (57, 91)).astype(np.uint8)
  for _ in range(20):
    geom = augment.sample_geometry(rng, label.shape, 64)
    got = augment.apply_geometry(label, geom, 64, nearest=True)
    # Reference: materialise the scaled image, pad, crop, flip.
    sh, sw = augment.scaled_size(label.shape, geom.scale)
    from PIL import Image
    scaled = np.asarray(Image.fromarray(label).resize((sw, sh), Image.Resampling.NEAREST))
    padded = np.full((max(sh, geom.y0 + 64), max(sw, geom.x0 + 64)), 255, np.uint8)
    padded[:sh, :sw] = scaled
    want = padded[geom.y0:geom.y0 + 64, geom.x0:geom.x0 + 64]
    if geom.flip:
      want = want[:, ::-1]
    np.testing.assert_array_equal(got, want)


def test_batches_carry_one_geometry_for_image_and_labels():
  source = FakeSource()
  ds = input_pipeline.make_train_dataset(source, crop=32, batch_size=4, seed=3)
  batch = next(iter(ds))
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == batch["weak"].shape == (4, 32, 32)
  assert batch["aug"].shape == (4, 4)
  for k in range(4):
    example = source[int(batch["index"][k])]
    geom = augment.Geometry.from_array(batch["aug"][k])
    np.testing.assert_array_equal(
        batch["label"][k], augment.apply_geometry(example["label"], geom, 32, nearest=True))
    # weak == fine when weak="fine"; the image got the same window (channel 2 = index).
    np.testing.assert_array_equal(batch["weak"][k], batch["label"][k])
    inside = batch["label"][k] != 255
    ones = np.ones(example["label"].shape, np.uint8)
    np.testing.assert_array_equal(
        batch["valid"][k], augment.apply_geometry(ones, geom, 32, nearest=True, fill=0))
    assert np.all(batch["image"][k][..., 2][inside] == batch["index"][k])


def test_stream_is_deterministic_and_resumable():
  source = FakeSource()
  ds = input_pipeline.make_train_dataset(source, crop=16, batch_size=3, seed=7)
  it = iter(ds)
  first = [next(it) for _ in range(2)]
  state = it.get_state()
  rest = [next(it)["index"] for _ in range(6)]  # Crosses epoch boundaries (10 examples).
  again = iter(ds)
  again.set_state(state)
  np.testing.assert_array_equal(np.stack(rest), np.stack([next(again)["index"] for _ in range(6)]))
  fresh = iter(input_pipeline.make_train_dataset(source, crop=16, batch_size=3, seed=7))
  np.testing.assert_array_equal(next(fresh)["aug"], first[0]["aug"])
  # Each epoch visits every example once, in a different order per epoch.
  it2 = iter(input_pipeline.make_train_dataset(source, crop=16, batch_size=5, seed=1))
  epoch1 = np.concatenate([next(it2)["index"] for _ in range(2)])
  epoch2 = np.concatenate([next(it2)["index"] for _ in range(2)])
  assert sorted(epoch1) == sorted(epoch2) == list(range(10))
  assert list(epoch1) != list(epoch2)


def test_eval_dataset_pads_and_keeps_every_example():
  source = FakeSource(n=5)
  batches = list(input_pipeline.make_eval_dataset(source, batch_size=2))
  assert len(batches) == 3
  valid = np.concatenate([b["valid"] for b in batches])
  index = np.concatenate([b["index"] for b in batches])[valid]
  assert list(index) == [0, 1, 2, 3, 4] and valid.sum() == 5
  assert np.all(batches[-1]["label"][1] == 255)


def test_bad_arguments_fail_clearly():
  with pytest.raises(ValueError, match="positive"):
    input_pipeline.make_train_dataset(FakeSource(), crop=0, batch_size=2, seed=0)
  with pytest.raises(ValueError, match="empty"):
    input_pipeline.make_train_dataset(FakeSource(n=0), crop=8, batch_size=2, seed=0)


def test_worker_processes_give_the_same_stream():
  source = FakeSource()
  kw = dict(crop=16, batch_size=2, seed=5)
  inline = iter(input_pipeline.make_train_dataset(source, **kw))
  workers = iter(input_pipeline.make_train_dataset(source, num_workers=2, **kw))
  try:
    for _ in range(4):
      a, b = next(inline), next(workers)
      np.testing.assert_array_equal(a["index"], b["index"])
      np.testing.assert_array_equal(a["image"], b["image"])
  finally:
    workers.close()


def test_invert_geometry_round_trips_inside_the_window():
  rng = np.random.default_rng(1)
  # Blocky labels so nearest resampling at the window edge is unambiguous.
  label = np.kron(rng.integers(0, 9, (6, 8)), np.ones((16, 16), int)).astype(np.uint8)
  for _ in range(10):
    geom = augment.sample_geometry(rng, label.shape, 48, scale_range=(0.5, 2.0))
    crop = augment.apply_geometry(label, geom, 48, nearest=True)
    back = augment.invert_geometry(crop, geom, label.shape)
    covered = back != 255
    assert covered.any()
    agree = np.mean(back[covered] == label[covered])
    assert agree > 0.9, agree  # Resampling blurs block edges by ~1/scale px.
    # Crop -> full -> crop is the identity on the window's pixels.
    again = augment.apply_geometry(back, geom, 48, nearest=True)
    inside = crop != 255
    assert np.mean(again[inside] == crop[inside]) > 0.97
    # paste_crop writes the same pixels over an existing map and leaves the rest alone.
    before = rng.integers(0, 9, label.shape).astype(np.uint8)
    window = augment.invert_geometry(np.zeros_like(crop), geom, label.shape) == 0
    pasted = augment.paste_crop(before.copy(), crop, geom)
    np.testing.assert_array_equal(pasted[window], back[window])
    np.testing.assert_array_equal(pasted[~window], before[~window])


def test_read_ahead_is_bounded():
  """grain's default reads 500 elements ahead (GBs at real crop sizes); ours a few batches."""
  calls = []

  class Counting(FakeSource):
    def __getitem__(self, i):
      calls.append(i)
      return super().__getitem__(i)

  it = iter(input_pipeline.make_train_dataset(Counting(n=10), crop=8, batch_size=2, seed=0,
                                              prefetch_batches=2))
  next(it)
  import time
  time.sleep(1.0)  # Give the read-ahead threads time to run as far as they may.
  assert len(calls) <= 2 * (1 + 2 + 2), len(calls)  # This batch, the buffer, threads in flight.


class _OneCorrupt(FakeSource):
  def __getitem__(self, i):
    if i == 3:
      from sesam_jax.data.base import UnreadableFileError
      raise UnreadableFileError("cannot decode image /data/img003.png (truncated)")
    return super().__getitem__(i)


def test_unreadable_example_stops_with_its_path_or_is_skipped_and_counted(capsys):
  ds = input_pipeline.make_train_dataset(_OneCorrupt(), crop=16, batch_size=3, seed=0)
  plain = iter(ds)
  with pytest.raises(ValueError, match="img003.png"):
    for _ in range(4):  # 12 examples: the first epoch reaches example 3.
      next(plain)
  it = iter(input_pipeline.make_train_dataset(_OneCorrupt(), crop=16, batch_size=3, seed=0,
                                              skip_unreadable=True))
  seen = np.concatenate([next(it)["index"] for _ in range(9)])  # 3 epochs of 9 readable.
  assert 3 not in seen and sorted(set(seen.tolist())) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
  assert "skipping example 'img003' (1 skipped so far)" in capsys.readouterr().err
