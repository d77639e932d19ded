"""Whole-image and sliding-window inference; padded pixels and examples never counted."""

import jax
import jax.numpy as jnp
import numpy as np

from sesam_jax.evaluate import inference, metrics
from sesam_jax.train import train_step as step_lib
from tests.fakes import TinySeg

NUM_CLASSES = 4


def _variables(model, size=64):
  return model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)


def _images(n, h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3)).astype(np.uint8)


def test_one_window_equals_whole_image_and_shapes_follow_the_input():
  model = TinySeg(NUM_CLASSES)
  variables = _variables(model)
  images = jnp.asarray(_images(2, 64, 64))
  whole = inference.predict_logits(model, variables, images, mode="whole")
  slide = inference.predict_logits(model, variables, images, mode="slide", window=64, stride=48)
  np.testing.assert_allclose(np.asarray(slide), np.asarray(whole), atol=1e-5)
  # Overlapping windows, an image smaller than the window, and half-resolution inference all
  # return logits for every input pixel.
  for kw in (dict(mode="slide", window=32, stride=24), dict(mode="slide", window=96, stride=64),
             dict(mode="whole", image_scale=0.5), dict(mode="slide", window=16, stride=12,
                                                        image_scale=0.5)):
    out = inference.predict_logits(model, variables, jnp.asarray(_images(1, 48, 80)), **kw)
    assert out.shape == (1, 48, 80, NUM_CLASSES) and bool(jnp.isfinite(out).all()), kw
  assert inference._windows(80, 32, 24) == [0, 24, 48]


def test_padding_and_invalid_examples_add_nothing():
  model = TinySeg(NUM_CLASSES)
  variables = _variables(model)
  rng = np.random.default_rng(1)
  labels = rng.integers(0, NUM_CLASSES, (3, 40, 56)).astype(np.uint8)
  labels[:, 32:] = 255  # bottom padding of a smaller image
  images = _images(3, 40, 56, seed=2)
  batches = [{"image": images, "label": labels, "valid": np.array([True, True, False])},
             {"image": images[:1], "label": labels[:1], "valid": np.array([True])}]
  mesh = step_lib.make_mesh()  # 4 devices: each batch is padded to 4 examples on the host
  result = inference.evaluate(model, {"student": variables}, batches, mesh,
                              num_classes=NUM_CLASSES, log=False)
  logits = inference.predict_logits(model, variables, jnp.asarray(images))
  pred = np.asarray(jnp.argmax(logits, -1))
  want = np.asarray(metrics.confusion_matrix(labels[:2], pred[:2], NUM_CLASSES)) + np.asarray(
      metrics.confusion_matrix(labels[:1], pred[:1], NUM_CLASSES))
  np.testing.assert_array_equal(result["student_confusion"], want)
  assert result["num_images"] == 3
  assert result["student_miou"] == metrics.miou(want)
