"""result.json's schema (`sesam_jax.run.result`): every key code writes is in it; others fail."""

import ast
import json
import pathlib

import pytest

from sesam_jax.run import layout, result
from sesam_jax.sam.refresh import RefreshCounter

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_the_tiny_runs_result_is_in_the_schema(tiny_run):
  written = json.loads((tiny_run.workdir / layout.RESULT).read_text())
  assert result.check(written) == written
  assert written == result.read(tiny_run.workdir)
  assert {"step", "val_miou", "method", "weak", "train_images", "train_seconds",
          "eval_seconds", "workdir", "compile_seconds"} <= set(written)
  # Each jitted step's compile (or load from the session's compilation cache), in seconds.
  assert set(written["compile_seconds"]) == {"train_step", "eval_step"}
  assert all(s > 0 for s in written["compile_seconds"].values())


def test_unknown_keys_and_wrong_types_fail():
  with pytest.raises(ValueError, match=r"'val_mIoU' is not in the schema.*run/result.py"):
    result.check({"step": 3, "val_mIoU": 0.5})
  with pytest.raises(ValueError, match=r"'step' = '3': expected int"):
    result.check({"step": "3"})
  with pytest.raises(ValueError, match="expected int"):
    result.check({"val_images": True})


def test_patterns_and_null_numbers():
  checked = result.check({"final_coverage_sam": 0.25, "sam/bridge_decode": 1.5,
                          "val_miou": float("nan")})
  assert checked == {"final_coverage_sam": 0.25, "sam/bridge_decode": 1.5, "val_miou": None}
  assert result.field("final_coverage_weak").unit == "fraction 0-1"
  assert result.field("sam/bridge_") is not None and result.field("sam/bridgework") is None


def test_make_result_from_an_evaluation():
  ev = {"student_miou": 0.5, "ema_miou": 0.25, "student_per_class_iou": [0.5, 0.5],
        "num_images": 3, "eval_seconds": 1.234}
  out = result.make_result(7, ev, ["road", "sky"], method="sesam", weak="points")
  assert out == {"step": 7, "val_miou": 0.5, "val_miou_ema": 0.25,
                 "val_per_class_iou": {"road": 0.5, "sky": 0.5}, "val_images": 3,
                 "eval_seconds": 1.23, "method": "sesam", "weak": "points"}
  with pytest.raises(ValueError, match="'extra'"):
    result.make_result(7, ev, None, extra=1)


def _string_keys(path: pathlib.Path, attribute: str) -> set[str]:
  """String subscripts of `self.<attribute>[...]` in a module."""
  keys = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
        and node.value.attr == attribute and isinstance(node.slice, ast.Constant)):
      keys.add(node.slice.value)
  return keys


def test_every_sam_counter_of_the_bank_is_in_the_schema():
  # The SAM feed puts the bank's counters into result.json as "sam/<counter>".
  counters = _string_keys(REPO / "sesam_jax" / "sam" / "bank.py", "stats")
  assert {"sent", "received", "stale", "missing"} <= counters
  for name in counters | {"images_with_sam_label", "in_flight", "bank_bytes"}:
    assert result.field(f"sam/{name}") is not None, name
  # And the refresh counter's (sesam_jax/sam/refresh.py), with result.json's sum of them.
  refreshes = RefreshCounter("strict", 4, 0.0)
  refreshes.note_ages([1, 2])
  for name in refreshes.summary():
    assert result.field(f"sam/{name}") is not None, name
  result.check({"sam_refresh": refreshes.result()})


def test_write_checks_first(tmp_path):
  with pytest.raises(ValueError, match="'oops'"):
    result.write(tmp_path, {"step": 1, "oops": 2})
  assert not (tmp_path / layout.RESULT).exists()
  result.write(tmp_path, {"step": 1})
  assert result.read(tmp_path) == {"step": 1}
