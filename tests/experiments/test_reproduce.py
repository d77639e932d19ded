"""`sesam reproduce`: the commands of a paper table (dry run), and a real sweep that is killed
after its first cell and resumed with the same command; `sesam report` on that sweep."""

import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

from sesam_jax import config_lib, configs_common, main
from sesam_jax.experiments import grid, sweep
from sesam_jax.run import runs as runs_lib
from tests import fakes

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _reproduce(capsys, *argv):
  """Runs `sesam reproduce` in-process: (exit code, command lines, JSON, stderr)."""
  code = main.main(["reproduce", *argv])
  captured = capsys.readouterr()
  lines = captured.out.strip().splitlines()
  payload = json.loads(lines[-1]) if code == 0 else None
  return code, lines[:-1], payload, captured.err


def _config_of(command):
  """The config `sesam train` would build from a printed command."""
  argv = shlex.split(command)
  assert argv[:2] == ["sesam", "train"]
  spec = next(a.partition("=")[2] for a in argv if a.startswith("--config="))
  workdir = next(a.partition("=")[2] for a in argv if a.startswith("--workdir="))
  overrides = [a for a in argv[2:] if a.startswith("--config.")]
  return config_lib.config_from_flags(spec, overrides), workdir


def test_table2_cityscapes_prints_16_commands_with_own_workdirs(capsys, monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  code, commands, out, err = _reproduce(capsys, "--table", "2", "--dataset", "cityscapes",
                                        "--workdir-root", "/runs")
  assert code == 0 and len(commands) == 16 and out["commands"] == commands
  seen = set()
  for command in commands:
    config, workdir = _config_of(command)
    assert workdir == f"/runs/table2/cityscapes/segformer_b0/{config.weak}/{config.method}/seed0"
    assert config.dataset.name == "cityscapes" and config.seed == 0
    uses_sam = config.method in ("sam_baseline", "sesam")
    placeholder = f"--config.sam.checkpoint={sweep.SAM_CHECKPOINT_PLACEHOLDER}"
    assert (placeholder in command) == uses_sam
    seen.add((config.weak, config.method))
  methods = ("supervised", "fixmatch", "sam_baseline", "sesam", "agmm")
  assert seen == {(w, m) for w in ("points", "scribbles", "coarse") for m in methods} | {
      ("fine", "supervised")}
  assert len(set(out["workdirs"])) == 16
  assert [x["what"] for x in out["left_out"]] == ["AGMM* on ADE20K"]
  assert "left out: AGMM* on ADE20K" in err
  assert sweep.SAM_CHECKPOINT_PLACEHOLDER in out["placeholders"] and "--run refuses" in err
  assert out["not_selected"] == ["deeplabv3plus cityscapes"]


def test_agmm_cells_of_tables_2_and_6(capsys, monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  code, commands, out, _ = _reproduce(capsys, "--table", "2", "--student", "all")
  assert code == 0 and len(commands) == 3 * 16 + 2 * 13  # no AGMM* cells on ADE20K
  agmm = {tuple(w.split("/")[2:5]) for w in out["workdirs"]
          if "/agmm/" in w}
  assert agmm == {(d, m, w) for d, m in (("cityscapes", "segformer_b0"), ("voc", "segformer_b0"),
                                         ("cityscapes", "deeplabv3plus_r101"))
                  for w in ("points", "scribbles", "coarse")}
  # Table 6's cells are benchmarks (tests/experiments/test_bench_grid.py).
  code, commands, out, _ = _reproduce(capsys, "--table", "6")
  assert code == 0 and [c["method"] for c in out["cells"]] == ["fixmatch", "agmm", "sesam"]


def test_tables_1_3_4_and_fig4(capsys, monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  code, commands, out, _ = _reproduce(capsys, "--table", "1", "--sam-checkpoint", "/w/sam.pth",
                                      "--data-dir", "voc=/data/voc")
  # Without --weights, each command holds its student's placeholder init, which --run refuses.
  init = sweep.INIT_PLACEHOLDER.format(model="deeplabv3plus_r101")
  assert code == 0 and len(commands) == 11 and out["placeholders"] == [init]
  assert sum("method=agmm" in c for c in commands) == 2  # AGMM*: scribbles and points
  assert all(f"--config.init={init}" in c for c in commands)
  # --run would also refuse the made-up SAM and data paths: every missing input is listed.
  assert len(out["missing"]) == 3 and "/w/sam.pth not found" in out["missing"][1]
  assert out["missing"][::2] == ["student weights for deeplabv3plus_r101 (torchvision's resnet101 "
                            "ImageNet file (resnet101-*.pth) or microsoft/resnet-101: give "
                            "--weights DIR; or --random-init)", "data folder of voc (/data/voc: "
                            "no such folder; --data-dir voc=DIR)"]
  code, commands, out, _ = _reproduce(capsys, "--table", "1", "--sam-checkpoint", "/w/sam.pth",
                                      "--data-dir", "voc=/data/voc", "--random-init")
  assert code == 0 and not out["placeholders"] and "--config.init" not in " ".join(commands)
  assert {c["init"] for c in out["cells"]} == {"random"}
  assert any("DeepLabV2" in x["what"] for x in out["left_out"])
  assert any("AGMM (its authors' row)" in x["what"] for x in out["left_out"])
  assert all("--config.data_dir=/data/voc" in c for c in commands)
  # The DeepLabV3+ configs train ResNet-101, the paper's: no note about the model.
  assert not any("configs train" in note for note in out["notes"]) and out["notes"]
  assert any("start from random weights" in note for note in out["notes"])

  # A config without `sam.refined_sampling`: table 3's cells that set it are named as left out ...
  base = configs_common.base_config

  def without_field():
    config = base()
    if "refined_sampling" in config.sam:
      del config.sam["refined_sampling"]
    return config
  monkeypatch.setattr(configs_common, "base_config", without_field)
  code, commands, out, err = _reproduce(capsys, "--table", "3")
  assert code == 0 and len(commands) == 4  # 3 coarse and 1 points run (3c).
  assert len(out["left_out"]) == 5 and "sam.refined_sampling" in err
  # ... and run with a config that has it.
  def with_field():
    config = without_field()
    config.sam.refined_sampling = True
    return config
  monkeypatch.setattr(configs_common, "base_config", with_field)
  code, commands, out, _ = _reproduce(capsys, "--table", "3")
  assert code == 0 and len(commands) == 9 and not out["left_out"]
  no_refined = [c for c in commands if "--config.sam.refined_sampling=false" in c]
  assert len(no_refined) == 5 and any(w.endswith("/sesam/refined_sampling-off/seed0")
                                      for w in out["workdirs"])
  # 3c has a points column: with and without refined sampling, and no other points row.
  points = [w for w in out["workdirs"] if "/points/" in w]
  assert sorted(w.split("/points/")[1] for w in points) == [
      "sesam/refined_sampling-off/seed0", "sesam/seed0"]
  code, commands, out, _ = _reproduce(capsys, "--table", "4")
  assert code == 0 and len(commands) == 9  # 4a: 5, 4b: 2 more, 4c: 2 more ("ours" is one run).
  assert sum("--config.sam.sampling=confidence" in c for c in commands) == 1

  code, commands, out, _ = _reproduce(capsys, "--table", "fig4", "--dataset", "synthetic",
                                      "--budgets", "8,all", "--seeds", "0,1")
  assert code == 0 and len(commands) == 4 * 2 * 2
  assert sum("--config.dataset.max_train_images=8" in c for c in commands) == 8
  assert {w.split("/")[-2] for w in out["workdirs"]} == {"n8", "nall"}


def test_user_errors_stop_before_anything_runs(capsys, monkeypatch, tmp_path):
  monkeypatch.chdir(REPO_ROOT)
  code, _, _, err = _reproduce(capsys, "--table", "2", "--dataset", "cityscapes", "--run",
                               "--workdir-root", str(tmp_path))
  assert code == 2 and "nothing was run; missing 3 input(s)" in err
  assert all(flag in err.strip().splitlines()[-1] for flag in (
      "--weights DIR", "--sam-checkpoint FILE", "--data-dir cityscapes=DIR"))
  code, _, _, err = _reproduce(capsys, "--table", "2", "--dataset", "synthetic", "--run",
                               "--sam-checkpoint", str(tmp_path / "sam.pth"), "--workdir-root",
                               str(tmp_path))
  assert code == 2 and "sam.pth not found (--sam-checkpoint)" in err
  assert not list(tmp_path.iterdir())
  code, _, _, err = _reproduce(capsys, "--table", "2", "--dataset", "synthetic",
                               "--config.num_stepz=3")
  assert code == 2 and "num_stepz" in err
  code, _, _, err = _reproduce(capsys, "--table", "4", "--config.sam.prompt=box")
  assert code == 2 and "what the table's cells vary" in err
  with pytest.raises(ValueError, match="--budgets"):
    grid.parse_budgets("10,-5")


# The small synthetic grid of the sweep test: 2 steps on 4 images of 32x48 with the test model
# (TinySeg: the subject is the sweep, not the network; SegFormer-tiny would spend most of the
# test compiling).
SWEEP = ["--table", "2", "--dataset", "synthetic", "--student", "segformer", "--weak", "points",
         "--methods", "supervised,sam_baseline", "--sam-backend", "superpixel",
         f"--config.model={fakes.TEST_MODEL}", "--config.num_steps=2",
         "--config.dataset.num_train_images=4",
         "--config.dataset.num_val_images=4", "--config.dataset.image_size=(32,48)",
         "--config.crop=32", "--config.batch_size=4", "--config.eval.batch_size=4"]
CELLS = ("points/supervised", "points/sam_baseline", "fine/supervised")
FINE_MIOU = 0.5  # val mIoU of the pre-made weak=fine reference (the WvF denominator)


def _premade_fine_run(root):
  """The fine cell as a finished run leaves it (config.json, result.json), without training."""
  cells, _ = grid.expand("table2", datasets=["synthetic"], students=["segformer"], weak=["fine"])
  extra = [a for a in SWEEP if a.startswith("--config.")]
  plans, _ = sweep.plan_cells(cells, root=str(root), configs_dir=str(REPO_ROOT / "configs"),
                              sam_backend="superpixel", extra=extra)
  assert len(plans) == 1
  argv = plans[0].argv
  config = config_lib.config_from_flags(argv[2].partition("=")[2],
                                        [a for a in argv if a.startswith("--config.")])
  workdir = pathlib.Path(plans[0].workdir)
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(config.to_json())
  (workdir / "result.json").write_text(json.dumps({
      "step": 2, "val_miou": FINE_MIOU, "val_miou_ema": FINE_MIOU, "method": "supervised",
      "weak": "fine", "train_images": 4, "train_seconds": 1.0, "eval_seconds": 1.0}))


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
  """A real sweep of 3 cells (the fine one pre-made finished), killed after its first cell
  finished, then resumed with the same command.

  Returns (root, the JSON of the resumed sweep, result.json of cell 1 before the resume).
  """
  tmp = tmp_path_factory.mktemp("sweep")
  root = tmp / "runs"
  _premade_fine_run(root)
  # Each `sesam train` the sweep starts registers the test model at start-up: Python imports
  # `sitecustomize` from the path when there is one (sys.argv is ["-m", "train", ...] there).
  hook = tmp / "hook"
  hook.mkdir()
  (hook / "sitecustomize.py").write_text(
      "import sys\nif sys.argv[1:2] == ['train']:\n"
      "  from tests import fakes\n  fakes.register_test_model()\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hook), str(REPO_ROOT)]),
             # Cells share shapes: the persistent cache compiles each step once for the sweep.
             JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  command = [sys.executable, "-m", "sesam_jax.main", "reproduce", *SWEEP, "--workdir-root",
             str(root), "--run"]
  first = root / "table2/synthetic" / fakes.TEST_MODEL / CELLS[0] / "seed0"
  proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, start_new_session=True)
  try:
    deadline = time.time() + 400
    while runs_lib.finished_step(str(first), 2) is None:
      assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
      assert time.time() < deadline, "the first cell did not finish"
      time.sleep(0.2)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)  # The sweep and its training process, mid-cell 2.
    proc.communicate()
  before = (first / "result.json").read_text()
  again = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=400)
  assert again.returncode == 0, again.stderr[-3000:]
  return root, json.loads(again.stdout.strip().splitlines()[-1]), before


def test_killed_sweep_resumes_and_finishes_each_cell_once(sweep_root):
  root, out, before = sweep_root
  cells = root / "table2/synthetic" / fakes.TEST_MODEL
  assert [r["status"] for r in out["runs"]] == ["skipped", "ran", "skipped"]
  assert [r["workdir"] for r in out["runs"]] == [str(cells / c / "seed0") for c in CELLS]
  assert (cells / CELLS[0] / "seed0/result.json").read_text() == before  # Not trained again.
  for cell in CELLS[:2]:
    result = json.loads((cells / cell / "seed0/result.json").read_text())
    assert result["step"] == 2 and result["method"] == cell.split("/")[1]
    assert 0.0 <= result["val_miou"] <= 1.0 and result["train_images"] == 4
  # Each log holds its command once per start: cell 1 once, cell 2 once or twice (killed before
  # or after it started), the pre-made fine cell never.
  starts = [sum(line.startswith("# ") and " sesam train " in line
                for line in (cells / c / "seed0/reproduce.log").read_text().splitlines())
            for c in CELLS[:2]]
  assert starts[0] == 1 and starts[1] in (1, 2)
  assert not (cells / CELLS[2] / "seed0/reproduce.log").exists()


def test_report_of_the_sweep_has_wvf_and_lists_an_unfinished_run(sweep_root, capsys, tmp_path):
  root, _, _ = sweep_root
  cells = root / "table2/synthetic" / fakes.TEST_MODEL
  # A second seed of cell 1 that was killed before its result: config.json and one log line.
  killed = cells / CELLS[0] / "seed1"
  killed.mkdir()
  config = json.loads((cells / CELLS[0] / "seed0/config.json").read_text())
  config["seed"] = 1
  (killed / "config.json").write_text(json.dumps(config))
  (killed / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n')
  code = main.main(["report", str(root / "table2"), "--csv", str(tmp_path / "t.csv")])
  text = capsys.readouterr().out
  assert code == 0
  miou = {c: json.loads((cells / c / "seed0/result.json").read_text())["val_miou"] for c in CELLS}
  assert miou[CELLS[2]] == FINE_MIOU
  wvf = 100 * miou[CELLS[0]] / FINE_MIOU
  lines = text.splitlines()
  # The SAM baseline's prior (the synthetic config's superpixel) is a column of its own.
  assert lines[0].startswith(f"| labels | method | prior | init | labels from | "
                             f"{fakes.TEST_MODEL} synthetic: mIoU | WvF |")
  row = next(l for l in lines if l.startswith("| points | supervised |")).split(" | ")
  assert row[2:5] == ["", "random", "generated"]  # Synthetic grids need no student weights.
  assert row[5] == f"{100 * miou[CELLS[0]]:.1f} (1 of 2 runs finished)" and row[6] == f"{wvf:.1f}"
  assert row[7] == f"{4 * 0.75 / 60:.3g}"  # 4 training images with points: 0.05 h
  fine = next(l for l in lines if l.startswith("| fine | supervised |")).split(" | ")
  assert fine[6] == "100.0" and fine[7] == "6"  # 4 images x 90 min
  assert any(l.startswith("| points | sam_baseline | superpixel |") for l in lines)
  assert f"seed 1 (step 1 of 2): {killed}" in text
  payload = json.loads(lines[-1])
  assert payload["unfinished"] == [str(killed)] and payload["finished"] == 3
  assert (tmp_path / "t.csv").read_text().count("\n") == 4  # header + 3 cells
