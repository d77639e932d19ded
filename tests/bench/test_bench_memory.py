"""`sesam bench --what memory`: XLA's memory analysis of the SeSAM step, per device.

The paper-scale figures take minutes to compile (docs/benchmarks.md); here a tiny student at a
small crop is compiled for 1 and 8 (fake CPU) devices in one subprocess, since the test session's
own jax already has its 4 devices.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from sesam_jax import main as sesam_main

REPO = pathlib.Path(__file__).resolve().parents[2]

# Registers a two-conv student (fast to compile) and runs the benchmark in-process on 1 and 8
# devices, executing the step once too (--run on: the GPU path, here on CPU).
SCRIPT = """
import json, sys
import flax.linen as nn
import jax.numpy as jnp
from sesam_jax import models
from sesam_jax.bench import memory

class Tiny(nn.Module):
  num_classes: int
  dtype: object = jnp.float32
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (3, 3), strides=(4, 4), dtype=self.dtype, name="backbone")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name="backbone_bn")(x))
    return nn.Conv(self.num_classes, (1, 1), name="decode_head")(x).astype(jnp.float32)

models.MODELS["tiny_test"] = lambda num_classes, dtype, **kw: Tiny(num_classes, dtype=dtype)
import argparse
parser = argparse.ArgumentParser()
memory.add_arguments(parser)
args = parser.parse_args(["--cases", "tiny_test:8", "--crop", "32", "--dtypes", "bf16",
                          "--devices", "1,8", "--no-isolate", "--run", "on", "--steps", "1"])
print(json.dumps(memory.run(args)))
"""


def test_eight_devices_need_less_memory_per_device_than_one():
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                        timeout=300, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  one, eight = (result["cases"][f"tiny_test_b8_bf16_{n}dev"] for n in (1, 8))
  assert "estimate" in result["note"] and one["estimate"] and one["backend"] == "cpu"
  for case in (one, eight):
    for key in ("params_gib", "ema_gib", "opt_state_gib", "batch_gib", "argument_gib",
                "output_gib", "temp_gib", "total_gib", "step_seconds"):
      assert case[key] > 0, (key, case)
    # Donated: the new state is written over the old one.
    assert case["alias_gib"] > 0.9 * case["params_gib"] * 4
  assert (one["per_device_batch"], eight["per_device_batch"]) == (8, 1)
  # The state is replicated (the same on every device); the batch and activations are split.
  assert eight["params_gib"] == one["params_gib"] and eight["opt_state_gib"] == one["opt_state_gib"]
  assert eight["batch_gib"] == pytest.approx(one["batch_gib"] / 8, rel=0.01)
  assert eight["argument_gib"] < one["argument_gib"]
  assert eight["temp_gib"] < one["temp_gib"]
  assert eight["total_gib"] < one["total_gib"]
  assert "| tiny_test bf16 crop 32 | 8 | 1 |" in result["table"]


@pytest.mark.slow
def test_memory_command_records_a_real_student(tmp_path, capsys):
  record = tmp_path / "runs.jsonl"
  assert sesam_main.main(["bench", "--what", "memory", "--cases", "segformer_tiny:2", "--crop",
                          "64", "--dtypes", "fp32", "--devices", "1,2", "--record",
                          str(record)]) == 0  # Isolated: each count in its own process.
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  one, two = (result["cases"][f"segformer_tiny_b2_fp32_{n}dev"] for n in (1, 2))
  assert two["total_gib"] < one["total_gib"] and one["compile_seconds"] > 0
  assert json.loads(record.read_text())["result"]["cases"].keys() == result["cases"].keys()
