"""A SeSAM run SIGKILLed mid-run resumes state, data position and SAM bank from one checkpoint;
the training process never imports torch, and the bridge's service never imports jax."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from sesam_jax import config_lib
from sesam_jax.data import input_pipeline
from sesam_jax import loop
from tests import fakes

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIG = os.path.join(REPO, "configs", "segformer_synthetic.py") + ":weak=coarse,method=sesam"
OVERRIDES = ["--config.num_steps=4", "--config.checkpoint_every=2", "--config.log_every=1",
             "--config.crop=32", "--config.batch_size=4", "--config.dataset.image_size=48,64",
             "--config.dataset.num_train_images=8", "--config.dataset.num_val_images=4",
             "--config.eval.batch_size=4", f"--config.model={fakes.TEST_MODEL}",
             "--config.sam.backend=oracle", "--config.sam.wait_s=5.0"]

def _child(workdir, indices, stall_at=None, backend="oracle"):
  env = dict(os.environ, PYTHONPATH=REPO, INDICES=str(indices))
  if stall_at is not None:  # Stalls after committing that checkpoint, for the parent to kill.
    env.update(REPORT_AT=str(stall_at), STALL="1")
  return subprocess.Popen([sys.executable, "-c", fakes.CHILD.format(repo=REPO), "train",
                           f"--config={CONFIG}", f"--workdir={workdir}", *OVERRIDES,
                           f"--config.sam.backend={backend}"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _expected_indices(steps):
  """The batches an uninterrupted run takes: the pipeline as the loop builds it."""
  config = config_lib.config_from_flags(CONFIG, OVERRIDES)
  train, _ = loop.make_sources(config)
  it = iter(input_pipeline.make_train_dataset(
      train, crop=config.crop, batch_size=config.batch_size, seed=config.seed,
      scale_range=tuple(config.scale_range)))
  return [[int(i) for i in next(it)["index"]] for _ in range(steps)]


# The oracle prior in the bridge's worker process, and the Flax SAM (random tiny weights) run by
# a thread of the training process on its own (4 fake CPU) devices.
# The Flax SAM case compiles SAM in both the killed run and its resume (about 40 s): slow.
@pytest.mark.parametrize("backend", [
    "oracle", pytest.param("jax-random:tiny", marks=pytest.mark.slow)])
def test_killed_sesam_run_resumes_state_data_and_bank(tmp_path, backend):
  workdir, indices = tmp_path / "run", tmp_path / "indices.jsonl"
  child = _child(workdir, indices, stall_at=2, backend=backend)
  try:
    line = child.stdout.readline()  # Blocks until step 2 is committed (or the child dies).
    assert line.startswith("CHECKPOINT 2"), child.communicate()[1][-3000:]
    child.send_signal(signal.SIGKILL)
  finally:
    child.kill()
    child.wait()
  step_dir = workdir / "checkpoints" / "2"
  assert {"state", "data", "sam_bank", "clock"} <= set(os.listdir(step_dir))
  assert not (workdir / "checkpoints" / "4").exists()

  resumed = _child(workdir, indices, backend=backend)  # The same command again.
  out, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err[-3000:]
  assert "resumed from" in err and "at step 2" in err
  assert "NO TORCH" in out
  result = json.loads(out.strip().splitlines()[-2])  # Last JSON line, then "NO TORCH".
  assert result["step"] == 4
  assert ("oracle" in result["sam/backend"]) == (backend == "oracle")
  # The bank came back from step 2: every image had its SAM label, none was pre-warmed again.
  assert result["prewarmed"] == 0 and result["sam/images_with_sam_label"] == 8
  # The data position came back from step 2: steps 2-3 took the batches of an uninterrupted run.
  taken = {}
  for row in map(json.loads, open(indices)):
    taken.setdefault(row[0], row[1])  # The killed run's steps, then the resumed run's 2 and 3.
  resumed_steps = [json.loads(line) for line in open(indices)][-2:]
  assert [s for s, _ in resumed_steps] == [2, 3]
  expected = _expected_indices(4)
  assert [taken[s] for s in (0, 1)] == expected[:2]
  assert [idx for _, idx in resumed_steps] == expected[2:]
  # result.json is the last stdout line; train_seconds adds the killed run's seconds.
  saved = json.loads((workdir / "result.json").read_text())
  assert saved["step"] == 4 and saved["val_miou"] == result["val_miou"]
  clock = json.loads((step_dir / "clock" / "process_0-of-1.bin").read_bytes())
  assert saved["train_seconds"] >= clock["train_seconds"] > 0
  assert np.isfinite(saved["val_miou"]) and isinstance(saved["val_per_class_iou"], dict)


def test_the_bridge_service_never_imports_jax():
  code = ("import sys; import sam_bridge.service, sam_bridge.local_service, sam_bridge.refine; "
          "assert 'jax' not in sys.modules and 'sesam_jax' not in sys.modules; print('ok')")
  out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=REPO),
                       capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "ok"


def test_supervised_training_never_imports_torch(tmp_path):
  overrides = [o for o in OVERRIDES if "sam." not in o] + ["--config.num_steps=1"]
  env = dict(os.environ, PYTHONPATH=REPO, INDICES=str(tmp_path / "i.jsonl"))
  run = subprocess.run([sys.executable, "-c", fakes.CHILD.format(repo=REPO), "train",
                        f"--config={CONFIG.replace('method=sesam', 'method=supervised')}",
                        f"--workdir={tmp_path / 'sup'}", *overrides],
                       env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "NO TORCH" in run.stdout
