"""`sesam bench --what iteration` at toy sizes: both methods run, the JSON has the ratio, and
`--cache-dir` lets a second run reuse the first run's SAM embeddings (no encoding)."""

import json

import pytest

from sesam_jax import main as sesam_main


@pytest.mark.slow
def test_iteration_bench_reports_ratio_and_reuses_the_cache(capsys, tmp_path, shared_data):
  argv = ["bench", "--what", "iteration", "--data-dir", str(shared_data / "camvid"),
          "--model", "segformer_tiny", "--batch", "4", "--crop", "64", "--iterations", "1",
          "--warmup", "1", "--backend", "random:tiny", "--decoder-dtype", "bfloat16",
          "--cache-dir", str(tmp_path)]
  results = []
  for _ in range(2):
    assert sesam_main.main(argv) == 0
    results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
  first, second = results
  for r in results:
    assert r["fixmatch_seconds"] > 0 and r["sesam_seconds"] > 0
    assert r["ratio"] == pytest.approx(r["sesam_seconds"] / r["fixmatch_seconds"], rel=0.05)
    assert r["decoder_dtype"] == "bfloat16" and "decoder bfloat16" in r["backend"]
    assert r["encoder_seconds_per_image"] > 0  # The second run reports what its hits saved.
  assert len(list((tmp_path / "sam_embeddings").glob("*.npz"))) > 0
  assert second["encoder_seconds_fresh"] == 0.0 < first["encoder_seconds_fresh"]
