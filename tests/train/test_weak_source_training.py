"""Training on the user's own weak labels: a tiny run from each reader's fixture; bad files."""

import os

import numpy as np
import pytest

from sesam_jax import config_lib, main as sesam_main
from sesam_jax import loop
from tests.data import weak_fixtures
from tests import fakes

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# Per dataset: the config file, and a crop and scale that show each image whole in the crop, so
# every batch holds weak pixels (the sparse ones too).
DATASETS = {
    "synthetic": ("segformer_synthetic.py", ["--config.crop=64", "--config.scale_range=1.0,1.0",
                                             "--config.dataset.image_size=48,64",
                                             "--config.dataset.num_train_images=8",
                                             "--config.dataset.num_val_images=4"]),
    # The Cityscapes sample is 128x256 (a quarter of the real size); VOC's are about 500x375.
    "cityscapes": ("segformer_cityscapes.py", ["--config.crop=64",
                                               "--config.scale_range=0.25,0.25",
                                               "--config.eval.image_scale=0.5"]),
    "voc": ("segformer_voc.py", ["--config.crop=64", "--config.scale_range=0.125,0.125",
                                 "--config.eval.image_scale=0.25"]),
}


def reader_config(fixture: weak_fixtures.ReaderFixture, *extra: str):
  """A 2-step run of the tiny test model on `fixture`'s weak labels (supervised unless `extra`)."""
  name, overrides = DATASETS[fixture.dataset]
  spec = os.path.join(REPO, "configs", name) + f":weak={fixture.kind}"
  if fixture.dataset != "synthetic":
    overrides = overrides + [f"--config.data_dir={fixture.data_dir}",
                             f"--config.dataset.train_split={fixture.split}",
                             f"--config.dataset.val_split={fixture.split}",
                             "--config.eval.mode=whole", "--config.eval.max_images=2"]
  return config_lib.config_from_flags(spec, overrides + [
      f"--config.weak_source={fixture.spec}", f"--config.weak_options={fixture.options}",
      f"--config.model={fakes.TEST_MODEL}", "--config.num_steps=2", "--config.log_every=2",
      "--config.checkpoint_every=2", "--config.batch_size=4", "--config.eval.batch_size=4",
      "--config.optim.warmup_steps=1", *extra])


# One reader in the default suite; each of the others is the same run on another layout.
READERS = [pytest.param(name, marks=() if name == "clicks_csv" else pytest.mark.slow)
           for name in weak_fixtures.READERS]


@pytest.mark.parametrize("reader", READERS)
def test_trains_from_each_weak_source(reader, shared_data, tmp_path):
  fixture = weak_fixtures.READERS[reader](shared_data, tmp_path)
  result = loop.train_and_evaluate(reader_config(fixture), str(tmp_path / "run"))
  assert result["step"] == 2 and result["weak_source"] == fixture.spec
  assert result["weak"] == fixture.kind and np.isfinite(result["val_miou"])
  # The batches carried the reader's labels: weak pixels in every logged batch.
  assert result["final_coverage_weak"] > 0


def test_every_bad_weak_label_is_one_line_before_training(shared_data, tmp_path, capsys):
  fixture = weak_fixtures.png_fixture(shared_data, tmp_path)
  good, wrong_size, unknown_class, missing, corrupt = fixture.files[:5]
  weak_fixtures.png(wrong_size, np.full((10, 10), 255))
  weak_fixtures.png(unknown_class, np.full((48, 64), 9))      # synthetic has 7 classes
  missing.unlink()
  corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  config = reader_config(fixture)
  argv = ["train", f"--config={REPO}/configs/segformer_synthetic.py:weak=points",
          f"--workdir={tmp_path / 'run'}"] + [
              f"--config.{k}={v}" for k, v in (("weak_source", config.weak_source),
                                               ("model", fakes.TEST_MODEL),
                                               ("dataset.image_size", "48,64"),
                                               ("dataset.num_train_images", 8))]
  assert sesam_main.main(argv) == 2
  err = capsys.readouterr().err
  assert f"4 weak label(s) of --config.weak_source={fixture.spec} cannot be used" in err
  for path, why in ((wrong_size, "is 10x10 (WxH)"), (unknown_class, "contains value(s) [9]"),
                    (missing, "not found"), (corrupt, "cannot decode")):
    assert len([line for line in err.splitlines() if str(path) in line and why in line]) == 1
  assert str(good) not in err and "--config.dataset.skip_unreadable=true" in err
  assert not os.path.exists(tmp_path / "run" / "checkpoints")  # Stopped before any training.


def test_weak_source_settings_name_the_training_flags(shared_data, tmp_path):
  fixture = weak_fixtures.clicks_fixture(shared_data, tmp_path)
  source = fixture.source()
  from sesam_jax.data import input_pipeline
  with pytest.raises(ValueError, match=r"holds points labels but --config.weak=coarse"):
    input_pipeline.weak_label_fn(source, "coarse", weak_source=fixture.spec)
  with pytest.raises(ValueError, match=r"--config.weak_options=widht=3: .*no option 'widht'.*"
                                       r"--config.weak_options=KEY=VALUE"):
    input_pipeline.weak_label_fn(source, "points", weak_source=fixture.spec,
                                 weak_options="widht=3")
  with pytest.raises(ValueError, match=r"--config.weak_options= 'width3': write KEY=VALUE"):
    input_pipeline.weak_label_fn(source, "points", weak_source=fixture.spec, weak_options="width3")
  png = weak_fixtures.png_fixture(shared_data, tmp_path)
  with pytest.raises(ValueError, match=r"set --config.weak=points\|scribbles\|coarse"):
    input_pipeline.weak_label_fn(source, "fine", weak_source=png.spec)
  # "unlabeled=0,255" keeps its comma: a part without "=" continues the value before it.
  from sesam_jax.data.weak_sources import parse_option_string
  assert parse_option_string("ids=raw,unlabeled=0,255,pattern=**/{id}.png") == {
      "ids": "raw", "unlabeled": "0,255", "pattern": "**/{id}.png"}
  reader = input_pipeline.weak_label_fn(source, "points", weak_source=fixture.spec,
                                        weak_options="width=3")
  clicks = (weak_fixtures.points_labels(source)[0] != 255).sum()
  assert clicks < (reader(0, source[0]) != 255).sum() <= 9 * clicks  # 3x3 px per click.
  assert reader.check(source) == []
