"""`dataset.max_train_images`: a deterministic subset by seed, its ids saved and checked."""

import json

import pytest

from sesam_jax import configs_common
from sesam_jax.data import base
from sesam_jax import loop
from sesam_jax.run import layout


def _config(n, seed=0):
  config = configs_common.base_config()
  config.dataset.num_train_images, config.dataset.num_val_images = 20, 4
  config.dataset.image_size = (32, 48)
  config.dataset.max_train_images, config.seed = n, seed
  return config


def test_subset_is_drawn_by_seed_and_recorded(tmp_path):
  train, _ = loop.make_sources(_config(5), str(tmp_path))
  again, _ = loop.make_sources(_config(5), str(tmp_path))  # A resume: same ids, checked.
  other, _ = loop.make_sources(_config(5, seed=1))
  assert len(train) == 5 and train.ids == again.ids and train.ids != other.ids
  assert train[2]["id"] == train.ids[2]
  saved = json.loads((tmp_path / layout.TRAIN_IMAGES).read_text())
  assert saved == {"count": 5, "of": 20, "ids": train.ids}
  with pytest.raises(ValueError, match="other training images.*new --workdir"):
    loop.make_sources(_config(6), str(tmp_path))
  full, _ = loop.make_sources(_config(0))
  assert len(full) == 20 and base.subset_indices(20, 0, 0) == list(range(20))
