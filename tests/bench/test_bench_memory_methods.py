"""`sesam bench --what memory/iteration`: the methods and settings options, without compiling."""

import argparse

import pytest

from sesam_jax import configs_common
from sesam_jax.bench import iteration, memory, memory_methods
from sesam_jax.run import compile_cache


def _memory_args(*argv):
  parser = argparse.ArgumentParser()
  memory.add_arguments(parser)
  return parser.parse_args(list(argv))


def test_settings_fill_in_the_paper_cases_and_methods():
  args = _memory_args("--setting", "table6")
  memory_methods.apply_setting(args)
  assert (args.cases, args.crop, args.dtypes, args.num_classes) == (
      "deeplabv3plus_r101:4", 1024, "bf16", 19)
  assert memory_methods.parse_methods(args.method) == ["fixmatch", "agmm", "agmm_naive", "sesam"]
  args = _memory_args("--setting", "ade20k", "--method", "agmm")
  memory_methods.apply_setting(args)
  assert (args.num_classes, args.crop, args.method) == (150, 512, "agmm")
  args = _memory_args()
  memory_methods.apply_setting(args)
  assert args.method == "sesam" and args.crop == 1024
  with pytest.raises(ValueError, match="agmm_naive"):
    memory_methods.parse_methods("fixmatch,agm")


def test_naive_variant_and_the_comparison_with_fixmatch():
  name, config = memory_methods.step_config("agmm_naive", configs_common.base_config())
  assert name == "agmm" and config.agmm.class_chunk == 0
  # B x K x C x (crop/4)^2 float32: ADE20K, R101 decoder (256 channels), batch 8, crop 512.
  assert memory_methods.broadcast_gib("deeplabv3plus_r101", 150, 8, 512) == pytest.approx(18.75)
  assert memory_methods.feature_channels("segformer_b0") == 256
  cases = {"m_b4__fixmatch": {"total_gib": 10.0}, "m_b4__agmm": {"total_gib": 10.5},
           "m_b4__sesam": {"total_gib": None}}
  assert memory_methods.compare(cases) == {"m_b4": {"fixmatch": 1.0, "agmm": 1.05}}


def test_iteration_setting_and_methods():
  parser = argparse.ArgumentParser()
  iteration.add_arguments(parser)
  args = iteration.resolve(parser.parse_args(["--setting", "table6", "--batch", "2"]))
  assert (args.model, args.dtype, args.crop, args.batch, args.dataset) == (
      "deeplabv3plus_r101", "bfloat16", 1024, 2, "cityscapes")
  args = iteration.resolve(parser.parse_args([]))
  assert (args.model, args.crop, args.dataset, args.methods) == (
      "segformer_b0", 512, "camvid", "fixmatch,sesam")
  assert iteration.parse_methods("sesam,agmm") == ["fixmatch", "sesam", "agmm"]
  # The timed runs keep the compilation cache `sesam bench --compile-cache-dir` set up.
  assert iteration._config(args, "fixmatch", "").compile_cache_dir == compile_cache.current()
  with pytest.raises(ValueError, match="--methods"):
    iteration.parse_methods("agmm,nope")
