"""metrics.jsonl read back (`sesam_jax.run.logs.read_metrics`)."""

import json

import pytest

from sesam_jax.run import layout, logs


def _write(tmp_path, text):
  (tmp_path / layout.METRICS).write_text(text)


def test_rows_of_a_step_merge_and_a_cut_last_line_is_dropped(tmp_path):
  rows = [{"step": 2, "train/loss": 1.0}, {"step": 2, "val/student_miou": 0.1},
          {"step": 1, "train/loss": 2.0}, {"step": 2, "val/student_miou": 0.2}]
  _write(tmp_path, "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "tr')
  assert logs.read_metric_rows(tmp_path) == rows
  assert logs.read_metrics(tmp_path) == [
      {"step": 1, "train/loss": 2.0},
      {"step": 2, "train/loss": 1.0, "val/student_miou": 0.2}]  # The later line wins.
  assert logs.series(logs.read_metrics(tmp_path), "val/student_miou") == [[2, 0.2]]


def test_a_damaged_line_or_no_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="logged no metrics"):
    logs.read_metrics(tmp_path)
  _write(tmp_path, '{"step": 1}\nnot json\n{"step": 2}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a JSON object"):
    logs.read_metrics(tmp_path)


def test_the_writer_writes_what_the_reader_reads(tmp_path):
  writer = logs.MetricWriter(str(tmp_path))
  writer.write(3, {"loss": 0.5}, prefix="train/")
  writer.write(3, {"student_miou": 0.25}, prefix="val/")
  writer.close()
  assert logs.read_metrics(tmp_path) == [{"step": 3, "train/loss": 0.5,
                                          "val/student_miou": 0.25}]
  assert (tmp_path / layout.TENSORBOARD).is_dir()
