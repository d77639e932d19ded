"""`sesam bench --what sam_agreement`: the counts on hand-made maps, and a tiny end-to-end run."""

import json
import math

import numpy as np

from sesam_jax import main as sesam_main
from sesam_jax.bench import sam_agreement

U = 255  # Unlabelled.


def _shares(fp32, bf16, weak, fine):
  arrays = [np.array(a, np.uint8) for a in (fp32, bf16, weak, fine)]
  return sam_agreement.summarize(sam_agreement.label_counts(*arrays))


def test_identical_maps_agree_fully():
  fp32 = [[1, 1, U], [2, 2, 3]]
  r = _shares(fp32, fp32, [[1, U, U], [U, U, U]], [[1, 2, 2], [2, 2, 3]])
  assert r["agreement"] == 1.0 and r["agreement_added"] == 1.0
  assert r["both_same"] == r["either"] == r["fp32_labelled"] == 5 and r["both_differ"] == 0
  assert r["precision_fp32"] == r["precision_bf16"] == 4 / 5 and r["precision_weak"] == 1.0


def test_disjoint_maps_agree_nowhere():
  fp32 = [[1, 1, U, U], [U, U, U, U]]
  bf16 = [[U, U, 2, 2], [3, 3, 3, 3]]
  r = _shares(fp32, bf16, [[U] * 4] * 2, [[U] * 4] * 2)
  assert r["agreement"] == 0.0 and r["agreement_added"] == 0.0 and r["either"] == 8
  # Nothing labelled where the fine label is known, nothing weak: undefined, not 0 or 1.
  assert math.isnan(r["precision_fp32"]) and math.isnan(r["precision_weak"])
  # Both labelled everywhere with different classes: also no agreement.
  r = _shares([[1, 1]], [[2, 2]], [[U, U]], [[1, 2]])
  assert r["agreement"] == 0.0 and r["both_differ"] == 2 and r["precision_bf16"] == 0.5


def test_partial_overlap_gives_the_exact_share():
  fp32 = [[1, 1, 1, U], [2, 2, U, U]]   # 5 labelled
  bf16 = [[1, 1, 4, 4], [2, U, U, 5]]   # 6 labelled; same class at (0,0) (0,1) (1,0)
  weak = [[1, U, U, U], [U, U, U, U]]   # the weak pixel (0,0) is shared by construction
  fine = [[1, 1, 4, U], [2, 2, 2, 5]]   # (0,3) unknown
  r = _shares(fp32, bf16, weak, fine)
  # Either labels 7 pixels ((1,2) is labelled by neither); 3 with the same class in both,
  # (0,2) in both with different classes.
  assert r["either"] == 7 and r["both_same"] == 3 and r["both_differ"] == 1
  assert r["agreement"] == 3 / 7
  assert r["added_either"] == 6 and r["agreement_added"] == 2 / 6
  # fp32: 5 labelled, all known, right at (0,0) (0,1) (1,0) (1,1) = 4/5; bf16: known 5 of its
  # 6 ((0,3) unknown), right at (0,0) (0,1) (0,2) (1,0) (1,3) = 5/5.
  assert r["precision_fp32"] == 4 / 5 and r["precision_bf16"] == 1.0


def test_mismatched_shapes_are_refused():
  a = np.zeros((2, 3), np.uint8)
  try:
    sam_agreement.label_counts(a, np.zeros((3, 2), np.uint8), a, a)
  except ValueError as e:
    assert "bf16" in str(e)
  else:
    raise AssertionError("a bf16 map of another shape was accepted")


def test_bench_runs_end_to_end_on_the_tiny_sam(capsys, shared_data, tmp_path):
  record = tmp_path / "runs.jsonl"
  argv = ["bench", "--record", str(record), "--what", "sam_agreement",
          "--data-dir", str(shared_data / "camvid"), "--images", "1",
          "--backend", "jax-random:tiny"]
  assert sesam_main.main(argv) == 0
  captured = capsys.readouterr()
  r = json.loads(captured.out.strip().splitlines()[-1])
  assert "| image | fp32 labelled" in captured.err  # The table.
  assert r["images"] == 1 and len(r["per_image"]) == 1 and "random weights" in r["backend"]
  o = r["overall"]
  # Counts are consistent: the union is both maps minus their overlap.
  assert o["either"] == (o["fp32_labelled"] + o["bf16_labelled"] - o["both_same"]
                         - o["both_differ"])
  assert o["agreement"] == o["both_same"] / o["either"]
  assert 0.0 <= o["agreement_added"] <= o["agreement"] <= 1.0
  # Refinement keeps every weak pixel: the coarse label (cut from the fine one) is all right.
  assert o["precision_weak"] == 1.0 and o["weak_known"] > 0
  assert o["both_same"] >= o["weak_known"]
  assert o["prompt_sets"] > 0 and 0 <= o["same_choice"] <= o["prompt_sets"]
  assert r["fp32_repeat"]["differing_pixels"] == 0  # Same dtype twice: the same label.
  assert set(r["refine_s"]) == {"float32", "bfloat16"} and r["decoder_dtype"] == "float32"
  saved = json.loads(record.read_text().splitlines()[-1])
  assert saved["bench"] == "sam_agreement" and saved["result"]["overall"] == o
