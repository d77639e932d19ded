"""SeSAM and FixMatch through the real loop on `synthetic`: SAM labels arrive, resume keeps them."""

import os

import numpy as np

from sesam_jax import config_lib
from sesam_jax import loop
from sesam_jax.run import logs
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
  # The oracle's SAM labels are fine-label components: most pixels they supervise match the fine
  # label (weak labels made from it, so it rides in the batch for this metric); not all, as
  # theta2 = 0 lets the random teacher's labels extend the weak labels SAM's classes come from.
  assert 0.5 < first["final_precision_sam"] <= 1.0
  rows = [r for r in logs.read_metrics(workdir) if "train/precision_sam" in r]
  assert rows and round(rows[-1]["train/precision_sam"], 5) == first["final_precision_sam"]
  # CPU seconds of the process (start-up, pre-warm, steps, evaluation) and its exited children.
  assert first["cpu_seconds"] > 0
  # The pre-warm refined all 8 training images before step 0.
  assert first["sam/images_with_sam_label"] == 8 and first["sam/received"] >= 8
  assert first["prewarm_seconds"] > 0
  # sam.refresh=strict (the default): step 0's whole batch got fresh labels from its crops,
  # waited for; the labels each step trained on were made 0, 1 and 2 steps before.
  assert first["sam_refresh"] == {"due": 8, "done": 8, "skipped": 0, "mean_age_steps": 1.0}
  rows = [r for r in logs.read_metrics(workdir) if "train/sam/refresh_due" in r]
  assert rows[-1]["train/sam/refresh_done"] == 8 and rows[-1]["train/sam/label_age_steps"] == 2
  # theta = 0: the teacher's labels fill what weak and SAM leave, and extend the next requests.
  assert first["final_coverage_pseudo"] > 0
  # The bank is an item of the one checkpoint, one file per process, beside state and data.
  step_dir = os.path.join(workdir, "checkpoints", "3")
  assert {"state", "data", "sam_bank", "clock"} <= set(os.listdir(step_dir))
  assert "process_0-of-1.bin" in os.listdir(os.path.join(step_dir, "sam_bank"))
  second = loop.train_and_evaluate(_config("sesam", 6), workdir)  # Same workdir: resumes.
  assert second["step"] == 6
  # Summed over resumes: the first session's CPU seconds come from its checkpoint.
  assert second["cpu_seconds"] > first["cpu_seconds"]
  # The restored bank's counters carry on from the first run's; step 4 refreshed its batch.
  assert second["sam/received"] > first["sam/received"]
  assert second["sam_refresh"]["done"] == second["sam_refresh"]["due"] == 16
  assert second["sam_refresh"]["skipped"] == 0
  assert np.isfinite(second["val_miou"])


def test_fixmatch_uses_pseudo_labels_and_no_sam(tmp_path):
  result = loop.train_and_evaluate(_config("fixmatch", 3), str(tmp_path / "fm"))
  assert result["final_coverage_pseudo"] > 0
  assert "final_coverage_sam" not in result and not any(k.startswith("sam/") for k in result)
  assert "final_precision_sam" not in result and result["cpu_seconds"] > 0


def test_async_refreshes_with_a_slow_sam_are_counted_and_warned_once(tmp_path, monkeypatch,
                                                                    capsys):
  from sam_bridge.local_service import LocalRefineService
  from sesam_jax.sam import feed as sam_feed
  from sesam_jax.sam import resolver
  from tests import sam_fakes

  def slow_service(config, workdir, backend=None):  # The bridge, far slower than the steps.
    return LocalRefineService(sam_fakes.SlowBackend(0.4), config=resolver.refine_config(config),
                              max_pending=16, timeout_s=60)

  monkeypatch.setattr(sam_feed, "start_service", slow_service)
  config = _config("sesam", 4)
  config.sam.refresh, config.sam.wait_s, config.sam.prewarm = "async", 0.0, False
  result = loop.train_and_evaluate(config, str(tmp_path / "async"))
  refresh = result["sam_refresh"]
  assert refresh["due"] == 8 and refresh["skipped"] > 0  # 2 of each batch of 8 per step.
  assert refresh["done"] + refresh["skipped"] == refresh["due"]
  err = capsys.readouterr().err
  assert err.count("SAM refreshes due over the last") == 1
  assert "sam.wait_s" in err and "sam.device" in err
