"""Bad files in a split: every one reported at once, before anything is written, by `weak-labels`,
`refine`, `eval-labels` and `train`; a clean verdict cached per set of files; a command that stops
midway leaves no half-written output folder."""

import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from sesam_jax import config_lib, main, outputs
from sesam_jax.data import base, get_source, split_check, weak_splits
from sesam_jax import loop

REPO = pathlib.Path(__file__).resolve().parents[2]
BAD = ("im1.png", "im3.png", "im5.png", "im6.png")  # truncated, class 7, wrong size, not a PNG


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _dataset(root, *, bad=True):
  """A `custom` dataset of eight 60x40 images, four of them bad in four ways when `bad`."""
  (root / "images").mkdir(parents=True)
  (root / "labels").mkdir()
  (root / "classes.txt").write_text("a\nb\nc\n")
  rng = np.random.default_rng(0)
  for i in range(8):
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(
        root / "images" / f"im{i}.png")
    Image.fromarray(rng.integers(0, 3, (40, 60), dtype=np.uint8)).save(root / "labels" / f"im{i}.png")
  if bad:
    data = (root / "images" / "im1.png").read_bytes()
    (root / "images" / "im1.png").write_bytes(data[:len(data) // 2])
    Image.fromarray(np.full((40, 60), 7, np.uint8)).save(root / "labels" / "im3.png")
    Image.fromarray(np.zeros((30, 60), np.uint8)).save(root / "labels" / "im5.png")
    (root / "labels" / "im6.png").write_bytes(b"not a png")
  return root


def _run(capsys, *argv):
  code = main.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


def _names_all_four(err, root):
  for name in BAD:
    assert name in err
  assert "4 examples of custom" in err


def test_check_reports_every_bad_file_and_caches_a_clean_verdict(tmp_path, monkeypatch):
  source = get_source("custom", data_dir=_dataset(tmp_path / "bad"))
  problems = split_check.check_split(source)
  assert [p.example_id for p in problems] == ["im1", "im3", "im5", "im6"]
  assert "Truncated" in problems[0].message or "truncated" in problems[0].message
  assert "value(s) [7]" in problems[1].message and "60x30" in problems[2].message
  with pytest.raises(ValueError, match="(?s)4 examples of custom cannot be used.*Fix it"):
    split_check.require_clean([(source, "examples of custom")], fix="Fix it.")

  clean = get_source("custom", data_dir=_dataset(tmp_path / "clean", bad=False))
  calls = []
  check_item = base.PairedFileSource.check_item
  monkeypatch.setattr(base.PairedFileSource, "check_item",
                      lambda self, i: calls.append(i) or check_item(self, i))
  split_check.require_clean([(clean, "examples")], fix="")
  assert len(calls) == 8 and len(list((tmp_path / "cache").rglob("*.json"))) == 1
  split_check.require_clean([(clean, "examples")], fix="")
  assert len(calls) == 8  # The cached verdict: no file read again.
  label = tmp_path / "clean" / "labels" / "im2.png"
  os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
  split_check.require_clean([(clean, "examples")], fix="")
  assert len(calls) == 16  # A file changed: checked again.


def test_weak_labels_stop_before_writing_and_never_leave_half_a_folder(tmp_path, capsys,
                                                                       monkeypatch):
  root, out = _dataset(tmp_path / "data"), tmp_path / "weak"
  code, _, err = _run(capsys, "weak-labels", "--dataset", "custom", "--data-dir", root,
                      "--kind", "points", "--out", out)
  assert code == 2 and "Traceback" not in err
  _names_all_four(err, root)
  assert not out.exists() and not list(tmp_path.glob(".weak.partial-*"))
  # A run that fails midway (the 3rd image) removes what it made and says so.
  clean = _dataset(tmp_path / "clean", bad=False)
  make = weak_splits.make_weak_label
  made = []

  def failing(*args, **kwargs):
    made.append(1)
    if len(made) == 3:
      raise RuntimeError("boom")
    return make(*args, **kwargs)

  monkeypatch.setattr(weak_splits, "make_weak_label", failing)
  code, out_text, err = _run(capsys, "weak-labels", "--dataset", "custom", "--data-dir", clean,
                             "--kind", "points", "--out", out)
  assert code == 1 and "nothing was written to" in err and "RuntimeError: boom" in err
  assert json.loads(out_text.splitlines()[-1]) == {"error": "unexpected RuntimeError: boom",
                                                   "exit_code": 1}
  assert not out.exists() and not list(tmp_path.glob(".weak.partial-*"))
  monkeypatch.setattr(weak_splits, "make_weak_label", make)
  code, out_text, _ = _run(capsys, "weak-labels", "--dataset", "custom", "--data-dir", clean,
                           "--kind", "points", "--out", out)
  assert code == 0 and len(os.listdir(out)) == 8


def test_refine_and_eval_labels_report_every_bad_file(tmp_path, capsys):
  root = _dataset(tmp_path / "data")
  out = tmp_path / "refined"
  code, _, err = _run(capsys, "refine", "--dataset", "custom", "--data-dir", root, "--weak",
                      "points", "--out", out)
  assert code == 2 and "nothing was written" in err
  _names_all_four(err, root)
  assert not out.exists()
  # eval-labels: the split's bad files and the label folder's, together.
  clean = _dataset(tmp_path / "clean", bad=False)
  maps = tmp_path / "maps"
  maps.mkdir()
  for i in range(8):
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(maps / f"im{i}.png")
  Image.fromarray(np.zeros((10, 10), np.uint8)).save(maps / "im2.png")
  Image.fromarray(np.full((40, 60), 9, np.uint8)).save(maps / "im4.png")
  (maps / "im7.png").unlink()
  code, _, err = _run(capsys, "eval-labels", "--dataset", "custom", "--data-dir", clean,
                      "--labels", maps)
  assert code == 2
  assert f"3 label map(s) in {maps} (--labels) cannot be used" in err
  assert "im2.png is 10x10" in err and "im4.png" in err and "im7.png not found" in err


def test_training_on_bad_data_lists_every_file_and_leaves_no_workdir(tmp_path, capsys):
  root = _dataset(tmp_path / "data")
  run_dir = tmp_path / "run"
  argv = ["train", f"--config={REPO / 'configs' / 'segformer_camvid.py'}",
          f"--workdir={run_dir}", "--config.dataset.name=custom", f"--config.data_dir={root}",
          "--config.num_steps=1", "--config.crop=32", "--config.batch_size=4"]
  code, _, err = _run(capsys, *argv)
  assert code == 2 and "Traceback" not in err
  _names_all_four(err, root)
  assert "--config.dataset.skip_unreadable=true" in err and "--config.dataset.check=false" in err
  assert not run_dir.exists()
  # The dataset readers' hints name train's own flag.
  code, _, err = _run(capsys, *argv[:3], "--config.dataset.name=camvid",
                      f"--config.data_dir={tmp_path / 'nowhere'}")
  assert code == 2 and "--config.data_dir" in err and "--data-dir" not in err
  assert not run_dir.exists()


def test_the_check_can_be_skipped(tmp_path, monkeypatch):
  config = config_lib.config_from_flags(
      str(REPO / "configs" / "segformer_camvid.py"),
      ["--config.dataset.name=custom", f"--config.data_dir={_dataset(tmp_path / 'data')}"])
  with pytest.raises(ValueError, match="4 examples of custom train cannot be used"):
    loop.make_sources(config, check=True)
  config.dataset.skip_unreadable = True  # Training files skipped; evaluation's still checked.
  with pytest.raises(ValueError, match="custom val \\(evaluation\\) cannot be used"):
    loop.make_sources(config, check=True)
  monkeypatch.setattr(split_check, "check_split", lambda *a, **k: pytest.fail("checked"))
  config.dataset.check = False
  train, _ = loop.make_sources(config, check=config.dataset.check)
  assert len(train) == 8


def test_staged_folder_replaces_files_only_when_complete(tmp_path, capsys):
  out = tmp_path / "out"
  out.mkdir()
  (out / "old.png").write_text("old")
  (out / "a.png").write_text("before")
  with outputs.staged_folder(out) as stage:
    (stage / "a.png").write_text("after")
    assert (out / "a.png").read_text() == "before"
  assert (out / "a.png").read_text() == "after" and (out / "old.png").exists()
  # A partial folder of a killed process (no such pid) is removed by the next run.
  stale = tmp_path / ".out.partial-999999999"
  stale.mkdir()
  with outputs.staged_folder(out):
    pass
  assert not stale.exists()
  (tmp_path / "file").write_text("x")
  with pytest.raises(Exception, match="is a file"):
    with outputs.staged_folder(tmp_path / "file"):
      pass
