"""`sesam bench --what iteration` at toy sizes: both methods run through the training loop, the
JSON has the ratio, host seconds and SAM-label counts, and `--cache-dir` lets a second run reuse
the first run's SAM embeddings, and `--compile-cache-dir` its compiled steps."""

import json

import pytest

from sesam_jax import main as sesam_main


@pytest.mark.slow
def test_iteration_bench_reports_ratio_and_reuses_the_cache(capsys, tmp_path, shared_data):
  argv = ["bench", "--compile-cache-dir", str(tmp_path / "xla"), "--what", "iteration", "--data-dir", str(shared_data / "camvid"),
          "--model", "segformer_tiny", "--batch", "4", "--crop", "64", "--iterations", "2",
          "--warmup", "1", "--backend", "random:tiny", "--decoder-dtype", "float32",
          "--cache-dir", str(tmp_path), "--refresh", "async", "--view", "full"]
  results, cached = [], []
  for _ in range(2):
    assert sesam_main.main(argv) == 0
    results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    cached.append(sorted(p.name for p in tmp_path.glob("*.npz")))
  for r in results:
    assert r["fixmatch_seconds"] > 0 and r["sesam_seconds"] > 0
    assert r["ratio"] == pytest.approx(r["sesam_seconds"] / r["fixmatch_seconds"], rel=0.05)
    assert r["fixmatch_host_seconds"] >= 0 and r["sesam_host_seconds"] >= 0
    # Every timed example was pre-warmed: none is missing a SAM label.
    assert r["prewarmed_images"] == 4 * (1 + 2 + 2) and r["sam_missing"] == 0
    assert "random" in r["backend"]
    assert set(r["compile_seconds"]) == {"fixmatch", "sesam"}
    assert r["methods"]["sesam"]["compile_seconds"] == r["compile_seconds"]["sesam"] > 0
  # The second run's pre-warm found every embedding in the cache: no new entries.
  assert cached[0] and cached[1] == cached[0]
  # The second run loaded both steps from the compilation cache instead of compiling them.
  for name in ("fixmatch", "sesam"):
    assert results[1]["compile_seconds"][name] < results[0]["compile_seconds"][name]


def test_sam_view_bench_compares_the_crop_with_the_full_image(capsys, shared_data):
  argv = ["bench", "--what", "sam_view", "--data-dir", str(shared_data / "camvid"),
          "--images", "1", "--backends", "oracle", "--crop", "128"]
  assert sesam_main.main(argv) == 0
  r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["oracle"]
  # The oracle cuts its masks from the fine label: both views are right wherever they label.
  assert r["accuracy_full"] == r["accuracy_crop"] == 1.0 and r["agree_labelled"] == 1.0
  assert 0 < r["agree_union"] <= 1 and r["crop_s"] > 0 and r["full_cached_s"] > 0
