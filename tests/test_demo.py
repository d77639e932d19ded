"""`sesam demo` end to end on a few small generated scenes."""

import json

from sesam_jax import main


def test_demo_reports_every_stage(tmp_path, capsys):
  assert main.main(["demo", "--out", str(tmp_path / "demo"), "--images", "3"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  weak = result["weak"]
  assert set(weak) == {"points", "scribbles", "coarse"}
  assert weak["points"]["purity"] == weak["scribbles"]["purity"] == 1.0
  # Denser labels score higher against the fine label.
  assert weak["points"]["miou"] < weak["scribbles"]["miou"] < weak["coarse"]["miou"]
  assert len(list((tmp_path / "demo" / "weak_coarse").glob("*.png"))) == 3
