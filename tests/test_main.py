"""The `sesam` command's ending on failure: `{"error", "exit_code"}` as the last stdout line,
whatever failed (a user's mistake, a usage error, a stop, Ctrl-C, a bug)."""

import json

import pytest

from sesam_jax import commands, main, report


def failed(capsys, *argv) -> tuple[int, dict, str]:
  """`sesam ARGV` that fails: (exit code, its last stdout line as JSON, stderr)."""
  capsys.readouterr()
  code = main.main([str(a) for a in argv])
  captured = capsys.readouterr()
  assert code != 0, captured.err
  return code, json.loads(captured.out.strip().splitlines()[-1]), captured.err


def test_user_errors_end_with_the_error_json_and_exit_2(tmp_path, capsys):
  missing = tmp_path / "nowhere.py"
  code, line, err = failed(capsys, "train", f"--config={missing}", f"--workdir={tmp_path / 'w'}")
  assert code == 2 and line["exit_code"] == 2 and str(missing) in line["error"]
  assert f"sesam train: error: {line['error']}" in err and "Traceback" not in err
  code, line, _ = failed(capsys, "eval-labels", "--dataset", "camvid", "--data-dir",
                         tmp_path / "no_camvid", "--labels", tmp_path / "no_labels")
  assert code == 2 and line["exit_code"] == 2 and "no_camvid" in line["error"]
  assert list(line) == ["error", "exit_code"]


def test_usage_errors_end_with_the_error_json(capsys):
  code, line, err = failed(capsys, "cost")
  assert code == 2 and line == {"error": "the following arguments are required: --images",
                                "exit_code": 2}
  assert "usage: sesam cost" in err
  code, line, _ = failed(capsys, "cost", "--images", "3", "--no-such-flag")
  assert code == 2 and "--no-such-flag" in line["error"]


def test_help_prints_no_error(capsys):
  with pytest.raises(SystemExit) as e:
    main.main(["cost", "--help"])
  assert e.value.code == 0
  assert "error" not in capsys.readouterr().out


@pytest.mark.parametrize("raised, code, message", [
    (report.Stopped("stopped by SIGTERM; rerun to resume", 143), 143,
     "stopped by SIGTERM; rerun to resume"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (RuntimeError("boom"), 1, "unexpected RuntimeError: boom"),
])
def test_stops_and_bugs_end_with_the_error_json(monkeypatch, capsys, raised, code, message):
  def cost(args):
    raise raised
  monkeypatch.setattr(commands, "cost", cost)
  got, line, err = failed(capsys, "cost", "--images", "3")
  assert got == code and line == {"error": message, "exit_code": code}
  assert ("Traceback" in err) == (code == 1)
