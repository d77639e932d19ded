"""Atomic writes: the mode a plain `open` would give, and nothing half-written on failure."""

import os

import pytest

from sesam_jax.atomic import write_atomic


def test_written_file_has_the_usual_mode_and_a_failure_keeps_the_old_one(tmp_path):
  path = tmp_path / "result.json"
  write_atomic(path, "{}")
  with open(tmp_path / "plain.json", "w") as f:
    f.write("{}")
  # The mode `open` gives (0o666 less the umask), not mkstemp's owner-only 0o600.
  assert os.stat(path).st_mode & 0o777 == os.stat(tmp_path / "plain.json").st_mode & 0o777
  os.remove(tmp_path / "plain.json")

  def fail(f):
    f.write(b"half")
    raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    write_atomic(path, fail)
  assert path.read_text() == "{}" and os.listdir(tmp_path) == ["result.json"]
