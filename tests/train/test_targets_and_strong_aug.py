"""Label-source precedence and the on-device strong augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sesam_jax.train import strong_aug, targets


def test_precedence_weak_over_sam_over_pseudo():
  weak = jnp.array([[[1, 255, 255, 255]]])
  sam = jnp.array([[[2, 2, 255, 255]]])
  pseudo = jnp.array([[[3, 3, 3, 3]]])
  conf = jnp.array([[[0.99, 0.99, 0.99, 0.5]]])
  t = targets.split_by_precedence(weak, sam, pseudo, conf, theta1=0.96)
  np.testing.assert_array_equal(t["weak"][0, 0], [1, 255, 255, 255])
  np.testing.assert_array_equal(t["sam"][0, 0], [255, 2, 255, 255])
  np.testing.assert_array_equal(t["pseudo"][0, 0], [255, 255, 3, 255])  # last: conf < theta1
  # Sources never overlap, and coverage adds up to the supervised share.
  labeled = sum((v != 255).astype(int) for v in t.values())
  assert int(labeled.max()) == 1
  cov = targets.coverage(t)
  assert float(sum(cov.values())) == 0.75


def test_sam_precision_counts_only_sam_pixels_with_a_fine_label():
  weak = jnp.array([[[1, 255, 255, 255, 255, 255]]], jnp.uint8)
  sam = jnp.array([[[2, 2, 3, 3, 4, 255]]], jnp.uint8)
  fine = jnp.array([[[2, 2, 3, 0, 255, 1]]], jnp.uint8)
  t = targets.split_by_precedence(weak, sam, None, None, theta1=0.96)
  # SAM's pixels are 1-4 (pixel 0 is the weak label's); pixel 4 has no fine label: of 1-3,
  # two match.
  assert float(targets.precision(t["sam"], fine)) == pytest.approx(2 / 3)
  assert float(targets.precision(jnp.full_like(t["sam"], 255), fine)) == 0.0  # None: 0.


def test_absent_sources_and_padding():
  weak = jnp.array([[[1, 255]]])
  t = targets.split_by_precedence(weak, None, None, None, theta1=0.96,
                                  valid=jnp.array([[[False, True]]]))
  assert np.all(np.asarray(t["weak"]) == 255)
  assert np.all(np.asarray(t["sam"]) == 255) and np.all(np.asarray(t["pseudo"]) == 255)


def test_pseudo_labels_confidence():
  logits = jnp.log(jnp.array([[[[0.1, 0.9], [0.6, 0.4]]]]))
  cls, conf = targets.pseudo_labels(logits)
  np.testing.assert_array_equal(cls[0, 0], [1, 0])
  np.testing.assert_allclose(conf[0, 0], [0.9, 0.6], rtol=1e-6)


def test_cutmix_moves_image_and_targets_together():
  b, h, w = 4, 16, 16
  images = jnp.broadcast_to(jnp.arange(b, dtype=jnp.float32)[:, None, None, None] / 10, (b, h, w, 3))
  labels = jnp.broadcast_to(jnp.arange(b)[:, None, None], (b, h, w))
  cfg = strong_aug.StrongAugConfig(cutmix_prob=1.0)
  boxes = strong_aug.cutmix_boxes(jax.random.key(0), b, h, w, cfg)
  mixed, t = strong_aug.cutmix(boxes, images, {"weak": labels})
  assert bool(boxes.any(axis=(1, 2)).all())
  # Inside the box, image and label both come from the partner (b - 1).
  partner = (jnp.arange(b) - 1) % b
  np.testing.assert_array_equal(jnp.where(boxes, t["weak"], -1),
                                jnp.where(boxes, partner[:, None, None], -1))
  np.testing.assert_allclose(mixed[..., 0] * 10, t["weak"].astype(jnp.float32), atol=1e-5)


def test_strong_augment_is_jittable_in_range_and_keyed():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((4, 24, 24, 3), dtype=np.float32))
  labels = jnp.asarray(rng.integers(0, 5, (4, 24, 24)))
  fn = jax.jit(strong_aug.strong_augment)
  out1, t1 = fn(jax.random.key(1), images, {"weak": labels})
  out2, _ = fn(jax.random.key(1), images, {"weak": labels})
  out3, _ = fn(jax.random.key(2), images, {"weak": labels})
  assert out1.shape == images.shape and float(out1.min()) >= 0 and float(out1.max()) <= 1
  np.testing.assert_array_equal(out1, out2)
  assert not np.allclose(out1, out3)
  assert set(np.unique(t1["weak"])) <= set(range(5))


def test_blur_is_a_normalised_gaussian():
  cfg = strong_aug.StrongAugConfig(blur_prob=1.0, blur_sigma=(1.0, 1.0))
  flat = jnp.full((2, 12, 12, 3), 0.3)
  np.testing.assert_allclose(strong_aug.gaussian_blur(jax.random.key(0), flat, cfg), flat, atol=1e-6)
  impulse = jnp.zeros((1, 11, 11, 3)).at[0, 5, 5].set(1.0)
  out = strong_aug.gaussian_blur(jax.random.key(0), impulse, cfg)
  np.testing.assert_allclose(float(out.sum()) / 3, 1.0, rtol=1e-5)
  assert float(out[0, 5, 5, 0]) < 0.2 and float(out[0, 5, 6, 0]) > 0.05
