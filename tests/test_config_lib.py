"""Config files through ml_collections' config_flags: `file.py:arg`, typed `--config.x=y`
overrides, and one-line errors that name the flag or file."""

import functools
import glob
import os

import jax
import jax.numpy as jnp
import pytest

from sesam_jax import config_lib, configs_common, main as sesam_main
from sesam_jax.train import optim, train_state

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py")))
SYNTHETIC = os.path.join(os.path.dirname(CONFIGS[0]), "segformer_synthetic.py")


def test_parse_arg_flags_and_values():
  args = configs_common.parse_arg("weak=points,runlocal", weak="fine", runlocal=False, steps=3)
  assert (args.weak, args.runlocal, args.steps) == ("points", True, 3)
  with pytest.raises(ValueError, match="unknown config argument 'wek'"):
    configs_common.parse_arg("wek=points", weak="fine")


def test_overrides_coerce_to_field_type():
  config = config_lib.config_from_flags(SYNTHETIC, [
      "--config.optim.lr=6e-5", "--config.num_steps", "1e3", "--config.eval.ema=false",
      "--config.scale_range=0.5,1", "--config.dataset.name=camvid", "--config.sam.decoder_dtype="])
  assert config.optim.lr == 6e-5 and config.num_steps == 1000 and config.eval.ema is False
  assert config.scale_range == (0.5, 1.0) and config.dataset.name == "camvid"
  assert config.sam.decoder_dtype == ""
  with pytest.raises(ValueError, match=r"--config.optim.lrr: no such field \(did you mean 'lr'"
                                       r"\?\); fields here: b1, b2"):
    config_lib.config_from_flags(SYNTHETIC, ["--config.optim.lrr=1"])
  with pytest.raises(ValueError, match="'optm' is not a config group"):
    config_lib.config_from_flags(SYNTHETIC, ["--config.optm.lr=1"])
  with pytest.raises(ValueError, match=r"--config.num_steps=ten: cannot read this as a int \(the "
                                       r"type of its default 300\)"):
    config_lib.config_from_flags(SYNTHETIC, ["--config.num_steps=ten"])
  with pytest.raises(ValueError, match="unknown flag"):
    config_lib.config_from_flags(SYNTHETIC, ["--steps=3"])


def test_paper_schedules():
  c = config_lib.load_config(os.path.join(os.path.dirname(CONFIGS[0]), "segformer_cityscapes.py"))
  assert (c.crop, c.batch_size, c.num_steps, c.eval.mode) == (1024, 8, 120_000, "slide")
  c = config_lib.load_config(CONFIGS[0].replace(os.path.basename(CONFIGS[0]),
                                                "deeplabv3plus_ade20k.py:weak=scribbles"))
  assert (c.crop, c.batch_size, c.num_steps, c.weak) == (512, 16, 160_000, "scribbles")
  c = config_lib.load_config(CONFIGS[0].replace(os.path.basename(CONFIGS[0]), "segformer_voc.py"))
  assert (c.crop, c.batch_size, c.num_steps, c.optim.lr, c.ema_decay) == (512, 16, 60_000, 1e-4,
                                                                          0.999)
  with pytest.raises(FileNotFoundError, match="not found"):
    config_lib.load_config("configs/nope.py:weak=fine")
  with pytest.raises(ValueError, match="^weak='dots': choose one of"):
    config_lib.load_config(CONFIGS[0] + ":weak=dots")


def test_deeplab_students_are_resnet101_unless_asked_for_r50():
  path = os.path.join(os.path.dirname(CONFIGS[0]), "deeplabv3plus_cityscapes.py")
  assert config_lib.load_config(path).model == "deeplabv3plus_r101"
  assert config_lib.load_config(path + ":backbone=r50").model == "deeplabv3plus_r50"
  assert config_lib.load_config(path + ":tiny").model == "deeplabv3plus_tiny"
  with pytest.raises(ValueError, match="backbone='r18'"):
    config_lib.load_config(path + ":backbone=r18")
  synthetic = path.replace("cityscapes", "synthetic")
  assert config_lib.load_config(synthetic + ":tiny=0").model == "deeplabv3plus_r101"
  # No SAM weights exist for generated scenes: their configs name the SAM-free prior.
  assert config_lib.load_config(synthetic).sam.backend == "superpixel"
  assert config_lib.load_config(path).sam.backend == ""


def test_sesam_train_errors_are_one_line_with_exit_2(tmp_path, capsys):
  for flags, message in (
      (["--config.optim.lrr=1"], "--config.optim.lrr: no such field"),
      (["--config.num_steps=ten"], "--config.num_steps=ten: cannot read this as a int"),
      ([], None)):
    spec = SYNTHETIC if flags else "configs/missing.py"
    code = sesam_main.main(["train", f"--config={spec}", f"--workdir={tmp_path / 'w'}", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert (message or "config file configs/missing.py not found") in err[0]
  assert not (tmp_path / "w").exists()


@functools.cache
def _student_shapes(name, dtype):
  """(parameter shapes, output shape) of student `name` on 64x64 inputs, traced once per student
  (the configs share a few students)."""
  from sesam_jax.models import create_model
  model = create_model(name, 19, dtype=jnp.dtype(dtype))
  variables = jax.eval_shape(lambda: train_state.init_variables(model, jax.random.key(0), 64))
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 64, 64, 3)), train=False),
                       variables)
  return variables["params"], out.shape


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_loads_and_builds_its_model(path):
  for arg in ("", ":weak=coarse,runlocal"):
    config = config_lib.load_config(path + arg)
    assert config.weak in configs_common.WEAK_KINDS
    assert config.batch_size % 4 == 0 or config.batch_size < 4, "fake 4-device mesh"
    params, out_shape = _student_shapes(config.model, config.dtype)
    # The optimizer's head/backbone split must find the head of every student.
    optim.make_optimizer(config.optim, params, config.num_steps)
    assert out_shape == (2, 16, 16, 19)


def test_camvid_reads_shared_data_unless_data_dir_is_given():
  path = os.path.join(os.path.dirname(CONFIGS[0]), "segformer_camvid.py")
  config = config_lib.config_from_flags(path + ":weak=fine,runlocal", [])
  assert config.data_dir == os.path.join("..", "shared", "data", "camvid")
  assert config.num_steps < config_lib.load_config(path).num_steps
  config = config_lib.config_from_flags(path + ":weak=fine,runlocal",
                                        ["--config.data_dir=/data/camvid"])
  assert config.data_dir == "/data/camvid" and config.eval.image_scale == 0.5
