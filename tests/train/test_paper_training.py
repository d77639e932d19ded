"""Training as the paper does: a converted init under the EMA copy, the ablation switches of
Tables 3-4 end to end on the user's own labels, and no silent stand-in for SAM."""

import os

import jax
import numpy as np
import pytest

from sesam_jax import config_lib, configs_common, main as sesam_main
from sesam_jax.models import conversion, create_model
from sesam_jax.run import pretrained
from sesam_jax.train import train_state
from sesam_jax import loop
from tests.data import weak_fixtures
from tests import fakes
from .test_weak_source_training import reader_config

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SYNTHETIC = os.path.join(REPO, "configs", "segformer_synthetic.py")


def _tree(variables):
  return {k: np.asarray(v) for k, v in conversion.engine.tree_leaves(jax.device_get(variables))}


def _converted(path, model_name, num_classes, seed):
  """A `sesam convert` file holding a randomly initialised `model_name` (all of it)."""
  model = create_model(model_name, num_classes)
  variables = jax.device_get(train_state.init_variables(model, jax.random.key(seed), 32))
  converted = conversion.Conversion(jax.tree.map(np.asarray, dict(variables)), {}, [],
                                    model=model_name)
  conversion.save_converted(converted, path, source="random", fmt="hf")
  return converted.variables


def test_init_lays_converted_weights_under_the_student_and_its_ema(tmp_path):
  path = str(tmp_path / "imagenet.msgpack")
  # Converted for 19 classes (another dataset's head); synthetic has 7.
  weights = _converted(path, fakes.TEST_MODEL, 19, seed=5)
  config = config_lib.config_from_flags(SYNTHETIC + ":weak=points", [
      f"--config.model={fakes.TEST_MODEL}", "--config.num_steps=0", "--config.batch_size=4",
      "--config.dataset.image_size=32,48", "--config.dataset.num_train_images=4",
      f"--config.init={path}", "--config.init_skip=decode_head"])
  outcome = loop.train(config, str(tmp_path / "run"))  # A fresh run, at step 0.
  state = outcome.state
  assert int(state.step) == 0 and outcome.info["init"] == path
  file = _tree(weights)
  for name, tree in (("params", state.params), ("params", state.ema_params),
                     ("batch_stats", state.batch_stats), ("batch_stats", state.ema_batch_stats)):
    got = _tree(tree)
    for leaf, value in got.items():
      if leaf[0] == "decode_head":  # The classifier: freshly initialised for 7 classes.
        assert value.shape[-1] == 7
      else:
        np.testing.assert_array_equal(value, file[(name,) + leaf], err_msg=str(leaf))
  assert any(leaf[0] != "decode_head" for leaf in _tree(state.params))
  # Without the skip, the classifier's shape stops the run, naming its path.
  config.init_skip = ()
  with pytest.raises(ValueError, match=r"--config.init=.*pretrained leaf params/decode_head/"
                                       r"(bias|kernel) has shape .*19.*--config.init_skip"):
    loop.train(config, str(tmp_path / "run2"))
  config.model = "segformer_tiny"
  with pytest.raises(ValueError, match=f"converted for {fakes.TEST_MODEL}, but config.model is "
                                       "segformer_tiny"):
    pretrained.load_init(config)


@pytest.mark.parametrize("model, classifier", [("segformer_tiny", "params/decode_head/classifier"),
                                               ("deeplabv3plus_tiny", "params/classifier")])
def test_the_default_skip_is_the_classifier_only(model, classifier):
  variables = jax.eval_shape(lambda: train_state.init_variables(create_model(model, 19),
                                                                jax.random.key(0), 32))
  kept, dropped = pretrained.drop_subtrees(dict(variables),
                                           configs_common.base_config().init_skip)
  assert dropped == [classifier]
  assert len(jax.tree.leaves(kept)) == len(jax.tree.leaves(dict(variables))) - 2  # kernel, bias


def test_ablations_train_end_to_end_on_the_users_labels(shared_data, tmp_path):
  """SeSAM with Table 4a's confidence sampling, Table 3c's weak-only sampling and the merged
  loss, on the user's PNG points, one of which is unreadable and skipped."""
  fixture = weak_fixtures.png_fixture(shared_data, tmp_path)
  weak_fixtures.png(fixture.files[3], np.full((10, 10), 255))  # Wrong size: skipped, counted.
  config = reader_config(fixture, "--config.method=sesam", "--config.num_steps=3",
                         "--config.sam.backend=oracle", "--config.sam.sampling=confidence",
                         "--config.sam.refined_sampling=false", "--config.loss.merge_weak_sam=true",
                         "--config.dataset.skip_unreadable=true", "--config.sam.wait_s=5.0",
                         "--config.teacher.theta1=0.0", "--config.teacher.theta2=0.0",
                         "--config.log_every=3", "--config.checkpoint_every=3")
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 3 and np.isfinite(result["val_miou"])
  assert result["sam_backend"].startswith("oracle (oracle:")
  assert result["skipped_examples"] == 1 and result["bad_weak_labels"] == 1
  # The pre-warm refined the 7 readable images (the paper's sampling: no teacher yet); steps
  # 0 and 1 then sent their refreshes with the teacher's confidence (the bridge's refine()
  # raises without one), each once its step's outputs were back.
  assert result["prewarmed"] == 7 and result["sam/sent"] >= 7 + 1
  assert result["final_coverage_weak_sam"] > 0 and "final_coverage_sam" in result


def test_sesam_without_sam_weights_stops_before_any_work(tmp_path, capsys):
  camvid = os.path.join(REPO, "configs", "segformer_camvid.py")
  code = sesam_main.main(["train", f"--config={camvid}:weak=coarse,method=sesam",
                          f"--workdir={tmp_path / 'run'}"])
  err = capsys.readouterr().err
  assert code == 2 and "method=sesam needs SAM and --config.sam.backend is not set" in err
  assert "--config.sam.backend=superpixel runs a SAM-free prior instead" in err
  assert not os.path.exists(tmp_path / "run")
