"""Byte-bounded memory for decoded examples and weak labels (what the SAM bank reads again)."""

import pickle
import threading

import numpy as np

from sesam_jax.data import memo


class _Counting:
  def __init__(self, n=6, hw=(10, 20)):
    self.ids = [f"im{i}" for i in range(n)]
    self.info, self.hw, self.reads = None, hw, []

  def __len__(self):
    return len(self.ids)

  def __getitem__(self, i):
    self.reads.append(i)
    return {"id": self.ids[i], "image": np.full((*self.hw, 3), i, np.uint8),
            "label": np.full(self.hw, i, np.uint8)}


def test_decoded_examples_are_kept_within_the_byte_budget():
  source = _Counting()
  per_example = memo._nbytes(_Counting()[0])  # image + label bytes (+ a little for the id)
  cached = memo.MemoSource(source, max_bytes=2 * per_example + 100)
  for i in (0, 1, 0, 1):
    assert cached[i]["image"][0, 0, 0] == i
  assert source.reads == [0, 1]  # The second reads of 0 and 1 were free.
  cached[2]  # Evicts the least recently used (0).
  assert cached.memo.nbytes <= 2 * per_example + 100
  cached[1], cached[0]
  assert source.reads == [0, 1, 2, 0]
  unbounded = memo.MemoSource(_Counting(), max_bytes=0)  # 0 keeps nothing.
  unbounded[0], unbounded[0]
  assert unbounded.source.reads == [0, 0] and unbounded.memo.nbytes == 0


def test_weak_labels_are_made_once_and_the_wrappers_pickle():
  made = []

  def weak_fn(index, example):
    made.append(index)
    return example["label"] // 2

  fn = memo.memoize_weak_fn(weak_fn, max_bytes=1 << 20)
  source = _Counting()
  threads = [threading.Thread(target=lambda: fn(3, source[3])) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  np.testing.assert_array_equal(fn(3, source[3]), source[3]["label"] // 2)
  assert fn.memo.hits >= 1 and 1 <= len(made) <= 4  # Threads may race once; never after.
  copy = pickle.loads(pickle.dumps(memo.MemoSource(source, 1 << 20)))
  assert copy.memo.nbytes == 0 and copy[1]["id"] == "im1"
