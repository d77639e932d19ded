"""The figure commands on real CamVid images and the shared tiny run: each JSON holds what its
figure claims (checked against the geometry, `sesam refine`, `sesam predict`, the runs' files)."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from sam_bridge import geometry
from sam_bridge.api import RefineRequest
from sam_bridge.backends import create_backend
from sam_bridge.refine import RefineConfig, refine
from sesam_jax import main
from sesam_jax.data import get_source, weak_labels
from sesam_jax.plots.output import rle_decode
from tests import fakes


@pytest.fixture(scope="module")
def camvid_val(shared_data):
  return get_source("camvid", data_dir=shared_data / "camvid", split="val")


def _copy_run(run, dest, **fields):
  """A second workdir: the tiny run's checkpoint under a config.json with other fields."""
  shutil.copytree(run.workdir, dest)
  config = json.loads((dest / "config.json").read_text())
  for key, value in fields.items():
    *path, leaf = key.split(".")
    node = config
    for part in path:
      node = node[part]
    node[leaf] = value
  (dest / "config.json").write_text(json.dumps(config))
  return dest


def test_refine_visualize_draws_what_refine_wrote(camvid_val, shared_data, tmp_path, capsys):
  out = tmp_path / "sesam"
  result = fakes.run_cli(capsys, "refine", "--dataset", "camvid", "--data-dir", shared_data / "camvid",
                "--split", "val", "--weak", "coarse", "--backend", "oracle", "--limit", "1",
                "--visualize", "1", "--out", out)
  [figure], [data_path] = result["visualize"]["figures"], result["visualize"]["data"]
  assert Image.open(figure).size[0] > 500
  data = json.loads(open(data_path).read())
  item = camvid_val[0]
  assert data["id"] == item["id"] and data["backend"] == "oracle" and data["oracle"]
  labels = {k: rle_decode(v) for k, v in data["labels"].items()}
  # The weak, SeSAM and fine maps are the ones `sesam refine` used and wrote.
  written = np.asarray(Image.open(out / f"{item['id']}.png"))
  np.testing.assert_array_equal(labels["refined"], written)
  np.testing.assert_array_equal(labels["weak"], weak_labels.make_weak_label(
      item["label"], "coarse", seed=0, image_id=item["id"], num_classes=11))
  np.testing.assert_array_equal(labels["fine"], item["label"])
  assert data["miou"]["refined"] > data["miou"]["weak"]
  assert 1 <= len(data["instances"]) <= 3 <= data["instances_total"]
  hw = tuple(data["working_hw"])
  for inst in data["instances"]:
    y0, x0, y1, x1 = inst["bbox"]
    mask = rle_decode(inst["mask"])
    assert mask.shape == (y1 - y0, x1 - x0) and mask.sum() == inst["area"]
    # The sampled points lie inside their instance, one per drawn grid cell.
    xs, ys = (np.asarray(inst["points"]) - [x0, y0]).astype(int).T
    assert len(xs) == 5 and mask[ys, xs].all()
    cells = geometry.cell_index(ys, xs, mask.shape, tuple(inst["grid"]))
    assert sorted(cells.tolist()) == sorted(inst["cells"])
    assert min(inst["field_at_points"]) > 0
    # r and p recomputed from the three candidates and the instance mask, and the choice.
    candidates = np.stack([rle_decode(c) for c in inst["candidates"]])
    assert candidates.shape == (3, *hw)
    r, p = geometry.coverage_compatibility(candidates, mask, tuple(inst["bbox"]))
    np.testing.assert_allclose(r, inst["coverage"])
    np.testing.assert_allclose(p, inst["compatibility"])
    chosen, qualified = geometry.select_mask(r, p, np.asarray(inst["scores"]))
    assert (chosen, qualified) == (inst["chosen"], inst["qualified"])


def test_qualitative_grid_holds_the_labels_and_predictions(tiny_run, camvid_val, tmp_path,
                                                            capsys):
  second = _copy_run(tiny_run, tmp_path / "coarse_sesam", weak="coarse", method="sesam",
                     **{"sam.backend": "oracle"})
  out = tmp_path / "qualitative.png"
  result = fakes.run_cli(capsys, "plot", "qualitative", "--workdirs", tiny_run.workdir, second,
                "--dataset", "camvid", "--split", "val", "--images", 2, "--out", out)
  data = json.loads(out.with_suffix(".json").read_text())
  titles = [c["title"] for c in data["columns"]]
  assert [c["kind"] for c in data["columns"]] == ["image", "weak", "sesam", "prediction",
                                                  "prediction", "fine"]
  assert titles[1:3] == ["weak (coarse)", "SeSAM (oracle)"]  # from the second run's config
  # Both runs hold the same weights: the same predictions, as `sesam predict` writes them.
  pred_dir = tmp_path / "pred"
  fakes.run_cli(capsys, "predict", "--workdir", tiny_run.workdir, "--dataset", "camvid",
       "--limit", 2, "--out", pred_dir)
  for k, row in enumerate(data["rows"]):
    item = camvid_val[k]
    labels = {t: rle_decode(code) for t, code in row["labels"].items()}
    assert row["id"] == item["id"]
    np.testing.assert_array_equal(labels["fine"], item["label"])
    weak = weak_labels.make_weak_label(item["label"], "coarse", seed=0, image_id=item["id"],
                                       num_classes=11)
    np.testing.assert_array_equal(labels[titles[1]], weak)
    sesam = refine(create_backend("oracle"), RefineRequest(item["id"], item["image"], weak,
                                                           fine=item["label"]),
                   RefineConfig(weak_kind="coarse")).label
    np.testing.assert_array_equal(labels[titles[2]], sesam)
    written = np.asarray(Image.open(pred_dir / f"{item['id']}.png"))
    np.testing.assert_array_equal(labels[titles[3]], written)
    np.testing.assert_array_equal(labels[titles[4]], written)
  assert result["runs"][0]["miou"] == result["runs"][1]["miou"] is not None


def _hand_run(root, name, base_config, *, weak, method, images, miou):
  """A finished run's files as the loop writes them (config.json, result.json)."""
  workdir = root / name
  workdir.mkdir(parents=True)
  config = json.loads(base_config)
  config.update(weak=weak, method=method)
  config["dataset"]["max_train_images"] = images
  (workdir / "config.json").write_text(json.dumps(config))
  (workdir / "result.json").write_text(json.dumps({"val_miou": miou, "step": 100}))


def test_cost_plot_points_follow_the_cost_model(tiny_run, tmp_path, capsys):
  base = (tiny_run.workdir / "config.json").read_text()
  root = tmp_path / "runs"
  for name, weak, method, images, miou in [
      ("fine_10", "fine", "supervised", 10, 0.30), ("fine_100", "fine", "supervised", 100, 0.50),
      ("scribbles_100", "scribbles", "sesam", 100, 0.45),
      ("scribbles_10", "scribbles", "sesam", 10, 0.35), ("points_10", "points", "sesam", 10, 0.2)]:
    _hand_run(root, name, base, weak=weak, method=method, images=images, miou=miou)
  # A run without result.json (older runs): its config and metrics only.
  no_result = tmp_path / "no_result"
  no_result.mkdir()
  for name in ("config.json", "metrics.jsonl"):
    shutil.copy(tiny_run.workdir / name, no_result / name)
  out = tmp_path / "cost.png"
  fakes.run_cli(capsys, "plot", "cost", root, no_result, "--out", out)
  data = json.loads(out.with_suffix(".json").read_text())
  lines = {line["label"]: line for line in data["lines"]}
  assert list(lines) == ["points, sesam", "scribbles, sesam", "fine"]
  assert lines["fine"]["reference"] and not lines["scribbles, sesam"]["reference"]
  minutes = data["minutes_per_image"]
  for line in data["lines"]:
    hours = [p["hours"] for p in line["points"]]
    assert hours == sorted(hours)
    for p in line["points"]:
      assert p["hours"] == pytest.approx(p["train_images"] * minutes[line["weak"]] / 60, abs=1e-3)
  fine = lines["fine"]["points"]
  # Without result.json: the whole CamVid train split (367 images), the val mIoU from
  # metrics.jsonl.
  assert [p["train_images"] for p in fine] == [10, 100, 367]
  assert [p["val_miou"] for p in fine[:2]] == [0.30, 0.50]
  assert fine[2]["val_miou"] == pytest.approx(tiny_run.result["val_miou"])
  assert fine[2]["val_miou_from"] == "metrics.jsonl"
  assert [p["val_miou"] for p in lines["scribbles, sesam"]["points"]] == [0.35, 0.45]


def test_curves_hold_the_logged_metrics(tiny_run, tmp_path, capsys):
  resumed = tmp_path / "resumed"
  resumed.mkdir()
  (resumed / "config.json").write_text((tiny_run.workdir / "config.json").read_text())
  rows = [{"step": 10, "train/loss": 2.0, "train/coverage_weak": 0.1, "train/coverage_sam": 0.3},
          {"step": 20, "train/loss": 1.5, "train/coverage_weak": 0.1, "train/coverage_sam": 0.5},
          {"step": 20, "val/student_miou": 0.2, "val/ema_miou": 0.25},
          {"step": 20, "train/loss": 1.4, "train/coverage_weak": 0.1, "train/coverage_sam": 0.6},
          {"step": 30, "train/loss": 1.2, "train/coverage_weak": 0.1,
           "train/coverage_pseudo": 0.05}]
  (resumed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = tmp_path / "curves.png"
  fakes.run_cli(capsys, "plot", "curves", tiny_run.workdir, resumed, "--out", out)
  data = json.loads(out.with_suffix(".json").read_text())
  tiny, hand = data["runs"]
  logged = [json.loads(line) for line in open(tiny_run.workdir / "metrics.jsonl")]
  assert tiny["series"]["train/loss"] == [[r["step"], r["train/loss"]] for r in logged
                                          if "train/loss" in r]
  # Evaluated every 2 steps and at the end (step 4, the run's val_miou).
  assert tiny["series"]["val/student_miou"] == [
      [r["step"], r["val/student_miou"]] for r in logged if "val/student_miou" in r]
  assert tiny["series"]["val/student_miou"][-1] == [tiny_run.result["step"],
                                                     tiny_run.result["val_miou"]]
  assert [step for step, _ in tiny["series"]["val/student_miou"]] == [2, 4]
  # After a resume the later line of a step wins; every coverage source is drawn.
  assert hand["series"]["train/loss"] == [[10, 2.0], [20, 1.4], [30, 1.2]]
  assert hand["series"]["train/coverage_sam"] == [[10, 0.3], [20, 0.6]]
  assert hand["series"]["train/coverage_pseudo"] == [[30, 0.05]]
  assert hand["series"]["val/ema_miou"] == [[20, 0.25]]


def test_plot_errors_name_the_path(tmp_path, capsys):
  assert main.main(["plot", "cost", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 2
  assert str(tmp_path) in capsys.readouterr().err
  assert main.main(["plot", "curves", str(tmp_path / "nope"), "--out", "c.png"]) == 2
  assert str(tmp_path / "nope") in capsys.readouterr().err
