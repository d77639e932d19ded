"""The SAM baseline's labels: each process makes its shard, all meet at a barrier, resume.

The barrier (`refine_labels.meet`) is replaced by a stand-in that records its calls and may play
the other process; the two-process run is `tests/train/test_multiprocess.py` (slow).
"""

import os

import numpy as np
import pytest

from sesam_jax import config_lib, loop
from sesam_jax.data import weak_sources
from sesam_jax.sam import refine_labels
from tests import fakes

SYNTHETIC = os.path.join(fakes.REPO, "configs", "segformer_synthetic.py")


@pytest.fixture(name="setup")
def _setup():
  config = config_lib.config_from_flags(
      f"{SYNTHETIC}:weak=coarse,method=sam_baseline",
      ["--config.sam.backend=oracle", "--config.dataset.num_train_images=5",
       "--config.dataset.image_size=32,40"])
  train, _ = loop.make_sources(config)
  return config, train


@pytest.fixture(name="made")
def _made(monkeypatch):
  """The training image ids refined by each call of `_make_baseline_labels`, in order."""
  calls = []
  make = refine_labels._make_baseline_labels

  def spy(config, source, out):
    calls.append(list(source.ids))
    make(config, source, out)

  monkeypatch.setattr(refine_labels, "_make_baseline_labels", spy)
  return calls


def _read(folder, source):
  """{id: HxW uint8} of the labels of every image of `source` in `folder`."""
  return {item["id"]: weak_sources.read_weak_label(folder, item["id"],
                                                   num_classes=source.info.num_classes,
                                                   shape=item["label"].shape)
          for item in (source[i] for i in range(len(source)))}


def test_shards_cover_the_split_once():
  shards = [refine_labels.shard_indices(7, i, 3) for i in range(3)]
  assert shards == [[0, 3, 6], [1, 4], [2, 5]]
  assert refine_labels.shard_indices(7, 0, 1) == list(range(7))


def test_each_process_makes_its_shard_and_all_meet_at_the_barrier(tmp_path, setup, made,
                                                                  monkeypatch):
  config, train = setup
  ids = train.ids
  met = []

  # Process 1 of 2 makes its shard; its peer has made nothing when they meet: a missing label
  # is an error that names the image and the process that should have made it.
  monkeypatch.setattr(refine_labels, "meet", met.append)
  with pytest.raises(FileNotFoundError, match=rf"3 of 5 labels .*{ids[0]}\.png.*process 0 of 2"):
    refine_labels.baseline_labels(config, train, str(tmp_path), process_index=1, process_count=2)
  assert made == [[ids[1], ids[3]]] and met == [refine_labels.BARRIER]
  # Process 0 then makes the rest; the set is complete after the barrier.
  out = refine_labels.baseline_labels(config, train, str(tmp_path), process_index=0,
                                      process_count=2)
  assert made[1] == [ids[0], ids[2], ids[4]] and len(met) == 2
  assert sorted(os.listdir(out)) == sorted(f"{i}.png" for i in ids)

  # The same labels as one process makes alone.
  one = refine_labels.baseline_labels(config, train, str(tmp_path / "one"), process_index=0,
                                      process_count=1)
  two, alone = _read(out, train), _read(one, train)
  for i in ids:
    np.testing.assert_array_equal(two[i], alone[i])


def test_labels_present_are_not_made_again(tmp_path, setup, made, monkeypatch):
  config, train = setup
  ids = train.ids
  monkeypatch.setattr(refine_labels, "meet", lambda name: None)
  out = refine_labels.baseline_labels(config, train, str(tmp_path))  # One process: all of them.
  assert made == [ids]
  stamps = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)}
  os.remove(os.path.join(out, f"{ids[2]}.png"))  # A run stopped before this one was written.
  refine_labels.baseline_labels(config, train, str(tmp_path))
  assert made[1] == [ids[2]]
  refine_labels.baseline_labels(config, train, str(tmp_path))
  assert len(made) == 2  # Complete: nothing made, the backend not even started.
  for n, stamp in stamps.items():
    if n != f"{ids[2]}.png":
      assert os.stat(os.path.join(out, n)).st_mtime_ns == stamp


def test_a_failed_shard_still_meets_the_others_then_raises(tmp_path, setup, monkeypatch):
  config, train = setup
  met = []
  monkeypatch.setattr(refine_labels, "meet", met.append)

  def fail(config, source, out):
    raise RuntimeError("SAM worker died")

  monkeypatch.setattr(refine_labels, "_make_baseline_labels", fail)
  with pytest.raises(RuntimeError, match="SAM worker died"):
    refine_labels.baseline_labels(config, train, str(tmp_path), process_index=0, process_count=2)
  assert met == [refine_labels.BARRIER]  # The others were not left waiting at the barrier.
