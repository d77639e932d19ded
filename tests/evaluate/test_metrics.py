"""The jitted confusion matrix and IoUs agree with scikit-learn on random inputs."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import jaccard_score

from sesam_jax.evaluate import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  C = 6
  gt = rng.integers(0, C, (4, 17, 23)).astype(np.uint8)
  pred = rng.integers(0, C, gt.shape).astype(np.uint8)
  gt[rng.random(gt.shape) < 0.1] = 255  # Ignored.
  pred[rng.random(gt.shape) < 0.2] = 255  # Unlabeled: a miss for the true class.
  cm = np.asarray(metrics.confusion_matrix(gt, pred, C, unlabeled_column=True))
  assert cm.shape == (C, C + 1)
  keep = gt != 255
  reference = sk_confusion_matrix(gt[keep], pred[keep], labels=list(range(C)) + [255])
  assert np.array_equal(cm, reference[:C])
  # The square form leaves unlabeled predictions out.
  square = np.asarray(metrics.confusion_matrix(gt, pred, C))
  assert square.shape == (C, C) and np.array_equal(square, reference[:C, :C])

  # Dense predictions: the square part alone is sklearn's matrix, IoU is jaccard.
  dense = rng.integers(0, C, gt.shape).astype(np.uint8)
  cm = np.asarray(metrics.confusion_matrix(gt, dense, C, unlabeled_column=True))
  assert cm[:, C].sum() == 0
  assert np.array_equal(cm[:, :C], sk_confusion_matrix(gt[keep], dense[keep], labels=range(C)))
  assert np.array_equal(cm[:, :C], np.asarray(metrics.confusion_matrix(gt, dense, C)))
  expected = jaccard_score(gt[keep], dense[keep], labels=range(C), average=None)
  np.testing.assert_allclose(metrics.per_class_iou(cm), expected)
  np.testing.assert_allclose(metrics.per_class_iou(cm[:, :C]), expected)
  assert metrics.miou(cm) == pytest.approx(expected.mean())


def test_unlabeled_is_a_miss_not_a_false_positive():
  gt = np.array([[0, 0, 1, 1]], np.uint8)
  pred = np.array([[0, 255, 1, 255]], np.uint8)
  cm = metrics.confusion_matrix(gt, pred, 2, unlabeled_column=True)
  np.testing.assert_allclose(metrics.per_class_iou(cm), [0.5, 0.5])
  assert metrics.precision_of_labeled(cm) == 1.0 and metrics.pixel_accuracy(cm) == 0.5


def test_miou_skips_classes_with_empty_union():
  gt = np.array([[0, 0, 255, 2]], np.uint8)
  pred = np.array([[0, 0, 1, 2]], np.uint8)  # Class 1 predicted only on an ignored pixel.
  iou = metrics.per_class_iou(metrics.confusion_matrix(gt, pred, 4))
  assert iou[0] == 1.0 and iou[2] == 1.0 and np.isnan(iou[1]) and np.isnan(iou[3])
  assert metrics.miou(metrics.confusion_matrix(gt, pred, 4)) == 1.0


def test_table_and_weak_vs_fine():
  cm = np.array([[3, 1], [0, 0]])
  table = metrics.format_iou_table(cm, ["road", "car"])
  assert "road" in table and "75.0" in table and "car" in table and "mIoU" in table
  assert metrics.weak_vs_fine(0.6, 0.75) == pytest.approx(0.8)
  with pytest.raises(ValueError):
    metrics.weak_vs_fine(0.5, 0.0)


def test_confusion_matrix_on_a_sharded_batch():
  """Data-parallel evaluation: the batch sharded over the 4 fake devices."""
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  rng = np.random.default_rng(7)
  gt = rng.integers(0, 5, (8, 16, 16)).astype(np.uint8)
  pred = rng.integers(0, 5, (8, 16, 16)).astype(np.uint8)
  mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  cm = metrics.confusion_matrix(jax.device_put(gt, sharding), jax.device_put(pred, sharding), 5)
  assert np.array_equal(np.asarray(cm), np.asarray(metrics.confusion_matrix(gt, pred, 5)))
  assert int(np.asarray(cm).sum()) == gt.size
