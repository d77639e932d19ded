"""`sesam bench --what bank` on a tiny generated split: the figures it prints are real."""

import json

import numpy as np

from sesam_jax import main as sesam_main
from sesam_jax.bench import bank


def test_bank_bench_prints_bytes_per_image_and_peak_rss(capsys):
  argv = ["bench", "--what", "bank", "--images", "12", "--size", "96", "192", "--distinct", "4",
          "--crop", "64", "--batch", "4", "--weak-cache-mb", "1", "--image-cache-mb", "1"]
  assert sesam_main.main(argv) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["images"] == 12 and result["raw_bytes_per_image"] == 2 * 96 * 192
  assert 0 < result["bank_bytes_per_image"] < result["raw_bytes_per_image"] / 4
  assert result["bank_bytes_per_image"] == (result["label_bytes_per_image"]
                                            + result["extension_bytes_per_image"])
  assert result["peak_rss_mb"] >= result["rss_after_fill_mb"] > 0
  assert result["weak_cache_mb"] <= 1 and result["image_cache_mb"] <= 1  # Bounded as asked.
  assert result["checkpoint_item_mb"] > 0 and result["set_state_seconds"] >= 0


def test_generated_scenes_look_like_streets():
  label = bank.street_label(0, (256, 512))
  classes = set(np.unique(label).tolist())
  assert {bank.ROAD, bank.SKY, bank.BUILDING, bank.CAR} <= classes <= set(range(19)) | {255}
  ext = bank.extension_of(label, 0)
  sure = ext != 255
  assert 0.1 < sure.mean() < 0.9 and np.array_equal(ext[sure], label[sure])
  np.testing.assert_array_equal(label, bank.street_label(0, (256, 512)))  # Deterministic.
