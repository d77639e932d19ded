"""Weak labels for a whole split: generated into a folder and scored, or carried by a source.

`generate_weak_labels` is `sesam weak-labels`: every image's weak label of one kind (the
protocols of `weak_labels`) written as `<image id>.png` with the dataset's palette, and scored
against the fine labels (`WeakLabelStats`). `WeakLabeledSource` adds a "weak_label" to every
item of a source, generated or read from a folder.
"""

from __future__ import annotations

import os
import pathlib
import time

import numpy as np

from sesam_jax import outputs, report
from sesam_jax.atomic import write_png_atomic
from sesam_jax.data import base, split_check
from sesam_jax.data.weak_labels import KINDS, make_weak_label
from sesam_jax.data.weak_sources import WeakLabelDir


class WeakLabeledSource:
  """A source whose items also carry "weak_label" (HxW uint8, 255 = unlabeled).

  The weak label is either generated from the fine label (`kind`, `seed`) or
  read from a folder of PNGs (`folder`), e.g. the user's own annotations.
  """

  def __init__(self, source, *, kind: str | None = None, seed: int = 0,
               folder: str | os.PathLike | None = None, **kw):
    """Args:
      source: a dataset source (`get_source`).
      kind: generate this kind ("points", "scribbles", "coarse") ...
      seed: ... with this seed;
      folder: or read `<id>.png` from this folder (exactly one of kind/folder).
      **kw: options for make_weak_label.
    """
    if (kind is None) == (folder is None):
      raise ValueError("WeakLabeledSource takes exactly one of kind= or folder=.")
    if kind is not None and kind not in KINDS:
      raise ValueError(f"unknown weak label kind {kind!r}; choose one of: {', '.join(KINDS)}.")
    self._reader = None if folder is None else WeakLabelDir(
        folder, num_classes=source.info.num_classes, ids=source.ids)
    self.source, self.kind, self.seed, self._kw = source, kind, seed, kw
    self.info, self.ids = source.info, source.ids

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    item = dict(self.source[index])
    if self._reader is not None:
      item["weak_label"] = self._reader.read(item["id"], item["label"].shape)
    else:
      item["weak_label"] = make_weak_label(item["label"], self.kind, seed=self.seed,
                                           image_id=item["id"], num_classes=self.info.num_classes,
                                           ignore_index=self.info.ignore_index, **self._kw)
    return item


class WeakLabelStats:
  """Accumulates the quality of weak labels against fine labels over images."""

  def __init__(self, num_classes: int, ignore_index: int = base.IGNORE_INDEX):
    self.num_classes, self.ignore_index = num_classes, ignore_index
    self.images = self.pixels = self.labeled = self.judged = self.agree = 0
    self.pairs = self.covered = 0

  def add(self, weak: np.ndarray, fine: np.ndarray) -> None:
    """Adds one image: HxW uint8 weak label (255 unlabeled) and fine label."""
    labeled = weak != base.IGNORE_INDEX
    judged = labeled & (fine != self.ignore_index)  # Weak pixels on void cannot be judged.
    self.images += 1
    self.pixels += weak.size
    self.labeled += int(labeled.sum())
    self.judged += int(judged.sum())
    self.agree += int((judged & (weak == fine)).sum())
    present = np.unique(fine[fine != self.ignore_index])
    self.pairs += len(present)
    self.covered += len(np.intersect1d(present, np.unique(weak[labeled])))

  def summary(self) -> dict:
    """images, labeled_fraction, purity, classes_covered (see `generate_weak_labels`)."""
    return {
        "images": self.images,
        "labeled_fraction": self.labeled / max(self.pixels, 1),
        "purity": self.agree / self.judged if self.judged else float("nan"),
        "classes_covered": self.covered / self.pairs if self.pairs else float("nan"),
    }


def generate_weak_labels(source, kind: str, *, seed: int, out_dir: str | os.PathLike,
                         limit: int | None = None, show_progress: bool | None = None,
                         check: bool = True, **kw) -> dict:
  """Writes `<out_dir>/<image id>.png` weak labels for a whole split and scores them.

  The split is checked first (`split_check`: every unreadable image, bad label value or size
  mismatch is reported at once, and nothing is written); the labels appear in `out_dir` only
  once every image is done (`outputs.staged_folder`), so a run that stops leaves no half set.

  Args:
    source: a dataset source.
    kind: "points", "scribbles" or "coarse".
    seed: protocol seed.
    out_dir: created if missing; files already there are replaced by this run's.
    limit: only the first `limit` images (quick looks).
    show_progress: progress bar (None: tqdm decides).
    check: check the split first (a clean verdict is cached per set of files).
    **kw: options for make_weak_label.

  Returns:
    {"images", "labeled_fraction" (weak pixels / all pixels), "purity" (weak pixels
    agreeing with the fine label / weak pixels on non-void fine pixels),
    "classes_covered" (fraction of (image, class present in the fine label)
    pairs with at least one weak pixel of that class), "kind", "seed", "out",
    "seconds" (all work), "ms_per_image" (label generation only)}.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown weak label kind {kind!r}; choose one of: {', '.join(KINDS)}.")
  out_dir = pathlib.Path(out_dir)
  info = source.info
  start, making = time.perf_counter(), 0.0
  if check:
    split_check.require_clean([(source, f"examples of {info.name}")], limit=limit,
                              fix="Fix or remove these files and run again; nothing was written.")
  stats = WeakLabelStats(info.num_classes, info.ignore_index)
  count = len(source) if limit is None else min(limit, len(source))
  with outputs.staged_folder(out_dir) as stage:
    for i in report.progress(range(count), desc=f"{kind} labels", unit="img",
                             disable=(not show_progress) if show_progress is not None else None):
      item = source[i]
      t = time.perf_counter()
      weak = make_weak_label(item["label"], kind, seed=seed, image_id=item["id"],
                             num_classes=info.num_classes, ignore_index=info.ignore_index, **kw)
      making += time.perf_counter() - t
      write_png_atomic(stage / f"{item['id']}.png", weak, palette=info.colors)
      stats.add(weak, item["label"])
  return {**stats.summary(), "kind": kind, "seed": seed, "out": str(out_dir),
          "seconds": round(time.perf_counter() - start, 3),
          "ms_per_image": round(1000 * making / max(count, 1), 2)}
