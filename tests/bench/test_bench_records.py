"""`sesam bench --record` / `--compare`: records from two machines render as one table."""

import json

import pytest

from sesam_jax import main as sesam_main
from sesam_jax.bench import records

GPU_LABEL = "NVIDIA H100 80GB HBM3 x1"


def _last_json(capsys):
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_two_machines_render_as_one_table_with_two_columns(tmp_path, capsys):
  path = tmp_path / "runs.jsonl"
  for _ in range(2):  # Two real runs of a cheap benchmark, with this machine's fingerprint.
    assert sesam_main.main(["bench", "--what", "weak_labels", "--images", "2", "--size", "32", "48",
                            "--record", str(path)]) == 0
    measured = _last_json(capsys)
  lines = path.read_text().splitlines()
  assert len(lines) == 2
  first, second = (json.loads(line) for line in lines)
  fp = first["fingerprint"]
  assert first["bench"] == "weak_labels"
  assert second["result"]["points_ms_median"] == measured["points_ms_median"]
  assert first["settings"]["images"] == 2 and first["settings"]["size"] == [32, 48]
  assert fp["machine"].startswith("CPU ") and fp["cpu_cores"] >= 1 and fp["cpu_model"]
  assert fp["versions"]["numpy"] and fp["timestamp"] and fp["python"]
  assert fp["command"].startswith("sesam bench --what weak_labels --images 2")
  # The second run as if it had come from a GPU host (the fingerprint is what changes).
  second["fingerprint"].update(machine=GPU_LABEL, cpu_model="Intel Xeon Platinum 8480+",
                               cpu_cores=16)
  second["result"]["points_ms_median"] = 0.25
  path.write_text(lines[0] + "\n" + json.dumps(second) + "\n")

  assert sesam_main.main(["bench", "--compare", str(path)]) == 0
  out = _last_json(capsys)
  assert out["machines"] == [fp["machine"], GPU_LABEL]
  assert out["records"] == 2 and out["groups"] == 1
  table = out["table"]
  assert f"| figure | {fp['machine']} | {GPU_LABEL} |" in table
  row = next(line for line in table.splitlines() if line.startswith("| points_ms_median |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells == ["points_ms_median", f"{first['result']['points_ms_median']:.4g}", "0.25"]
  assert "| CPU | " in table and "Intel Xeon Platinum 8480+" in table


def test_settings_that_differ_split_tables_and_title_them():
  def record(machine, crop, seconds, reps):
    return {"bench": "train-step", "settings": {"crop": crop, "reps": reps, "dtype": "bf16"},
            "fingerprint": {"machine": machine}, "result": {"seconds": seconds,
                                                            "seconds_all": [seconds] * reps}}
  out = records.compare_records([record("A", 512, 1.0, 3), record("B", 512, 0.5, 5),
                                 record("A", 1024, 4.0, 3), record("A", 1024, 3.0, 3)])
  assert out["machines"] == ["A", "B"] and out["groups"] == 2
  table = out["table"]
  # reps differs between A and B but only repeats the measurement: one table for crop 512.
  assert "### train-step (crop=512)" in table and "### train-step (crop=1024)" in table
  crop1024 = table.split("### train-step (crop=1024)")[1]
  assert "| seconds | 3 |  |" in crop1024  # The later record of a machine wins; B ran no 1024.
  assert "seconds_all" not in table  # Per-repetition lists stay in the JSON.


def test_bench_help_lists_targets_and_bad_invocations_speak(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    sesam_main.main(["bench", "--help"])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert "--record" in out and "--compare" in out
  for name in ("memory", "train-step", "sam", "iteration"):
    assert f"  {name} " in out
  assert sesam_main.main(["bench"]) == 2
  assert "--what NAME" in capsys.readouterr().err
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"bench": "x", "fingerprint": {}, "result": {}}\nnot json\n')
  assert sesam_main.main(["bench", "--compare", str(bad)]) == 2
  assert f"{bad}:2 is not a JSON record" in capsys.readouterr().err
  assert sesam_main.main(["bench", "--compare", str(tmp_path / "missing.jsonl")]) == 2
