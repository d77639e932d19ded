"""Storage faults of `sesam train`, injected in-process: a file where a folder should be, a writer
that fails, a full disk (`shutil.disk_usage`), a second training, a save failing mid-run, a
truncated checkpoint. (The tests run as root, whom permission bits do not stop.) Each stops with
one line naming the folder and the fix, exit code 2, nothing half-written."""

import errno
import gc
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from sesam_jax import config_lib, main, report
from sesam_jax.train import optim, train_state
from sesam_jax.run import checkpoint, layout, logs, workdir
from sesam_jax import loop
from sesam_jax.train import train_step as step_lib
from tests import fakes

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIG = os.path.join(REPO, "configs", "segformer_synthetic.py") + ":weak=coarse"
OVERRIDES = ["--config.num_steps=4", "--config.checkpoint_every=2", "--config.log_every=1",
             "--config.crop=32", "--config.batch_size=4", "--config.dataset.image_size=48,64",
             "--config.dataset.num_train_images=8", "--config.dataset.num_val_images=4",
             "--config.eval.batch_size=4", f"--config.model={fakes.TEST_MODEL}"]


def _train(capsys, run_dir, *extra):
  """`sesam train` in this process: (exit code, stderr)."""
  code = main.main(["train", f"--config={CONFIG}", f"--workdir={run_dir}", *OVERRIDES, *extra])
  return code, capsys.readouterr().err


def _last_line(err):
  return err.strip().splitlines()[-1]


def test_a_file_where_a_folder_should_be(tmp_path, capsys):
  run_dir = tmp_path / "run"
  run_dir.write_text("not a folder")
  code, err = _train(capsys, run_dir)
  assert code == 2 and _last_line(err) == (f"sesam train: error: --workdir {run_dir} is a file; "
                                           "give a folder (it is created if missing).")
  run_dir.unlink()
  run_dir.mkdir()
  (run_dir / "checkpoints").write_text("not a folder")
  code, err = _train(capsys, run_dir)
  assert code == 2 and f"{run_dir / 'checkpoints'} is a file" in _last_line(err)
  assert "--workdir" in _last_line(err) and "Traceback" not in err
  assert sorted(os.listdir(run_dir)) == ["checkpoints"]  # Nothing else was written.


def test_an_unwritable_checkpoint_folder_stops_before_anything_is_written(tmp_path, capsys,
                                                                         monkeypatch):
  def read_only(path, *args, **kwargs):
    if ".write-test-" in str(path):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    return open(path, *args, **kwargs)

  monkeypatch.setattr(workdir, "open", read_only, raising=False)
  run_dir = tmp_path / "run"
  start = time.monotonic()
  code, err = _train(capsys, run_dir)
  assert code == 2 and time.monotonic() - start < 60
  assert _last_line(err) == (f"sesam train: error: cannot write in the checkpoint folder "
                             f"{run_dir / 'checkpoints'} (Read-only file system); make it "
                             "writable or give another --workdir.")
  assert not run_dir.exists()  # This run created it and trained nothing: removed.


def test_no_room_for_a_checkpoint(tmp_path, capsys, monkeypatch):
  usage = workdir.shutil.disk_usage
  monkeypatch.setattr(workdir.shutil, "disk_usage",
                      lambda path: usage(path)._replace(free=1024))
  run_dir = tmp_path / "run"
  code, err = _train(capsys, run_dir)
  assert code == 2
  line = _last_line(err)
  assert f"the checkpoint folder {run_dir / 'checkpoints'} has 1.0 KiB free" in line
  assert "x the" in line and "train state" in line and "--workdir" in line
  assert not run_dir.exists()
  assert f"removed {run_dir}" in err


def test_a_second_training_in_the_same_workdir_is_stopped(tmp_path, capsys):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / "keep.txt").write_text("the user's")
  with workdir.RunDir(run_dir):  # The first training holds the lock.
    code, err = _train(capsys, run_dir)
  assert code == 2
  assert f"another training (pid {os.getpid()} on " in _last_line(err)
  assert str(run_dir) in _last_line(err) and "--workdir" in _last_line(err)
  assert sorted(os.listdir(run_dir)) == ["checkpoints", "keep.txt"]  # Only what the first made.
  # A lock left by a process that died is taken over.
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (run_dir / layout.LOCK).write_text(json.dumps({"pid": dead.pid, "host": "x"}))
  with workdir.RunDir(run_dir):
    holder = json.loads((run_dir / layout.LOCK).read_text())
    assert holder["pid"] == os.getpid()
  assert f"from pid {dead.pid}, which is no longer running" in capsys.readouterr().err
  assert not (run_dir / layout.LOCK).exists()


def _abstract_state(config):
  model = loop.build_model(config, loop.make_sources(config)[0].info.num_classes)
  tx, _ = optim.make_optimizer(config.optim, train_state.abstract_params(model),
                               config.num_steps)
  return train_state.abstract_train_state(model, tx, step_lib.make_mesh())


def test_a_failed_save_stops_the_run_within_seconds_and_keeps_the_last_checkpoint(
    tmp_path, capsys, monkeypatch):
  failed_at = []
  save = checkpoint.ProcessBytesHandler.save

  def disk_full_at_step_4(self, directory, args):
    if f"{os.sep}4." in str(directory) or str(directory).endswith(f"{os.sep}4"):
      failed_at.append(time.monotonic())
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return save(self, directory, args)

  monkeypatch.setattr(checkpoint.ProcessBytesHandler, "save", disk_full_at_step_4)
  run_dir = tmp_path / "run"
  code, err = _train(capsys, run_dir)
  assert code == 2 and failed_at and time.monotonic() - failed_at[0] < 30
  folder = run_dir / "checkpoints"
  assert _last_line(err) == (
      f"sesam train: error: could not write checkpoint 4 to {folder} (No space left on device); "
      "free space on that disk. The run stops here; checkpoint 2 is kept: run the same command "
      "to resume from it.")
  assert len([line for line in err.splitlines() if "Traceback" in line]) == 0
  # The previous checkpoint is intact and restores.
  ckpt = checkpoint.Checkpointer(str(run_dir))
  try:
    assert ckpt.latest_step() == 2
    config = config_lib.config_from_flags(CONFIG, OVERRIDES)
    assert int(ckpt.restore(_abstract_state(config)).step) == 2
  finally:
    ckpt.close()
  assert not (run_dir / layout.LOCK).exists()


def _truncate_state(step_dir):
  """Cuts the largest file of a checkpoint's train state in half (a copy cut short)."""
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
  biggest = max(files, key=lambda p: p.stat().st_size)
  os.truncate(biggest, biggest.stat().st_size // 2)


# orbax leaves the reads of a failed restore as coroutines that fail again when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_unreadable_latest_checkpoint_is_reported_and_the_one_before_restored(
    tiny_run, tmp_path, capsys):
  run_dir = tmp_path / "run"
  shutil.copytree(tiny_run.workdir, run_dir)  # The shared tiny run: checkpoints 2 and 4.
  _truncate_state(run_dir / "checkpoints" / "4")
  abstract = _abstract_state(tiny_run.config)
  ckpt = checkpoint.Checkpointer(str(run_dir))
  clock = loop.RunClock()
  try:
    restored = ckpt.restore(abstract, {"clock": clock}, fall_back=True)
    assert int(restored.step) == 2 and clock.before > 0
    assert ckpt.latest_step() == 2
  finally:
    ckpt.close()
  err = capsys.readouterr().err
  assert f"checkpoint 4 in {run_dir / 'checkpoints'} cannot be read (" in err
  assert "resumed from checkpoint 2" in err
  assert os.listdir(run_dir / layout.UNREADABLE_CHECKPOINTS) == ["4"]  # Kept aside for a look.

  # Evaluation does not fall back: it names the checkpoint it cannot read.
  shutil.rmtree(run_dir)
  shutil.copytree(tiny_run.workdir, run_dir)
  _truncate_state(run_dir / "checkpoints" / "4")
  ckpt = checkpoint.Checkpointer(str(run_dir))
  with pytest.raises(report.UserError, match=r"checkpoint 4 in .*checkpoints cannot be read \("
                                             r".*move .*checkpoints/4 away"):
    ckpt.restore(abstract)
  # None readable: one error naming the folder.
  _truncate_state(run_dir / "checkpoints" / "2")
  with pytest.raises(report.UserError, match=r"checkpoint 4 in .*checkpoints cannot be read .*nor "
                                             r"any before it.*move .*checkpoints away"):
    ckpt.restore(abstract, fall_back=True)
  ckpt.close()
  gc.collect()  # Those coroutines, here rather than in a later test.


def test_metrics_keep_one_row_per_step_after_a_resume(tmp_path):
  rows = [{"step": s, "train/loss": 1.0} for s in (1, 2, 3, 4, 5)]
  rows.insert(2, {"step": 2, "val/student_miou": 0.5})
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                          + '{"step": 6, "train/lo')  # Cut short by a kill.
  assert logs.drop_rows_after(str(tmp_path), 3) == 3
  kept = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in kept] == [1, 2, 2, 3]
  # A finished run run again evaluates again: its final evaluation's row goes.
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 3, "val/student_miou": 0.7}) + "\n")
  assert logs.drop_rows_after(str(tmp_path), 3, final_eval=True) == 1
  assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1, 2, 2, 3]
