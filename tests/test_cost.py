"""The annotation-cost model reproduces the paper's worked example."""

import json
import subprocess
import sys

import pytest

from sesam_jax import cost


def test_paper_figures_for_100_images():
  hours = cost.annotation_hours(100)
  # Paper, section 4.2: 150 h / 11.6 h / 3.6 h / 1.2 h (it truncates).
  for kind, paper in [("fine", 150.0), ("coarse", 11.6), ("scribbles", 3.6), ("points", 1.2)]:
    assert abs(hours[kind] - paper) <= 0.1, (kind, hours[kind])


def test_budget_and_full_cityscapes():
  # Figure 4: all 2975 fine images cost ~4463 h; scribbles on them ~109 h.
  hours = cost.annotation_hours(2975)
  assert abs(hours["fine"] - 4462.5) < 1e-9
  assert abs(hours["scribbles"] - 109.1) < 0.1
  afford = cost.images_within_budget(109.0)
  assert afford["fine"] == 72 and afford["scribbles"] == 2972


def test_bad_override_is_rejected():
  with pytest.raises(ValueError, match="coarse=abc"):
    cost.parse_minutes(["coarse=abc"])
  with pytest.raises(ValueError, match="KIND=MINUTES"):
    cost.parse_minutes(["coarse"])


def test_cli_last_line_is_json():
  out = subprocess.run([sys.executable, "-m", "sesam_jax.main", "cost", "--images", "100"],
                       capture_output=True, text=True, check=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["hours"]["fine"] == 150.0
