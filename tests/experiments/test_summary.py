"""`sesam report` arithmetic on hand-made workdirs: seeds, WvF, budgets, ablation rows, hours,
unfinished runs, CSV and the cost-vs-mIoU data."""

import csv
import json

import pytest

from sesam_jax import configs_common, cost
from sesam_jax.experiments import summary


def _run(root, name, *, weak, method, seed=0, miou=None, step=None, budget=0, images=None,
         num_steps=10, **fields):
  """A workdir as `sesam train` leaves it: config.json, and result.json when `miou` is given."""
  config = configs_common.base_config()
  config.dataset.name, config.model = "cityscapes", "segformer_b0"
  config.weak, config.method, config.seed, config.num_steps = weak, method, seed, num_steps
  config.dataset.max_train_images = budget
  for dotted, value in fields.items():
    if "__" not in dotted:
      config[dotted] = value
      continue
    group, leaf = dotted.split("__")
    config[group][leaf] = value
  workdir = root / name
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(config.to_json())
  if miou is not None:
    result = {"step": num_steps if step is None else step, "val_miou": miou,
              "val_miou_ema": miou + 0.01, "train_seconds": 100.0, "eval_seconds": 20.0,
              "final_coverage_weak": 0.5, "method": method, "weak": weak}
    if images:
      result["train_images"] = images
    (workdir / "result.json").write_text(json.dumps(result))
  if budget:
    (workdir / "train_images.json").write_text(json.dumps({"count": budget, "ids": []}))
  return workdir


def test_table_seeds_wvf_hours_and_unfinished(tmp_path, capsys):
  root = tmp_path / "runs"
  _run(root, "fine/s0", weak="fine", method="supervised", miou=0.80, images=2975)
  _run(root, "pts/s0", weak="points", method="sesam", seed=0, miou=0.50, images=2975)
  _run(root, "pts/s1", weak="points", method="sesam", seed=1, miou=0.60, images=2975)
  killed = _run(root, "pts/s2", weak="points", method="sesam", seed=2)  # no result.json
  (killed / "metrics.jsonl").write_text('{"step": 3}\n{"step": 6}\n{"st')  # cut by the kill
  short = _run(root, "pts_sup/s0", weak="points", method="supervised", miou=0.3, step=5)
  _run(root, "abl/s0", weak="points", method="sesam", miou=0.4, images=2975,
       sam__sampling="center")
  out = summary.report_runs([str(root)], csv_path=str(tmp_path / "t.csv"),
                            cost_json=str(tmp_path / "cost.json"))
  text = capsys.readouterr().out
  rows = {(r["labels"], r["method"], r["variant"]): r for r in out["cells"]}
  points = rows[("points", "sesam", "")]
  assert points["miou_pct"] == pytest.approx(55.0)
  assert points["miou_std_pct"] == pytest.approx(7.0711, abs=1e-3)  # sample std of 50, 60
  assert points["wvf_pct"] == pytest.approx(100 * 0.55 / 0.80, abs=1e-4)
  assert points["hours"] == pytest.approx(cost.annotation_hours(2975)["points"], abs=1e-4)
  assert points["wall_seconds"] == 120.0 and points["coverage_weak_pct"] == 50.0
  assert points["status"] == "partly finished" and points["finished"] == 2
  assert rows[("fine", "supervised", "")]["wvf_pct"] == 100.0
  assert rows[("points", "sesam", "sampling=center")]["miou_pct"] == pytest.approx(40.0)
  assert rows[("points", "supervised", "")]["status"] == "unfinished"
  assert sorted(out["unfinished"]) == sorted([str(killed), str(short)])
  # Beside the mIoU: the paper's (Table 2, SegFormer-B0 Cityscapes points SeSAM) and the gap.
  assert ("| points | sesam |  | random | generated | 55.0 ± 7.1 (n=2) (2 of 3 runs finished) "
          "| 58.5 | -3.5 | 68.8 |") in text
  assert points["paper_miou_pct"] == 58.5 and points["miou_diff_pct"] == pytest.approx(-3.5)
  assert f"seed 2 (step 6 of 10): {killed}" in text
  assert f"(step 5 of 10): {short}" in text
  with open(tmp_path / "t.csv") as f:
    assert [r["status"] for r in csv.DictReader(f)] == [r["status"] for r in out["cells"]]
  data = json.loads((tmp_path / "cost.json").read_text())
  assert data["format"] == "sesam-cost-points/1"
  lines = {line["label"]: line for line in data["lines"]}
  assert lines["fine"]["reference"] and lines["fine"]["points"][0]["hours"] == 4462.5
  assert lines["points, sesam"]["points"][0]["seeds"] == 2
  assert "points, supervised" not in lines and len(data["unfinished"]) == 2


def test_inits_and_label_sources_never_share_a_cell_and_the_table_picks_the_figure(tmp_path,
                                                                                  capsys):
  root = tmp_path / "runs"
  # The same FixMatch coarse set-up fills Table 2 (66.7) and Table 3a's base row (65.2).
  _run(root, "table2/a", weak="coarse", method="fixmatch", miou=0.60, init="/w/mit_b0.msgpack",
       weak_source="cityscapes_coarse")
  _run(root, "table2/b", weak="coarse", method="fixmatch", miou=0.40, seed=1)  # random, generated
  _run(root, "table3/c", weak="coarse", method="sesam", miou=0.70, init="/w/mit_b0.msgpack",
       sam__refined_sampling=False)
  _run(root, "table3/d", weak="points", method="sesam", miou=0.50, init="/w/mit_b0.msgpack")
  out = summary.report_runs([str(root)])
  text = capsys.readouterr().out
  rows = {(r["labels"], r["method"], r["variant"], r["init"], r["labels from"]): r
          for r in out["cells"]}
  assert len(rows) == 4
  pretrained = rows[("coarse", "fixmatch", "", "pretrained", "cityscapes_coarse")]
  random = rows[("coarse", "fixmatch", "", "random", "generated")]
  assert pretrained["miou_pct"] == pytest.approx(60.0) and random["miou_pct"] == pytest.approx(40.0)
  assert pretrained["paper_miou_pct"] == 66.7
  # Table 3c without refined sampling on coarse: 69.4; the points column has no figure.
  assert rows[("coarse", "sesam", "refined_sampling=False", "pretrained", "generated")][
      "paper_miou_pct"] == 69.4
  assert rows[("points", "sesam", "", "pretrained", "generated")]["paper_miou_pct"] is None
  assert "| coarse | fixmatch |  | pretrained | cityscapes_coarse | 60.0 | 66.7 | -6.7 |" in text


def test_budgets_make_rows_and_ema(tmp_path, capsys):
  root = tmp_path / "fig4"
  for n, (weak_miou, fine_miou) in {100: (0.3, 0.2), 0: (0.5, 0.7)}.items():
    images = None if n else 2975  # The subset's count comes from train_images.json.
    _run(root, f"s{n}", weak="scribbles", method="sesam", budget=n, miou=weak_miou, images=images)
    _run(root, f"f{n}", weak="fine", method="supervised", budget=n, miou=fine_miou, images=images)
  out = summary.report_runs([str(root)], ema=True)  # Budgets: cost_points.json beside them.
  rows = {(r["labels"], r["budget"]): r for r in out["cells"]}
  assert rows[("scribbles", "100")]["hours"] == pytest.approx(100 * 2.2 / 60, abs=1e-4)  # subset
  assert rows[("scribbles", "100")]["wvf_pct"] == pytest.approx(100 * 0.31 / 0.21, abs=1e-4)  # EMA
  assert rows[("scribbles", "all")]["miou_pct"] == pytest.approx(51.0)
  assert "| budget |" in capsys.readouterr().out
  assert out["cost_json"] == str(root / summary.COST_FILE)
  line = next(l for l in json.loads((root / summary.COST_FILE).read_text())["lines"]
              if l["weak"] == "scribbles")
  assert [p["train_images"] for p in line["points"]] == [100, 2975]
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="holds no run"):
    summary.report_runs([str(tmp_path / "empty")])


def test_report_of_the_suites_tiny_run(tiny_run, capsys):
  # The session's finished TinySeg run on CamVid (fine labels, supervised): one row, WvF 100.
  out = summary.report_runs([str(tiny_run.workdir)], ema=True)
  (row,) = out["cells"]
  assert (row["dataset"], row["labels"], row["method"], row["status"]) == (
      "camvid", "fine", "supervised", "finished")
  assert row["miou_pct"] == pytest.approx(100 * tiny_run.result["val_miou_ema"], abs=1e-3)
  assert row["wvf_pct"] == 100.0 and row["train_images"] == tiny_run.result["train_images"] == 367
  assert row["hours"] == pytest.approx(367 * 90 / 60)
  assert "| fine | supervised |" in capsys.readouterr().out


def test_csv_has_the_camvid_columns_and_priors_never_share_a_cell(tmp_path, capsys):
  root = tmp_path / "camvid"
  extra = {"final_coverage_sam": 0.2, "final_precision_sam": 0.8, "cpu_seconds": 300.0}
  for seed, miou in enumerate((0.30, 0.34)):
    workdir = _run(root, f"sp/seed{seed}", weak="coarse", method="sesam", seed=seed, miou=miou,
                   images=367, sam__backend="superpixel")
    result = json.loads((workdir / "result.json").read_text())
    (workdir / "result.json").write_text(json.dumps({**result, **extra}))
  # `sesam reproduce --run` heads the cell's log with its command (a resume repeats it).
  command = ("sesam train --config=configs/segformer_camvid.py:weak=coarse,method=sesam,cpu "
             f"--workdir={root / 'sp/seed0'} --config.seed=0 --config.sam.backend=superpixel")
  (root / "sp/seed0/reproduce.log").write_text(
      f"# 2025-01-01 10:00:00 {command}\nstep 1\n# 2025-01-01 11:00:00 {command}\n")
  _run(root, "oracle/seed0", weak="coarse", method="sesam", miou=0.5, images=367,
       sam__backend="oracle")
  _run(root, "sup/seed0", weak="coarse", method="supervised", miou=0.2, images=367,
       sam__backend="superpixel")  # No SAM: its sam.backend means nothing, no prior.
  _run(root, "fine/seed0", weak="fine", method="supervised", miou=0.4, images=367)
  out = summary.report_runs([str(root)], csv_path=str(tmp_path / "camvid.csv"))
  text = capsys.readouterr().out
  with open(tmp_path / "camvid.csv") as f:
    records = list(csv.DictReader(f))
  assert {"weak", "method", "prior", "seeds", "miou_mean", "miou_std", "wvf",
          "final_coverage_sam", "final_precision_sam", "wall_seconds", "cpu_seconds",
          "command"} <= set(records[0])
  rows = {(r["weak"], r["method"], r["prior"]): r for r in records}
  assert set(rows) == {("coarse", "sesam", "superpixel"), ("coarse", "sesam", "oracle"),
                       ("coarse", "supervised", ""), ("fine", "supervised", "")}
  sp = rows[("coarse", "sesam", "superpixel")]
  assert sp["seeds"] == "2" and float(sp["miou_mean"]) == pytest.approx(0.32)
  assert float(sp["miou_std"]) == pytest.approx(0.02828, abs=1e-4)
  assert float(sp["wvf"]) == pytest.approx(0.8) and float(sp["final_precision_sam"]) == 0.8
  assert float(sp["final_coverage_sam"]) == 0.2 and float(sp["cpu_seconds"]) == 300.0
  assert float(sp["wall_seconds"]) == 120.0 and sp["command"] == command
  assert rows[("coarse", "sesam", "oracle")]["command"] == ""  # Not run by `sesam reproduce`.
  assert rows[("coarse", "sesam", "oracle")]["final_precision_sam"] == ""
  assert out["cells"][0]["prior"] == ""  # Sorted: coarse supervised first.
  assert "| coarse | sesam | superpixel |" in text and "| coarse | sesam | oracle |" in text
  assert "SAM precision %" in text
