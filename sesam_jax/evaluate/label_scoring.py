"""Scores a folder of label maps (weak, SAM-refined or predicted) against fine labels."""

from __future__ import annotations

import os

import numpy as np

from sesam_jax import report
from sesam_jax.data import base, split_check, weak_sources
from sesam_jax.evaluate import metrics


def score_label_folder(source, labels_dir: str | os.PathLike, *, limit: int | None = None,
                       show_progress: bool | None = None, check: bool = True) -> dict:
  """Compares `labels_dir/<id>.png` with the fine label of every image of `source`.

  Unlabeled pixels (255) count as misses for the true class (see `metrics`). With `check`, the
  split and the folder are checked first and every bad file is reported at once: a missing or
  undecodable label map, one of another size than its image, a class id outside the dataset.

  Args:
    source: a dataset source (`sesam_jax.data.get_source`).
    labels_dir: folder with one PNG per image id (class ids, 255 = unlabeled).
    limit: only the first `limit` images of the split.
    show_progress: progress bar (None: tqdm decides).
    check: check every file before scoring.

  Returns:
    {"images", "miou", "labeled_fraction" (labeled pixels / all pixels),
    "precision" (correct / labeled pixels on non-void ground truth),
    "pixel_accuracy", "per_class_iou" {name: IoU or None}, "table" (text)}.
  """
  labels_dir = base.require_dir(labels_dir, "label folder",
                                "pass --labels pointing at a folder of <image stem>.png maps.")
  count = len(source) if limit is None else min(limit, len(source))
  if check:
    maps = weak_sources.PngReader(source, str(labels_dir))
    split_check.require_clean(
        [(source, f"examples of {source.info.name}")], limit=limit,
        more=[(maps.check(source, limit=limit), f"label map(s) in {labels_dir} (--labels)")],
        fix="Fix, add or remove these files and run again.")
  missing = [i for i in source.ids[:count] if not (labels_dir / f"{i}.png").is_file()]
  if missing:
    raise FileNotFoundError(f"{len(missing)} of {count} images have no label in "
                            f"{labels_dir}, e.g. {labels_dir / (missing[0] + '.png')}; every "
                            "image of the split needs <image stem>.png.")
  info = source.info
  confusion = np.zeros((info.num_classes, info.num_classes + 1), np.int64)
  labeled = pixels = 0
  for i in report.progress(range(count), desc="scoring", unit="img",
                           disable=(not show_progress) if show_progress is not None else None):
    item = source[i]
    label = weak_sources.read_weak_label(labels_dir, item["id"], num_classes=info.num_classes,
                                        shape=item["label"].shape)
    confusion += np.asarray(metrics.confusion_matrix(item["label"], label, info.num_classes,
                                                           unlabeled_column=True))
    labeled += int((label != base.IGNORE_INDEX).sum())
    pixels += label.size
  iou = metrics.per_class_iou(confusion)
  return {
      "images": count,
      "miou": metrics.miou(confusion),
      "labeled_fraction": labeled / max(pixels, 1),
      "precision": metrics.precision_of_labeled(confusion),
      "pixel_accuracy": metrics.pixel_accuracy(confusion),
      "per_class_iou": {n: (None if np.isnan(v) else round(float(v), 4))
                        for n, v in zip(info.class_names, iou)},
      "table": metrics.format_iou_table(confusion, info.class_names),
  }
