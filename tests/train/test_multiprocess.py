"""Multi-host training on one machine: two `sesam train` processes form one JAX job through JAX's
own runtime (`jax.distributed.initialize` with a coordinator on 127.0.0.1, gloo collectives
between the processes, 2 CPU devices each), each with its slice of every global batch and, for
SeSAM, its own SAM bridge and label bank.

The short case (default suite) trains the supervised tiny student: both processes finish, the
checkpoint holds one train state and one data position per process, evaluation counts every
validation image once, and the parameters equal those of one process with the same global batch.
The slow cases run SeSAM (oracle prior) and kill one process mid-run.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import portpicker
import pytest
from PIL import Image

from sesam_jax import config_lib
from sesam_jax.train import optim, train_state
from sesam_jax import loop
from sesam_jax.train import train_step as step_lib
from sesam_jax.run.checkpoint import Checkpointer
from sesam_jax.sam import refine_labels
from tests import fakes

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SYNTHETIC = os.path.join(REPO, "configs", "segformer_synthetic.py")
OVERRIDES = ["--config.num_steps=4", "--config.checkpoint_every=2", "--config.log_every=1",
             "--config.crop=32", "--config.batch_size=4", "--config.dataset.image_size=48,64",
             "--config.dataset.num_train_images=8", "--config.dataset.num_val_images=5",
             "--config.eval.batch_size=4", f"--config.model={fakes.TEST_MODEL}"]
HEARTBEAT_S = 5  # --config.multihost.heartbeat_timeout_s of these runs

class Job:
  """Two `sesam train` processes of one JAX job; their stdout/stderr go to files in `logs`."""

  def __init__(self, logs, workdir, config, extra=(), env=None):
    self.logs, self.procs, self.files = logs, [], []
    port = portpicker.pick_unused_port()
    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    base.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
                XLA_FLAGS="--xla_force_host_platform_device_count=2")
    for i in range(2):
      flags = [f"--config={config}", f"--workdir={workdir}", *OVERRIDES, *extra,
               f"--config.multihost.coordinator_address=127.0.0.1:{port}",
               "--config.multihost.num_processes=2", f"--config.multihost.process_id={i}",
               "--config.multihost.initialization_timeout_s=60",
               f"--config.multihost.heartbeat_timeout_s={HEARTBEAT_S}",
               "--config.multihost.shutdown_timeout_s=20"]
      out, err = open(logs / f"out{i}.txt", "w"), open(logs / f"err{i}.txt", "w")
      self.files += [out, err]
      self.procs.append(subprocess.Popen(
          [sys.executable, "-c", fakes.CHILD.format(repo=REPO), "train", *flags],
          env={**base, **((env or {}).get(i, {}))}, stdout=out, stderr=err, text=True))

  def wait(self, timeout=300):
    deadline = time.monotonic() + timeout
    for p in self.procs:
      p.wait(timeout=max(1, deadline - time.monotonic()))
    return [p.returncode for p in self.procs]

  def out(self, i):
    return (self.logs / f"out{i}.txt").read_text()

  def err(self, i):
    return (self.logs / f"err{i}.txt").read_text()

  def result(self, i):
    return json.loads([line for line in self.out(i).splitlines() if line.startswith("{")][-1])

  def close(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for f in self.files:
      f.close()


def _restored_params(config, workdir):
  """The student parameters of the latest checkpoint in `workdir`, read by this process."""
  _, val = loop.make_sources(config)
  model = loop.build_model(config, val.info.num_classes)
  tx, _ = optim.make_optimizer(config.optim, train_state.abstract_params(model), config.num_steps)
  ckpt = Checkpointer(str(workdir))
  try:
    state = ckpt.restore(train_state.abstract_train_state(model, tx, step_lib.make_mesh()))
  finally:
    ckpt.close()
  return jax.device_get(state.params)


def _files(step_dir, item):
  return sorted(n for n in os.listdir(step_dir / item) if n.startswith("process_"))


@pytest.mark.slow  # Two processes starting JAX's distributed runtime: about 25 s.
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
  config_arg = f"{SYNTHETIC}:weak=fine,method=supervised"
  workdir = tmp_path / "two"
  job = Job(tmp_path, workdir, config_arg)
  try:
    assert job.wait() == [0, 0], job.err(0)[-3000:] + job.err(1)[-3000:]
  finally:
    job.close()
  results = [job.result(i) for i in range(2)]
  assert results[0]["step"] == results[1]["step"] == 4
  assert results[0]["val_miou"] == results[1]["val_miou"]
  assert "multi-host: process 1 of 2, 2 of 4 devices here" in job.err(1)
  step_dir = workdir / "checkpoints" / "4"
  # One train state (orbax writes each process's part of it) and a data position per process.
  assert (step_dir / "state" / "_METADATA").is_file()
  assert _files(step_dir, "data") == ["process_0-of-2.json", "process_1-of-2.json"]
  assert _files(step_dir, "clock") == ["process_0-of-2.bin", "process_1-of-2.bin"]

  # One process over 4 devices, the same global batch of 4: the same parameters.
  config = config_lib.config_from_flags(config_arg, OVERRIDES)
  loop.train(config, str(tmp_path / "one"))
  one, two = _restored_params(config, tmp_path / "one"), _restored_params(config, workdir)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  # The two processes counted each of the 5 validation images once (each evaluated its slice
  # of every padded batch): their result is that of one process evaluating the same checkpoint.
  single = loop.evaluate_workdir(str(workdir), config)
  assert results[0]["val_images"] == single["val_images"] == 5
  assert results[0]["val_per_class_iou"] == single["val_per_class_iou"]
  assert results[0]["val_miou"] == pytest.approx(single["val_miou"], abs=1e-12)


@pytest.mark.slow
def test_two_processes_train_sesam_each_with_its_own_bridge_and_bank(tmp_path):
  workdir = tmp_path / "sesam"
  job = Job(tmp_path, workdir, f"{SYNTHETIC}:weak=coarse,method=sesam",
            ["--config.sam.backend=oracle", "--config.sam.wait_s=5.0"])
  try:
    assert job.wait() == [0, 0], job.err(0)[-3000:] + job.err(1)[-3000:]
  finally:
    job.close()
  step_dir = workdir / "checkpoints" / "4"
  assert _files(step_dir, "sam_bank") == ["process_0-of-2.bin", "process_1-of-2.bin"]
  for i in range(2):
    assert (step_dir / "sam_bank" / f"process_{i}-of-2.bin").stat().st_size > 0
    result = job.result(i)
    assert result["step"] == 4 and np.isfinite(result["val_miou"])
    assert result["sam/received"] > 0 and result["sam/images_with_sam_label"] == 8
    assert "oracle" in result["sam_backend"]
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  assert all(np.isfinite(r["train/loss"]) for r in train_rows)
  assert train_rows[-1]["train/coverage_sam"] > 0  # SAM labels reached the step


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0])
def test_killing_one_process_stops_the_other_and_both_resume(tmp_path, killed):
  config_arg = f"{SYNTHETIC}:weak=fine,method=supervised"
  workdir = tmp_path / "run"
  (tmp_path / "first").mkdir()
  job = Job(tmp_path / "first", workdir, config_arg,
            env={0: {"REPORT_AT": "2"}, 1: {"REPORT_AT": "2"}, killed: {"REPORT_AT": "2",
                                                                       "STALL": "1"}})
  survivor = 1 - killed
  try:
    deadline = time.monotonic() + 300
    while not all("CHECKPOINT 2" in job.out(i) for i in range(2)):
      assert time.monotonic() < deadline and all(p.poll() is None for p in job.procs), (
          job.err(0)[-3000:] + job.err(1)[-3000:])
      time.sleep(0.2)
    job.procs[killed].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    job.procs[survivor].wait(timeout=HEARTBEAT_S + 60)
    stopped_after = time.monotonic() - killed_at
  finally:
    job.close()
  assert job.procs[survivor].returncode != 0
  print(f"process {survivor} stopped {stopped_after:.1f} s after process {killed} was killed")
  assert stopped_after < HEARTBEAT_S + 30, stopped_after
  err = job.err(survivor)
  assert "another task died" in err  # JAX's coordination service ends it, and says why ...
  assert "the same command on every host to resume" in err  # ... after this run said what to do.

  (tmp_path / "again").mkdir()
  again = Job(tmp_path / "again", workdir, config_arg)  # The same command on both "hosts".
  try:
    assert again.wait() == [0, 0], again.err(0)[-3000:] + again.err(1)[-3000:]
  finally:
    again.close()
  for i in range(2):
    assert "at step 2" in again.err(i) and "resumed from" in again.err(i)
    assert again.result(i)["step"] == 4


@pytest.mark.slow
def test_two_processes_share_one_set_of_sam_baseline_labels(tmp_path):
  config_arg = f"{SYNTHETIC}:weak=coarse,method=sam_baseline"
  extra = ["--config.sam.backend=oracle"]
  workdir = tmp_path / "baseline"
  job = Job(tmp_path, workdir, config_arg, extra)
  try:
    assert job.wait() == [0, 0], job.err(0)[-3000:] + job.err(1)[-3000:]
  finally:
    job.close()
  # Each process made its half of the 8 labels, then both met at the barrier and read all.
  for i in range(2):
    assert f"sam_baseline: process {i} of 2 makes 4 of the 4 labels of its shard" in job.err(i)
  config = config_lib.config_from_flags(config_arg, OVERRIDES + extra)
  train, _ = loop.make_sources(config)
  folder = workdir / "sam_baseline_labels"
  assert sorted(os.listdir(folder)) == sorted(f"{i}.png" for i in train.ids)
  assert not [n for n in os.listdir(workdir) if ".partial-" in n]
  assert job.result(0)["step"] == job.result(1)["step"] == 4

  # They are the labels of one process making them all.
  one = refine_labels.baseline_labels(config, train, str(tmp_path / "one"))
  for name in os.listdir(folder):
    np.testing.assert_array_equal(np.asarray(Image.open(folder / name)),
                                  np.asarray(Image.open(os.path.join(one, name))))
