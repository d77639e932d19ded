"""`sesam demo` end to end on a few small generated scenes."""

import json

import pytest

from sesam_jax import main


def _run(tmp_path, capsys, *flags):
  assert main.main(["demo", "--out", str(tmp_path / "demo"), "--images", "3", *flags]) == 0
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_demo_label_stages(tmp_path, capsys):
  result = _run(tmp_path, capsys, "--no-train")
  weak = result["weak"]
  assert set(weak) == {"points", "scribbles", "coarse"}
  assert weak["points"]["purity"] == weak["scribbles"]["purity"] == 1.0
  # Denser labels score higher against the fine label.
  assert weak["points"]["miou"] < weak["scribbles"]["miou"] < weak["coarse"]["miou"]
  assert len(list((tmp_path / "demo" / "weak_coarse").glob("*.png"))) == 3
  # The superpixel prior adds mostly correct pixels and raises every kind's mIoU.
  assert result["prior"] == "superpixel"
  for kind, refined in result["refined"].items():
    assert refined["miou"] > refined["weak_miou"], kind
    assert refined["precision"] > 0.9, kind
  assert "supervised_miou" not in result


@pytest.mark.slow
def test_demo_training_stage(tmp_path, capsys):
  result = _run(tmp_path, capsys, "--train-steps", "4")
  assert 0.0 <= result["supervised_miou"] <= 1.0 and 0.0 <= result["sesam_miou"] <= 1.0
  assert result["sesam_final_coverage"]["final_coverage_weak"] > 0
