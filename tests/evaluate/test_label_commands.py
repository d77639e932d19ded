"""`sesam weak-labels` and `sesam eval-labels` end to end on a few CamVid val images."""

import json

import numpy as np
from PIL import Image

from sesam_jax import main


def _run(capsys, *argv):
  code = main.main(list(argv))
  out, err = capsys.readouterr()
  return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 else None), err


def test_weak_labels_then_eval_labels(shared_data, tmp_path, capsys):
  camvid = str(shared_data / "camvid")
  out = tmp_path / "points"
  code, result, _ = _run(capsys, "weak-labels", "--dataset", "camvid", "--data-dir", camvid,
                         "--split", "val", "--kind", "points", "--seed", "0", "--out", str(out),
                         "--limit", "3")
  assert code == 0
  names = sorted(p.name for p in out.iterdir())
  assert names == ["0016E5_07959.png", "0016E5_07961.png", "0016E5_07963.png"]
  assert result["images"] == 3 and result["purity"] == 1.0 and result["classes_covered"] == 1.0
  assert 0 < result["labeled_fraction"] < 1e-3
  weak = np.asarray(Image.open(out / names[0]))
  assert weak.shape == (360, 480) and ((weak != 255).sum() <= 11)

  code, scored, err = _run(capsys, "eval-labels", "--dataset", "camvid", "--data-dir", camvid,
                           "--split", "val", "--labels", str(out), "--limit", "3")
  assert code == 0 and scored["precision"] == 1.0
  assert scored["labeled_fraction"] == result["labeled_fraction"]
  assert 0 < scored["miou"] < 0.01 and "Pedestrian" in err and "mIoU" in err


def test_eval_labels_errors_name_the_file(shared_data, tmp_path, capsys):
  camvid = str(shared_data / "camvid")
  out = tmp_path / "coarse"
  code, result, _ = _run(capsys, "weak-labels", "--dataset", "camvid", "--data-dir", camvid,
                         "--split", "val", "--kind", "coarse", "--out", str(out), "--limit", "2")
  assert code == 0 and result["purity"] >= 0.97
  args = ("eval-labels", "--dataset", "camvid", "--data-dir", camvid, "--split", "val",
          "--labels", str(out))
  code, _, err = _run(capsys, *args, "--limit", "3")
  assert code == 2 and "0016E5_07963.png" in err and "error" in err
  small = out / "0016E5_07961.png"
  Image.open(small).resize((240, 180), Image.NEAREST).save(small)
  code, _, err = _run(capsys, *args, "--limit", "2")
  assert code == 2 and "0016E5_07961.png is 240x180" in err
  code, _, err = _run(capsys, "weak-labels", "--dataset", "camvid", "--data-dir",
                      str(tmp_path / "missing"), "--split", "val", "--kind", "points",
                      "--out", str(out))
  assert code == 2 and "missing" in err


def test_weak_labels_on_synthetic(tmp_path, capsys):
  code, result, _ = _run(capsys, "weak-labels", "--dataset", "synthetic", "--num-images", "2",
                         "--size", "64", "128", "--kind", "coarse", "--out", str(tmp_path))
  assert code == 0 and result["images"] == 2 and result["purity"] >= 0.97
