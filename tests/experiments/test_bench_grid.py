"""`sesam reproduce --table 6`: bench-backed cells (`sesam bench` runs, not trainings), their
result.json, and `sesam report`'s Table 6 with the mIoU of Table 2's runs."""

import json
import pathlib
import shlex

from sesam_jax import main
from sesam_jax.experiments import bench_grid, grid
from sesam_jax.run import result as result_lib
from tests.experiments.test_summary import _run

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# A stand-in interpreter for the cells' `sesam bench` commands: prints each benchmark's JSON.
FAKE_BENCH = """#!/bin/sh
case "$*" in
  *"--what iteration"*) method=$(echo "$*" | sed 's/.*--methods \\([a-z]*\\).*/\\1/')
    echo "{\\"platform\\": \\"gpu\\", \\"device_kind\\": \\"NVIDIA H200\\", \\"weak\\": \\"coarse\\", \
\\"methods\\": {\\"fixmatch\\": {\\"seconds\\": 0.2, \\"ratio\\": 1.0}, \
\\"$method\\": {\\"seconds\\": 0.5, \\"ratio\\": 2.5}}}";;
  *"--what memory"*) echo '{"cases": {"deeplabv3plus_r101_b4_bf16_1dev": {"total_gib": 20.0}}}';;
  *) exit 3;;
esac
"""


def _cell_commands(command):
  return [shlex.split(part) for part in command.split(" && ")]


def test_table6_cells_are_benchmarks(capsys, monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  code = main.main(["reproduce", "--table", "6", "--data-dir", "cityscapes=/data/cs",
                    "--iterations", "5"])
  lines = capsys.readouterr().out.strip().splitlines()
  out = json.loads(lines[-1])
  assert code == 0 and out["placeholders"] == [] and len(out["commands"]) == 3
  assert "data folder of cityscapes (/data/cs: no such folder" in out["missing"][0]
  for method, command, workdir in zip(("fixmatch", "agmm", "sesam"), out["commands"],
                                      out["workdirs"]):
    iteration, memory = _cell_commands(command)
    assert workdir == f"workdirs/table6/cityscapes/deeplabv3plus_r101/coarse/{method}/seed0"
    assert iteration[:9] == ["sesam", "bench", "--what", "iteration", "--setting", "table6",
                             "--methods", method, "--data-dir"]
    assert "--iterations" in iteration and iteration[-2:] == ["--record",
                                                              f"{workdir}/bench.jsonl"]
    assert ("--backend" in iteration) == (method == "sesam")
    assert memory == ["sesam", "bench", "--what", "memory", "--setting", "table6", "--method",
                      method, "--record", f"{workdir}/bench.jsonl"]


def test_table6_runs_and_reports_with_table2_miou(tmp_path, capsys):
  fake = tmp_path / "python"
  fake.write_text(FAKE_BENCH)
  fake.chmod(0o755)
  root = tmp_path / "sweep"
  cells, _ = grid.expand("table6")
  plans = bench_grid.plan_cells(cells, root=str(root), data_dirs={}, sam_backend="jax")
  assert "--dataset synthetic --backend jax-random:vit_b" in plans[2].command
  runs = bench_grid.run_plans(plans[:2], python=str(fake))
  assert [r["status"] for r in runs] == ["ran", "ran"]
  result = result_lib.read(plans[1].workdir)
  assert result["method"] == "agmm" and result["seconds_per_iteration"] == 0.5
  assert (result["ratio_to_fixmatch"], result["peak_memory_gib"]) == (2.5, 20.0)
  assert (result["peak_memory_from"], result["bench_device"]) == ("xla estimate",
                                                                   "gpu NVIDIA H200")
  assert [r["status"] for r in bench_grid.run_plans(plans, python=str(fake))] == [
      "skipped", "skipped", "ran"]
  # Table 2's DeepLabV3+ Cityscapes coarse runs give the mIoU column (two AGMM seeds).
  base = root / "table2" / "cityscapes" / "deeplabv3plus_r101" / "coarse"
  for name, miou in (("agmm/seed0", 0.60), ("agmm/seed1", 0.62), ("sesam/seed0", 0.7)):
    _run(base, name, weak="coarse", method=name.split("/")[0], miou=miou)
  code = main.main(["report", str(root / "table6")])
  captured = capsys.readouterr()
  text = captured.out
  assert code == 0, captured.err
  assert ("| Fixmatch | 0.50 (paper 0.24) | 2.50 (paper 1.0) | 20.0 (paper 22.3) (XLA estimate) | "
          "- (paper 68.9) |") in text
  assert "| AGMM | 0.50 (paper 1.56) | 2.50 (paper 6.5) |" in text
  assert "| 61.0 (paper 70.6) (n=2) |" in text and "| 70.0 (paper 72.4) |" in text


def test_failed_benchmark_names_the_cell(tmp_path):
  fake = tmp_path / "python"
  fake.write_text("#!/bin/sh\necho '{\"error\": \"out of memory\"}'\nexit 1\n")
  fake.chmod(0o755)
  cells, _ = grid.expand("table6", methods=["agmm"])
  plans = bench_grid.plan_cells(cells, root=str(tmp_path), data_dirs={}, sam_backend="jax")
  try:
    bench_grid.run_plans(plans, python=str(fake))
  except ValueError as e:
    assert "agmm/seed0 (iteration benchmark: exit code 1; out of memory)" in str(e)
  else:
    raise AssertionError("a failed benchmark must stop the sweep")
  assert not (pathlib.Path(plans[0].workdir) / "result.json").exists()
