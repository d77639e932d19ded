"""SeSAM and FixMatch through the real loop on `synthetic`: SAM labels arrive, resume keeps them."""

import os

import numpy as np

from sesam_jax import config_lib
from sesam_jax import loop
from tests import fakes

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _config(method, num_steps):
  spec = os.path.join(REPO, "configs", "segformer_synthetic.py") + f":weak=coarse,method={method}"
  return config_lib.config_from_flags(spec, [
      f"--config.num_steps={num_steps}", "--config.checkpoint_every=3", "--config.log_every=3",
      "--config.crop=32", "--config.batch_size=8", "--config.dataset.image_size=48,64",
      "--config.dataset.num_train_images=8", "--config.dataset.num_val_images=4",
      "--config.eval.batch_size=4", "--config.optim.warmup_steps=2",
      f"--config.model={fakes.TEST_MODEL}", "--config.sam.backend=oracle",
      "--config.sam.wait_s=5.0", "--config.teacher.theta1=0.0", "--config.teacher.theta2=0.0"])


def test_sesam_trains_with_sam_labels_and_resumes_the_bank(tmp_path):
  workdir = str(tmp_path / "sesam")
  first = loop.train_and_evaluate(_config("sesam", 3), workdir)
  assert first["method"] == "sesam" and first["step"] == 3
  assert first["sam/received"] > 0 and first["final_coverage_sam"] > 0
  # The pre-warm refined all 8 training images before step 0.
  assert first["sam/images_with_sam_label"] == 8 and first["sam/received"] >= 8
  assert first["prewarm_seconds"] > 0
  # theta = 0: the teacher's labels fill what weak and SAM leave, and extend the next requests.
  assert first["final_coverage_pseudo"] > 0
  # The bank is an item of the one checkpoint, one file per process, beside state and data.
  step_dir = os.path.join(workdir, "checkpoints", "3")
  assert {"state", "data", "sam_bank", "clock"} <= set(os.listdir(step_dir))
  assert "process_0-of-1.bin" in os.listdir(os.path.join(step_dir, "sam_bank"))
  second = loop.train_and_evaluate(_config("sesam", 6), workdir)  # Same workdir: resumes.
  assert second["step"] == 6
  # The restored bank's counters carry on from the first run's.
  assert second["sam/received"] > first["sam/received"]
  assert np.isfinite(second["val_miou"])


def test_fixmatch_uses_pseudo_labels_and_no_sam(tmp_path):
  result = loop.train_and_evaluate(_config("fixmatch", 3), str(tmp_path / "fm"))
  assert result["final_coverage_pseudo"] > 0
  assert "final_coverage_sam" not in result and not any(k.startswith("sam/") for k in result)
