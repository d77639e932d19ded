"""`sesam refine` end to end on generated scenes (oracle backend), in-process and via the service."""


import numpy as np
import pytest
from PIL import Image

from sesam_jax import main
from tests import fakes


@pytest.mark.parametrize("extra", [(), ("--service",)])
def test_refine_synthetic_oracle(tmp_path, capsys, extra):
  out = tmp_path / "sesam"
  res = fakes.run_cli(capsys, "refine", "--dataset", "synthetic", "--num-images", "2", "--size", "64", "96",
             "--split", "val", "--weak", "coarse", "--backend", "oracle", "--out", str(out), *extra)
  assert res["images"] == 2 and res["oracle"] and res["backend"] == "oracle"
  for key in ("precision", "recall", "f1", "miou", "weak_miou", "seconds_per_image"):
    assert np.isfinite(res[key])
  assert res["precision"] >= 0.9 and res["miou"] >= res["weak_miou"]
  pngs = sorted(p.name for p in out.iterdir())
  assert len(pngs) == 2 and all(p.endswith(".png") for p in pngs)
  label = np.asarray(Image.open(out / pngs[0]))
  assert label.dtype == np.uint8 and label.shape == (64, 96)


def test_refine_points_reports_both_stages(tmp_path, capsys):
  res = fakes.run_cli(capsys, "refine", "--dataset", "synthetic", "--num-images", "1", "--size", "64", "96",
             "--weak", "points", "--backend", "oracle", "--out", str(tmp_path / "p"))
  # Stage 1 (sparse to coarse) and stage 2 (instances) are both scored; with the oracle every
  # pixel either stage adds is right, and each stage only adds to the one before.
  assert res["coarse_precision"] == 1.0 and res["precision"] == 1.0
  assert res["weak_miou"] < res["coarse_miou"] <= res["miou"] <= 1.0
  assert 0 < res["coarse_recall"] <= res["recall"] <= 1.0


def test_refine_reads_weak_dir_and_reports_bad_paths(tmp_path, capsys):
  assert main.main(["refine", "--dataset", "synthetic", "--num-images", "1", "--size", "64", "96",
                    "--weak", "coarse", "--weak-dir", str(tmp_path / "missing"),
                    "--out", str(tmp_path / "o")]) == 2
  assert "missing" in capsys.readouterr().err
