"""The host input pipeline: grain over random-access sources.

Training examples flow as

  source[i] -> {"id", "image", "label"}          (decode, in the worker)
    + weak label of the configured kind          (`weak_fn`; the loop memoises it)
    -> shuffle (reseeded every epoch), repeat forever
    -> weak geometric augmentation               (one draw for image, weak, fine label)
    -> batch -> this process's slice of each global batch
    -> optional worker processes (grain `mp_prefetch`)

and come out as numpy batches (layouts in `make_train_dataset`). The iterator
is a grain `DatasetIterator`: `get_state()` / `set_state()` make the data
stream resumable, and the training loop saves that state next to the train
state with orbax (one file per process).

Several processes (a multi-host run) shuffle the same whole index space with the
run's seed and each reads only its slice of every global batch, so the global
batch of step t is the same whatever the number of processes. The augmentation
is drawn per element of that global stream (grain seeds `random_map` by the
element's position in it), so it does not depend on the process count either.
grain's own sharding (`ds[shard::count]`, `ShardByJaxProcess`) splits the index
space before the shuffle, which gives each process a different stream.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import grain
import numpy as np
from absl import flags

from sesam_jax import report
from sesam_jax.data import augment, weak_labels, weak_sources
from sesam_jax.data.base import IGNORE_INDEX, SkipUnreadable


class Source(Protocol):
  """What the pipeline needs of a dataset source (see `sesam_jax.data`)."""
  ids: list[str]

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, Any]: ...


WeakFn = Callable[[int, dict[str, Any]], np.ndarray]


def weak_label_fn(source: Source, weak: str, *, weak_seed: int = 0,
                  weak_dir: str | pathlib.Path | None = None, weak_source: str = "",
                  weak_options: str | Mapping[str, Any] = "") -> WeakFn:
  """Returns `fn(index, example) -> HxW uint8` giving the example's weak label.

  The labels are made (or read) on every call: wrap the function with
  `sesam_jax.data.memo.memoize_weak_fn` to keep them within a byte budget.
  `weak` names the kind of the labels, `weak_source` where they come from.

  Args:
    source: the dataset source (for the class count).
    weak: "fine" (the fine label itself), or "points" | "scribbles" | "coarse",
      generated from the fine label exactly as `sesam weak-labels` does.
    weak_seed: seed of the weak-label protocol (same meaning as `--seed`).
    weak_dir: read `<id>.png` weak labels from this folder instead (labels a method made
      before step 0, e.g. the SAM baseline's).
    weak_source: the user's own labels, a reader spec of `weak_sources` ("png:DIR",
      "cityscapes_coarse", "clicks_csv:FILE", ...); "" = generated. The reader (with
      `check`, see `check_weak_labels`) is returned; its kind must be `weak`.
    weak_options: the reader's options, "key=value,..." or a dict.
  """
  if weak_source and weak_dir is None:
    return weak_sources.training_reader(weak_source, source, weak, weak_options)
  if weak == "fine" and weak_dir is None:
    return lambda index, example: example["label"]
  if weak_dir is not None:
    reader = weak_sources.WeakLabelDir(weak_dir, num_classes=source.info.num_classes)
    return lambda index, example: reader.read(example["id"], example["label"].shape)
  num_classes = source.info.num_classes

  def generate(index: int, example: dict[str, Any]) -> np.ndarray:
    # Deterministic in (seed, id), so any process may make it again.
    return weak_labels.make_weak_label(example["label"], weak, seed=weak_seed,
                                       image_id=example["id"], num_classes=num_classes)

  return generate


def check_weak_labels(weak_fn: WeakFn, source: Source, *, skip_unreadable: bool = False,
                      what: str = "weak label(s)") -> int:
  """Reads every weak label of `source` once before training, when they come from files.

  Generated labels need no check; a reader (`weak_label_fn` with `weak_source`) reads the whole
  split and every bad file (missing, another size, an unknown class, undecodable) is listed, one
  line each naming the file, in one error; with `skip_unreadable` the list is logged instead and
  those images are skipped during training.

  Returns:
    The number of images whose weak label cannot be used (0 when nothing is checked).

  Raises:
    ValueError: every bad file, unless `skip_unreadable`.
  """
  check = getattr(weak_fn, "check", None)
  if check is None:
    return 0
  problems = check(source)
  if not problems:
    return 0
  message = weak_sources.format_problems(problems, what)
  if skip_unreadable:
    report.log(f"{message}\n  --config.dataset.skip_unreadable: these images are skipped.")
    return len(problems)
  raise ValueError(f"{message}\n  Fix or remove these files, leave their images out of the "
                   "split, or train without them: --config.dataset.skip_unreadable=true.")


class _AttachWeak(grain.transforms.Map):
  """Adds "index" and "weak" to a source example (before shuffling); None if unreadable."""

  def __init__(self, weak_fn: WeakFn):
    self._weak_fn = weak_fn

  def map(self, element: tuple[int, dict[str, Any]]) -> dict[str, Any] | None:
    index, example = element
    weak = self._weak_fn(index, example)
    if weak is None:  # Skipped (`base.SkipUnreadable.guard`): grain drops the example.
      return None
    if weak.shape != example["label"].shape:
      raise ValueError(f"weak label of {example['id']!r} is {weak.shape}, "
                       f"its fine label {example['label'].shape}: regenerate the weak labels.")
    return {"id": example["id"], "image": example["image"], "label": example["label"],
            "weak": weak, "index": np.int32(index)}


class _WeakGeometricAug(grain.transforms.RandomMap):
  """Random scale / crop / flip, one draw for image, weak and fine labels."""

  def __init__(self, crop: int, scale_range: tuple[float, float]):
    self._crop = crop
    self._scale_range = scale_range

  def random_map(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    geom = augment.sample_geometry(rng, example["image"].shape[:2], self._crop,
                                   scale_range=self._scale_range)
    crop = functools.partial(augment.apply_geometry, geom=geom, crop=self._crop)
    return {
        "image": crop(example["image"], nearest=False, fill=0),
        "label": crop(example["label"], nearest=True),
        "weak": crop(example["weak"], nearest=True),
        "valid": augment.valid_mask(example["image"].shape[:2], geom, self._crop),
        "index": example["index"],
        "aug": geom.as_array(),
        "weak_classes": class_presence(example["weak"]),
    }


def class_presence(label_HW: np.ndarray) -> np.ndarray:
  """256 uint8: 1 for each class id with a pixel in `label_HW` (255, unlabelled, never).

  Taken from the whole image's weak label before the crop: AGMM's class-absence loss needs the
  image's classes, which a crop may not show (`sesam_jax.train.agmm`).
  """
  present = (np.bincount(label_HW.reshape(-1), minlength=256)[:256] > 0).astype(np.uint8)
  present[IGNORE_INDEX] = 0
  return present


def make_train_dataset(source: Source, *, crop: int, batch_size: int, seed: int,
                       weak_fn: WeakFn | None = None,
                       scale_range: tuple[float, float] = (0.5, 2.0),
                       num_workers: int = 0, process_index: int = 0,
                       process_count: int = 1, prefetch_batches: int = 4,
                       read_threads: int = 2, skip_unreadable: bool = False) -> grain.IterDataset:
  """An infinite, deterministic stream of augmented training batches.

  Args:
    source: a random-access dataset source.
    crop: side of the square training crop (pixels).
    batch_size: examples of the global batch (every process's share together).
    seed: seed of shuffling and augmentation; epochs are reshuffled.
    weak_fn: the label that rides as "weak" (`weak_label_fn`); None = the fine label.
    scale_range: range of the random scale factor.
    num_workers: grain worker processes (0 = in the main process).
    process_index, process_count: which slice of each global batch this process reads
      (multi-host; examples `process_index * b` to `(process_index + 1) * b - 1` of it,
      b = batch_size / process_count).
    prefetch_batches: batches read ahead in the main process (bounds host memory).
    read_threads: threads preparing those batches.
    skip_unreadable: drop examples whose image or label cannot be read (logged with the
      path and counted) instead of stopping with that error.

  Returns:
    A grain IterDataset; `iter()` of it yields dicts of numpy arrays (B = this process's
    share, batch_size / process_count):
      "image": BxCxCx3 uint8 (padding 0), "label": BxCxC uint8 fine label
      (255 = ignore or padding), "weak": BxCxC uint8 (255 = unlabeled),
      "index": B int32 (position in `source`), "aug": Bx4 float32 rows of
      [scale, y0, x0, flip] (`augment.Geometry.from_array`), "valid": BxCxC uint8 (1 = the
      crop shows the image, 0 = padding), "weak_classes": Bx256 uint8 (1 = the class has a
      pixel in the whole image's weak label, before the crop).
  """
  if crop <= 0 or batch_size <= 0:
    raise ValueError(f"crop and batch_size must be positive, got {crop} and {batch_size}.")
  if batch_size % process_count or not 0 <= process_index < process_count:
    raise ValueError(f"batch_size={batch_size} does not split across {process_count} processes "
                     f"(process {process_index}); use a multiple of {process_count}.")
  local = batch_size // process_count
  if len(source) == 0:
    raise ValueError("the dataset source is empty: check the data directory and split.")
  if weak_fn is None:
    weak_fn = weak_label_fn(source, "fine")
  n = len(source)
  if skip_unreadable:
    if not isinstance(source, SkipUnreadable):
      source = SkipUnreadable(source)  # Unreadable examples become None; grain drops them.
  ds = grain.MapDataset.source(source)
  # Indices past len(source) reach here once the dataset repeats: fold them.
  ds = ds.map_with_index(lambda index, example: (index % n, example))
  ds = ds.map(_AttachWeak(weak_fn))
  # The whole index space, shuffled with the run's seed: every process holds the same stream.
  ds = ds.shuffle(seed=seed).repeat()
  ds = ds.random_map(_WeakGeometricAug(crop, scale_range), seed=seed)
  # grain's default read-ahead is 500 elements on 16 threads: 500 batches of 8 crops of 512 px
  # are ~5 GB per iterator. A few batches ahead is all a training step needs.
  if skip_unreadable:
    # Dropped examples leave holes, so batches are formed after the (sparse) stream: each
    # process reads the whole global batch and keeps its slice.
    ids = ds.to_iter_dataset(grain.ReadOptions(
        num_threads=read_threads, prefetch_buffer_size=prefetch_batches * batch_size))
    ids = ids.batch(batch_size, drop_remainder=True)
    if process_count > 1:
      ids = ids.map(functools.partial(_rows, start=process_index * local,
                                      stop=(process_index + 1) * local))
  else:
    # Global batch t is sub-batches t*P .. t*P+P-1 of `local` examples; this process reads its
    # own, t*P + process_index, and decodes nothing else.
    ds = ds.batch(local, drop_remainder=True)
    if process_count > 1:
      ds = ds[process_index::process_count]
    ids = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                               prefetch_buffer_size=prefetch_batches))
  if num_workers > 0:
    # grain's worker pool reads absl flags; outside an absl app they are unparsed.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ids


def _rows(batch: dict[str, np.ndarray], *, start: int, stop: int) -> dict[str, np.ndarray]:
  """Rows `start:stop` of every array of a batch (this process's slice of a global batch)."""
  return {k: v[start:stop] for k, v in batch.items()}


def _pad_to(array: np.ndarray, hw: tuple[int, int], fill: int) -> np.ndarray:
  pad = [(0, hw[0] - array.shape[0]), (0, hw[1] - array.shape[1])]
  pad += [(0, 0)] * (array.ndim - 2)
  return np.pad(array, pad, constant_values=fill)


def make_eval_dataset(source: Source, *, batch_size: int,
                      weak_fn: WeakFn | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, in order, batched at full resolution; none dropped.

  Images of a batch are padded at the bottom/right to the batch's largest
  size (labels with 255), and the last batch is filled up with padding
  examples marked `valid=False`, so the jitted evaluation sees one shape.

  Yields:
    {"image": BxHxWx3 uint8, "label": BxHxW uint8, "index": B int32,
     "hw": Bx2 int32 (true size), "valid": B bool}; plus "weak" when
    `weak_fn` is given.
  """
  n = len(source)
  for start in range(0, n, batch_size):
    examples = [source[i] for i in range(start, min(start + batch_size, n))]
    hw = tuple(max(e["image"].shape[k] for e in examples) for k in (0, 1))
    count = len(examples)
    batch = {
        "image": np.zeros((batch_size, *hw, 3), np.uint8),
        "label": np.full((batch_size, *hw), IGNORE_INDEX, np.uint8),
        "index": np.zeros((batch_size,), np.int32),
        "hw": np.zeros((batch_size, 2), np.int32),
        "valid": np.arange(batch_size) < count,
    }
    if weak_fn is not None:
      batch["weak"] = np.full((batch_size, *hw), IGNORE_INDEX, np.uint8)
    for k, e in enumerate(examples):
      batch["image"][k] = _pad_to(e["image"], hw, 0)
      batch["label"][k] = _pad_to(e["label"], hw, IGNORE_INDEX)
      batch["index"][k] = start + k
      batch["hw"][k] = e["image"].shape[:2]
      if weak_fn is not None:
        batch["weak"][k] = _pad_to(weak_fn(start + k, e), hw, IGNORE_INDEX)
    yield batch
