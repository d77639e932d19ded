"""`sesam demo` end to end on a few small generated scenes."""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from sesam_jax import main
from sesam_jax.data import synthetic
from sesam_jax.plots.output import rle_decode


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
  # Every label PNG carries the dataset's palette (unlabeled white); values stay class ids.
  colors = synthetic.info().colors
  for folder in ("weak_points", "weak_coarse", "sesam_points", "sesam_coarse"):
    for path in sorted((tmp_path / "demo" / folder).glob("*.png")):
      with Image.open(path) as image:
        assert image.mode == "P", path
        palette = np.asarray(image.getpalette(), np.uint8).reshape(-1, 3)
        np.testing.assert_array_equal(palette[:len(colors)], colors)
        assert (palette[255] == 255).all()
  # The refinement figures of the first two scenes draw the labels the stages wrote.
  figures = result["figures"]
  assert set(figures) == {"refinement"} and len(figures["refinement"]) == 2
  for figure in figures["refinement"]:
    data = json.loads(pathlib.Path(figure).with_suffix(".json").read_text())
    for name, folder in (("weak", "weak_points"), ("refined", "sesam_points")):
      written = np.asarray(Image.open(tmp_path / "demo" / folder / f"{data['id']}.png"))
      np.testing.assert_array_equal(rle_decode(data["labels"][name]), written)


@pytest.mark.slow
def test_demo_training_stage(tmp_path, capsys):
  result = _run(tmp_path, capsys, "--train-steps", "4")
  assert 0.0 <= result["supervised_miou"] <= 1.0 and 0.0 <= result["sesam_miou"] <= 1.0
  assert result["sesam_final_coverage"]["final_coverage_weak"] > 0
  figures = result["figures"]
  assert len(figures["refinement"]) == 2
  runs = [str(tmp_path / "demo" / f"train_{m}") for m in ("supervised", "sesam")]
  qualitative = json.loads(pathlib.Path(figures["qualitative"]).with_suffix(".json").read_text())
  assert [r["workdir"] for r in qualitative["runs"]] == runs and len(qualitative["rows"]) == 3
  curves = json.loads(pathlib.Path(figures["curves"]).with_suffix(".json").read_text())
  assert [r["workdir"] for r in curves["runs"]] == runs
  for path in (figures["qualitative"], figures["curves"], *figures["refinement"]):
    assert pathlib.Path(path).is_file()
