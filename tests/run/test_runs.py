"""open_run: the tiny session run, `sesam eval` without --config, and a workdir written before
`sesam_jax.run.runs` existed (tests/run/old_workdir, made by commit 9589984's `sesam train`)."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from sesam_jax import main
from sesam_jax.evaluate import predict
from sesam_jax.run import checkpoint, layout, result, runs
from tests import fakes

OLD_WORKDIR = pathlib.Path(__file__).parent / "old_workdir"


def test_open_run_holds_config_result_metrics_and_checkpoints(tiny_run):
  run = runs.open_run(tiny_run.workdir)
  assert run.config.model == tiny_run.config.model and run.config.num_steps == 4
  assert run.result == json.loads(json.dumps(tiny_run.result))  # result.json as returned
  assert run.finished and run.last_step() == 4 and run.kind == "fine"
  rows = run.metrics()
  assert [r["step"] for r in rows] == [2, 4]
  # The training and validation lines of a step are merged into one row.
  assert "train/loss" in rows[-1] and rows[-1]["val/student_miou"] == pytest.approx(
      tiny_run.result["val_miou"])
  assert run.final_val_miou() == (pytest.approx(tiny_run.result["val_miou"]), layout.RESULT)
  assert run.checkpoint_steps() == [2, 4]
  assert run.train_images() == tiny_run.result["train_images"]


def test_restore_weights_latest_or_given_step(tiny_run):
  run = runs.open_run(tiny_run.workdir)
  student, step = run.restore_weights()
  assert step == 4 and set(student) == {"params", "batch_stats"}
  ema, _ = run.restore_weights(ema=True)
  early, step = run.restore_weights(step=2)
  assert step == 2
  kernel = lambda w: w["params"]["decode_head"]["kernel"]
  assert isinstance(kernel(student), np.ndarray)
  assert not np.array_equal(kernel(student), kernel(early))  # Trained between 2 and 4.
  assert not np.array_equal(kernel(student), kernel(ema))
  assert jax.tree.structure(student) == jax.tree.structure(ema)


def test_eval_reads_the_config_from_the_workdir(tiny_run, capsys):
  out = fakes.run_cli(capsys, "eval", "--workdir", tiny_run.workdir)  # No --config.
  assert set(out) == set(result.EVAL_KEYS)
  assert out["step"] == 4 and out["val_images"] == tiny_run.result["val_images"]
  assert out["val_miou"] == pytest.approx(tiny_run.result["val_miou"])
  # --config.FIELD=VALUE changes the run's own config.
  out = fakes.run_cli(capsys, "eval", "--workdir", tiny_run.workdir, "--config.eval.max_images=2")
  assert out["val_images"] == 2


def test_eval_override_names_a_bad_field(tiny_run, capsys):
  code = main.main(["eval", "--workdir", str(tiny_run.workdir), "--config.eval.no_such=1"])
  assert code == 2 and "no_such" in capsys.readouterr().err


def test_a_workdir_of_the_old_layout_opens(tmp_path):
  workdir = tmp_path / "old"
  shutil.copytree(OLD_WORKDIR, workdir)  # Opening must not write, but never into the repository.
  run = runs.open_run(workdir)
  assert run.config.model == fakes.TEST_MODEL and run.finished and run.kind == "fine"
  assert result.check(run.result) == run.result  # Its keys are all in today's schema.
  assert run.checkpoint_steps() == [2] and run.last_step() == 2
  assert [r["step"] for r in run.metrics()] == [2]
  weights, step = run.restore_weights(ema=True)
  assert step == 2 and weights["params"]["decode_head"]["kernel"].shape == (1, 1, 16, 11)
  loaded = predict.load_run(workdir)  # What `sesam predict` restores, model built and checked.
  assert loaded.step == 2 and loaded.info.num_classes == 11
  assert sorted(p.name for p in workdir.iterdir()) == sorted(p.name for p in OLD_WORKDIR.iterdir())


def test_open_run_errors_name_the_file(tmp_path, tiny_run):
  with pytest.raises(FileNotFoundError, match=layout.CONFIG):
    runs.open_run(tmp_path)
  (tmp_path / layout.CONFIG).write_text((tiny_run.workdir / layout.CONFIG).read_text())
  run = runs.open_run(tmp_path)  # A run killed before its first checkpoint.
  assert run.result is None and not run.finished and run.metrics() == []
  assert run.checkpoint_steps() == [] and run.last_step() is None
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*checkpoints"):
    run.restore_weights()
  assert not (tmp_path / layout.CHECKPOINTS).exists()  # Reading created nothing.
  (tmp_path / layout.RESULT).write_text("{not json")
  with pytest.raises(ValueError, match="result.json is not valid JSON"):
    runs.open_run(tmp_path)


def test_find_workdirs_and_finished_step(tmp_path, tiny_run):
  for name in ("a", "b/c"):
    (tmp_path / name).mkdir(parents=True)
    (tmp_path / name / layout.CONFIG).write_text((tiny_run.workdir / layout.CONFIG).read_text())
  (tmp_path / "a" / layout.RESULT).write_text(json.dumps({"step": 4}))
  assert runs.find_workdirs([tmp_path]) == [tmp_path / "a", tmp_path / "b/c"]
  assert [r.finished for r in runs.open_runs([tmp_path])] == [True, False]
  assert runs.finished_step(tmp_path / "a", 4) == 4
  assert runs.finished_step(tmp_path / "a", 5) is None
  assert runs.finished_step(tmp_path / "b/c", 4) is None
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="holds no run"):
    runs.find_workdirs([tmp_path / "empty"])


def test_checkpointer_reads_without_creating(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    checkpoint.Checkpointer(tmp_path, create=False)
  assert not (tmp_path / layout.CHECKPOINTS).exists()
