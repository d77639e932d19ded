"""The fault table of docs/faults.md ("What happens when...") names tests that exist."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
FAULTS = REPO / "docs" / "faults.md"


def _fault_rows():
  text = FAULTS.read_text()
  assert "## What happens when..." in text, f"{FAULTS} has no 'What happens when...' section"
  section = text.split("## What happens when...", 1)[1].split("\n## ", 1)[0]
  return [line for line in section.splitlines()
          if line.startswith("|") and not line.startswith(("| When", "|---"))]


def test_every_fault_row_names_existing_tests():
  rows = _fault_rows()
  assert len(rows) >= 10
  for row in rows:
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 4 and all(cells), row
    names = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", cells[3])
    assert names, f"no test named in: {row}"
    for path, test in names:
      source = REPO / path
      assert source.is_file(), f"{path} (docs/faults.md fault table) does not exist"
      assert re.search(rf"^def {test}\(", source.read_text(), re.M), f"{path}::{test} not found"
