"""Smoke tests of the model benchmarks' command lines (slow: they compile a
whole training step; the figures themselves are in docs/benchmarks.md)."""

import json

import pytest

from sesam_jax import main as sesam_main


@pytest.mark.slow
def test_train_step_bench_prints_the_ratio(capsys):
  assert sesam_main.main(["bench", "--what", "train-step", "--models", "segformer_tiny",
                          "--batch", "1", "--crop", "32", "--reps", "1", "--warmup", "0"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["segformer_tiny_seconds"] > 0 and result["torch_segformer_b0_seconds"] > 0


@pytest.mark.slow
def test_parity_bench_on_tiny_variants(capsys):
  assert sesam_main.main(["bench", "--what", "parity", "--segformer", "tiny",
                          "--resnet", "tiny", "--no-bf16"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["segformer_fp32_max_abs_diff"] < 1e-4
  assert result["resnet_fp32_max_abs_diff"] < 1e-4
