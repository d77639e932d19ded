"""End to end on `synthetic`: train, SIGKILL mid-run, resume, same parameters; `sesam eval`."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sesam_jax import config_lib, main as sesam_main
from sesam_jax import loop
from tests import fakes

REPO = fakes.REPO
CONFIG, OVERRIDES = fakes.TINY_CONFIG, fakes.TINY_OVERRIDES  # The session's tiny run's settings.

def _final_params(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)["params"]


def _config(model):
  return config_lib.config_from_flags(CONFIG, OVERRIDES + [f"--config.model={model}"])


# The loop's subject is resume and logging, not the network: the fast TinySeg by default; the
# real SegFormer-tiny (minutes on 2 shared cores, mostly compilation) as a slow check.
MODELS = [fakes.TEST_MODEL, pytest.param("segformer_tiny", marks=pytest.mark.slow)]


@pytest.fixture
def compile_cache(tmp_path):
  """A persistent XLA cache for this test: the three runs compile the same step once."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  path = tmp_path / "xla_cache"
  for n, v in zip(names, (str(path), 0, 0)):
    jax.config.update(n, v)
  yield path
  for n, v in old.items():
    jax.config.update(n, v)


@pytest.mark.parametrize("model", MODELS)
def test_killed_run_resumes_to_the_same_parameters(tmp_path, capsys, compile_cache, model,
                                                   request, shared_data):
  work_b = str(tmp_path / "b")
  if model == fakes.TEST_MODEL:
    run = request.getfixturevalue("tiny_run")  # Run A: the session's tiny run.
    work_a, result_a = str(run.workdir), run.result
  else:
    work_a = str(tmp_path / "a")
    result_a = loop.train_and_evaluate(_config(model), work_a)
  assert result_a["step"] == 4 and 0.0 <= result_a["val_miou"] <= 1.0
  assert result_a["val_images"] == 3 and "val_miou_ema" in result_a
  rows = [json.loads(line) for line in open(os.path.join(work_a, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "train/loss" in r] == [2, 4]
  assert os.listdir(os.path.join(work_a, "tensorboard"))

  env = dict(os.environ, PYTHONPATH=REPO, JAX_COMPILATION_CACHE_DIR=str(compile_cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
             REPORT_AT="2", STALL="1")  # Stalls after committing step 2, for the SIGKILL.
  child = subprocess.Popen(
      [sys.executable, "-c", fakes.CHILD.format(repo=REPO), "train", f"--config={CONFIG}",
       f"--workdir={work_b}", *OVERRIDES, f"--config.model={model}"], env=env, stdout=subprocess.PIPE, text=True)
  try:
    line = child.stdout.readline()  # blocks until step 2 is committed (or the child dies)
    assert line.startswith("CHECKPOINT 2"), f"child exited early: {child.wait()}"
    child.send_signal(signal.SIGKILL)
  finally:
    child.kill()
    child.wait()
  assert "4" not in os.listdir(os.path.join(work_b, "checkpoints"))

  result_b = loop.train_and_evaluate(_config(model), work_b)  # the same command, resumed
  assert result_b["step"] == 4
  a, b = _final_params(work_a, 4), _final_params(work_b, 4)
  for (path, x), y in zip(_leaves(a), [leaf for _, leaf in _leaves(b)]):
    np.testing.assert_array_equal(x, y, err_msg=path)
  assert result_b["val_miou"] == pytest.approx(result_a["val_miou"])

  # `sesam eval` on the finished workdir reproduces the final evaluation.
  capsys.readouterr()
  assert sesam_main.main(["eval", f"--config={CONFIG}", f"--workdir={work_a}", *OVERRIDES,
                          f"--config.model={model}"]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["step"] == 4 and out["val_miou"] == pytest.approx(result_a["val_miou"])
  assert "eval_seconds" in out


def _leaves(tree, prefix=""):
  if isinstance(tree, dict):
    return [item for k in sorted(tree) for item in _leaves(tree[k], f"{prefix}/{k}")]
  return [(prefix, np.asarray(tree))]


def test_non_finite_metrics_stop_with_the_step():
  with pytest.raises(loop.NonFiniteError, match="step 12: non-finite"):
    loop._check_finite(12, {"loss": float("nan"), "grad_norm": 1.0})


def test_eval_without_checkpoint_is_a_clear_error(tmp_path, capsys):
  # Generated scenes, not CamVid: this test needs no data folder.
  synthetic = os.path.join(REPO, "configs", "segformer_synthetic.py")
  code = sesam_main.main(["eval", f"--config={synthetic}", f"--workdir={tmp_path}",
                          f"--config.model={fakes.TEST_MODEL}"])
  assert code == 2 and "no checkpoint" in capsys.readouterr().err
