"""Segmentation metrics: a jitted confusion matrix, mIoU and per-class IoU.

The confusion matrix is summed on device per batch (one scatter-add) and the
IoU arithmetic runs on host in float64 over the accumulated counts. Rows are
true classes, columns predicted classes; ground-truth pixels of 255 (or any id
>= C) are ignored entirely.

Scoring a partly labeled map (a weak or SAM-refined label, 255 = unlabeled)
needs one more column: with `unlabeled_column=True` the matrix is Cx(C+1) and
a prediction of 255 for a pixel of class c lands in the last column, a miss
for c that counts against c's recall but against no class's precision, so a
sparse map is scored fairly against a dense one. The default CxC form is for
model predictions (argmax never gives 255); there, out-of-range predictions
are left out. `miou` and `per_class_iou` accept both forms.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=("num_classes", "unlabeled_column"))
def confusion_matrix(gt: jax.Array, pred: jax.Array, num_classes: int, *,
                     unlabeled_column: bool = False) -> jax.Array:
  """Counts (true class, predicted class) pixel pairs.

  Args:
    gt: integer class ids of any shape (e.g. BxHxW uint8); 255 or >= C ignored.
    pred: same shape, predicted ids; 255 (or any id outside 0..C-1) is "unlabeled".
    num_classes: C.
    unlabeled_column: False: CxC, unlabeled predictions left out (for argmax
      predictions, which have none). True: Cx(C+1), the last column counts
      unlabeled predictions as misses of the true class (for scoring weak /
      refined label maps).

  Returns:
    CxC or Cx(C+1) int32: [c, k] = pixels of true class c predicted k.
  """
  gt = jnp.asarray(gt).astype(jnp.int32).ravel()
  pred = jnp.asarray(pred).astype(jnp.int32).ravel()
  labeled = (pred >= 0) & (pred < num_classes)
  valid = (gt >= 0) & (gt < num_classes)
  if not unlabeled_column:
    valid &= labeled
  columns = num_classes + 1 if unlabeled_column else num_classes
  pred = jnp.where(labeled, pred, num_classes)
  index = jnp.where(valid, gt * columns + pred, 0)
  counts = jnp.zeros(num_classes * columns, jnp.int32).at[index].add(valid.astype(jnp.int32))
  return counts.reshape(num_classes, columns)


def per_class_iou(confusion: np.ndarray | jax.Array) -> np.ndarray:
  """IoU per class: TP / (TP + FP + FN); NaN where the union is empty.

  Args:
    confusion: CxC or Cx(C+1) counts (rows true, columns predicted; the
      optional last column counts unlabeled predictions, i.e. misses).

  Returns:
    C float64 IoUs in [0, 1], NaN for classes neither present nor predicted.
  """
  confusion = np.asarray(confusion, np.float64)
  num_classes = confusion.shape[0]
  if confusion.shape not in ((num_classes, num_classes), (num_classes, num_classes + 1)):
    raise ValueError(f"confusion must be CxC or Cx(C+1), got {confusion.shape}.")
  tp = np.diag(confusion[:, :num_classes])
  true = confusion.sum(axis=1)  # Includes misses (unlabeled column).
  predicted = confusion[:, :num_classes].sum(axis=0)
  union = true + predicted - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def miou(confusion: np.ndarray | jax.Array) -> float:
  """Mean IoU over classes with a non-empty union (NaN if there is none)."""
  iou = per_class_iou(confusion)
  return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(confusion: np.ndarray | jax.Array) -> float:
  """Correct pixels / non-ignored pixels (misses count as wrong)."""
  confusion = np.asarray(confusion, np.float64)
  total = confusion.sum()
  return float(np.trace(confusion[:, :confusion.shape[0]]) / total) if total else float("nan")


def precision_of_labeled(confusion: np.ndarray | jax.Array) -> float:
  """Correct pixels / labeled pixels (unlabeled predictions left out)."""
  confusion = np.asarray(confusion, np.float64)
  num_classes = confusion.shape[0]
  labeled = confusion[:, :num_classes].sum()
  return float(np.trace(confusion[:, :num_classes]) / labeled) if labeled else float("nan")


def weak_vs_fine(weak_miou: float, fine_miou: float) -> float:
  """The paper's WvF ratio: mIoU trained on weak labels / mIoU trained on fine labels."""
  if not fine_miou > 0:
    raise ValueError(f"weak-vs-fine needs a positive fine mIoU, got {fine_miou}.")
  return float(weak_miou) / float(fine_miou)


def format_iou_table(confusion: np.ndarray | jax.Array, class_names: Sequence[str]) -> str:
  """Per-class IoU as an aligned text table (percent), with the mIoU last.

  Args:
    confusion: CxC or Cx(C+1) counts.
    class_names: C names in id order.

  Returns:
    Multi-line string: one "name  IoU" row per class ("-" where undefined).
  """
  iou = per_class_iou(confusion)
  if len(class_names) != len(iou):
    raise ValueError(f"{len(class_names)} class names for {len(iou)} classes.")
  width = max(len("mIoU"), *(len(n) for n in class_names))
  rows = [f"{'class':<{width}}  IoU %"]
  for name, value in zip(class_names, iou):
    rows.append(f"{name:<{width}}  {'-' if np.isnan(value) else f'{100 * value:5.1f}'}")
  rows.append(f"{'mIoU':<{width}}  {100 * miou(confusion):5.1f}")
  return "\n".join(rows)
