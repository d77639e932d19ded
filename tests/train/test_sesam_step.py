"""The teacher-student step: sources, precedence, confident map, sharding over 4 devices."""

import functools

import jax
import numpy as np
import optax
import pytest

from sesam_jax.train import sesam_step, train_state
from sesam_jax.train import train_step as step_lib
from tests import fakes


@functools.cache
def _compiled(method, num_devices, ema_decay):
  """The method's teacher-student step as the loop builds it (methods table, jit_step), compiled
  once per setting for this module's tests."""
  model = fakes.TinySeg(4)
  tx = optax.adamw(1e-3)
  mesh = step_lib.make_mesh(jax.devices()[:num_devices])
  cfg = sesam_step.SesamStepConfig(lr_schedule=lambda s: 1e-3, use_sam=method == "sesam",
                                   ema_decay=ema_decay, theta1=0.0, theta2=0.0)
  state = train_state.abstract_train_state(model, tx, mesh, image_size=32)
  step = step_lib.jit_step(functools.partial(sesam_step.sesam_train_step, model=model, cfg=cfg),
                           mesh, state)
  return model, tx, mesh, step


def _setup(method, num_devices=4, ema_decay=0.5):
  """(model, mesh, a fresh train state, the jitted step) on the first `num_devices` devices."""
  model, tx, mesh, step = _compiled(method, num_devices, ema_decay)
  state = train_state.create_train_state(model, tx, jax.random.key(0), mesh, image_size=32)
  return model, mesh, state, step


def _step(step, state, host, mesh, seed):
  """One step on the host batch `host`: batch and key placed first, the call itself under
  `jax.transfer_guard("disallow")` (no implicit transfer inside the step)."""
  batch = step_lib.shard_batch(host, mesh)
  rng = jax.device_put(jax.random.key(seed), train_state.replicated(mesh))
  with jax.transfer_guard("disallow"):
    return step(state, batch, rng)


def _batch(n=8, size=32, seed=0):
  rng = np.random.default_rng(seed)
  weak = np.full((n, size, size), 255, np.uint8)
  weak[:, :8] = rng.integers(0, 4, (n, 8, size))
  sam = np.full((n, size, size), 255, np.uint8)
  sam[:, 4:16] = 2  # Overlaps the weak rows 4..7: weak wins there.
  return {"image": rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8), "weak": weak,
          "sam": sam, "valid": np.ones((n, size, size), np.uint8)}


@pytest.mark.parametrize("method", ["fixmatch", "sesam"])
def test_step_runs_and_reports_every_source(method):
  model, mesh, state, step = _setup(method)
  state, metrics, aux = _step(step, state, _batch(), mesh, 1)
  confident = aux["confident"]
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
  assert confident.shape == (8, 32, 32) and confident.dtype == np.uint8
  # theta = 0: every pixel is a confident pseudo-label, and they fill what weak/SAM leave.
  assert float(metrics["teacher_confident"]) == 1.0
  if method == "sesam":
    assert float(metrics["coverage_sam"]) > 0.0
    total = sum(float(metrics[f"coverage_{s}"]) for s in ("weak", "sam", "pseudo"))
  else:
    assert "coverage_sam" not in metrics
    total = sum(float(metrics[f"coverage_{s}"]) for s in ("weak", "pseudo"))
  np.testing.assert_allclose(total, 1.0, rtol=1e-6)  # Sources never overlap.


def test_four_devices_match_one():
  results = []
  for num_devices in (1, 4):
    model, mesh, state, step = _setup("sesam", num_devices)
    state, metrics, aux = _step(step, state, _batch(), mesh, 3)
    results.append((float(metrics["loss"]), np.asarray(aux["confident"])))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4)
  np.testing.assert_array_equal(results[0][1], results[1][1])


def test_padding_gets_no_pseudo_label():
  model, mesh, state, step = _setup("fixmatch")
  host = _batch()
  host["valid"][:, :, 16:] = 0  # The right half of every crop is padding.
  _, metrics, aux = _step(step, state, host, mesh, 1)
  confident = aux["confident"]
  assert np.all(np.asarray(confident)[:, :, 16:] == 255)
  assert np.all(np.asarray(confident)[:, :, :16] != 255)
  np.testing.assert_allclose(float(metrics["teacher_confident"]), 0.5)
  # Weak rows 0..7 cover 1/4 of the pixels; pseudo-labels fill only the valid rest.
  np.testing.assert_allclose(float(metrics["coverage_pseudo"]), 0.5 - 0.25 / 2, rtol=1e-6)


def test_merged_weak_and_sam_labels_average_over_one_map():
  """loss.merge_weak_sam: one CE over the union, SAM pixels weighted lambda1, one average.

  (The step with the switch on trains in tests/train/test_paper_training.py.)
  """
  from sesam_jax.train import losses
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
  weak = np.full((2, 8, 8), 255)
  weak[:, :2] = 1
  sam = np.full((2, 8, 8), 255)
  sam[:, 2:8] = 3
  merged = np.where(weak != 255, weak, sam)
  weights = np.where(weak != 255, 1.0, 0.5)
  total, metrics = losses.segmentation_loss(
      logits, {"weak_sam": losses.LabelSource(merged, 1.0, weights)})
  nll = -jax.nn.log_softmax(logits)[np.arange(2)[:, None, None], np.arange(8)[:, None],
                                    np.arange(8), merged]
  np.testing.assert_allclose(float(total), (nll * weights).sum() / merged.size, rtol=1e-5)
  separate, _ = losses.segmentation_loss(logits, {"weak": losses.LabelSource(weak, 1.0),
                                                  "sam": losses.LabelSource(sam, 0.5)})
  assert not np.isclose(float(total), float(separate))
