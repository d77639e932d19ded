"""The methods table: a new method trains through the unchanged loop; aux reaches its feed."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from sesam_jax import config_lib, configs_common
from sesam_jax.data import feed as feed_lib
from sesam_jax import loop, methods, names
from sesam_jax.train import train_step as step_lib
from tests import fakes

REPO = fakes.REPO


def _toy_step(model, config, schedule):
  """The supervised step, plus an aux output: each example's labeled-pixel count."""
  cfg = step_lib.StepConfig(lr_schedule=schedule, ema_decay=float(config.ema_decay))

  def step(state, batch, rng):
    state, metrics, _ = step_lib.train_step(state, batch, rng, model=model, cfg=cfg)
    labeled = jnp.sum(batch["weak"] != 255, axis=(1, 2)).astype(jnp.int32)
    return state, metrics, {"labeled": labeled}

  return step


class _ToyFeed(feed_lib.Feed):
  """Collects the aux of every step it observes (read one step later, as SeSAM does)."""
  seen: list = []

  def _observe(self, step, batch, aux):
    rows = feed_lib.local_rows(aux["labeled"])
    # The device's count matches the host batch the step was given.
    np.testing.assert_array_equal(rows, (np.asarray(batch["weak"]) != 255).sum(axis=(1, 2)))
    _ToyFeed.seen.append(step)


@pytest.fixture
def toy_method():
  methods.register(methods.Method(
      "toy", _toy_step, make_feed=lambda config, it, source, weak_fn, workdir: _ToyFeed(it)))
  _ToyFeed.seen = []
  yield "toy"
  del methods.METHODS["toy"]


def test_a_registered_method_trains_without_loop_changes(tmp_path, toy_method):
  config = config_lib.config_from_flags(
      os.path.join(REPO, "configs", "segformer_synthetic.py") + ":weak=points",
      ["--config.num_steps=2", "--config.checkpoint_every=2", "--config.log_every=1",
       "--config.crop=32", "--config.batch_size=4", "--config.dataset.image_size=48,64",
       "--config.dataset.num_train_images=8", "--config.dataset.num_val_images=4",
       "--config.eval.batch_size=4", f"--config.model={fakes.TEST_MODEL}",
       f"--config.method={toy_method}"])
  result = loop.train_and_evaluate(config, str(tmp_path))
  assert result["method"] == "toy" and result["step"] == 2
  assert _ToyFeed.seen == [0, 1]
  assert np.isfinite(result["val_miou"])


def test_unknown_method_lists_the_table():
  with pytest.raises(ValueError, match="supervised, fixmatch, sam_baseline, sesam"):
    methods.get_method("nope")
  # The configs offer the table's names without importing it (sesam_jax.names, layer 1).
  assert configs_common.METHOD_NAMES == tuple(methods.METHODS) == names.METHOD_NAMES
  assert configs_common.WEAK_KINDS is methods.WEAK_KINDS is names.WEAK_KINDS


def test_the_loop_has_no_method_branches():
  source = open(loop.__file__).read()
  for name in methods.METHODS:
    assert f'"{name}"' not in source, f"loop.py names method {name!r}"
