"""What a run sets before JAX starts: `jax.distributed.initialize`'s arguments from
`config.multihost`, JAX's share of a GPU shared with a PyTorch SAM bridge, and the GPU each
host's bridge is put on (CPU-level: what is set and what reaches the worker)."""

import os
import subprocess
import sys
from typing import NamedTuple

import ml_collections
import pytest

from sesam_jax import configs_common
from sesam_jax.sam import feed as sam_feed
from sesam_jax.sam import resolver
from sesam_jax.run import distributed

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _config(method="sesam", backend="random:vit_b", device="cuda", fraction=0.6):
  config = configs_common.base_config()
  config.method, config.weak = method, "points"
  config.sam.backend, config.sam.device, config.sam.gpu_memory_fraction = backend, device, fraction
  return config


def test_multihost_settings_become_initialize_arguments():
  config = configs_common.base_config()
  assert not distributed.Multihost.from_config(config).enabled
  assert distributed.initialize(config) is False  # Single process: JAX is left alone.
  config.multihost.coordinator_address = "10.0.0.1:1234"
  config.multihost.num_processes, config.multihost.process_id = 4, 3
  config.multihost.heartbeat_timeout_s = 7
  settings = distributed.Multihost.from_config(config)
  assert settings.enabled  # Naming peers turns it on.
  assert settings.initialize_kwargs() == dict(
      coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3,
      initialization_timeout=300, heartbeat_timeout_seconds=7, shutdown_timeout_seconds=300)
  # Only `enabled`: JAX detects the rest (TPU slice, SLURM, Open MPI, JAX_COORDINATOR_ADDRESS).
  auto = configs_common.base_config()
  auto.multihost.enabled = True
  assert set(distributed.Multihost.from_config(auto).initialize_kwargs()) == {
      "initialization_timeout", "heartbeat_timeout_seconds", "shutdown_timeout_seconds"}
  # A config.json written when `multihost` was a bool still reads.
  old = ml_collections.ConfigDict({"multihost": True})
  assert distributed.Multihost.from_config(old) == distributed.Multihost(enabled=True)


@pytest.mark.parametrize("kwargs, env", [
    ({}, {distributed.MEM_FRACTION: "0.6"}),
    ({"fraction": 0.45}, {distributed.MEM_FRACTION: "0.45"}),
    ({"fraction": 0.0}, {distributed.PREALLOCATE: "false"}),
    ({"backend": "transformers:/w/sam"}, {distributed.MEM_FRACTION: "0.6"}),
    ({"device": "cuda:1"}, {distributed.MEM_FRACTION: "0.6"}),
    ({"device": "cpu"}, {}),                   # the bridge is not on a GPU
    ({"backend": "oracle"}, {}),               # no torch model
    ({"backend": "jax-random:tiny"}, {}),      # the Flax SAM runs inside JAX's own memory
    ({"method": "supervised"}, {}),            # no SAM at all
])
def test_jax_gets_its_share_of_a_gpu_shared_with_the_sam_bridge(kwargs, env):
  assert distributed.gpu_memory_env(_config(**kwargs), environ={}) == env


def test_the_users_own_memory_setting_wins_and_bad_fractions_fail():
  for name in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_CLIENT_MEM_FRACTION",
               "XLA_PYTHON_CLIENT_PREALLOCATE"):
    environ = {name: "0.3"}
    assert distributed.gpu_memory_share(_config(), environ=environ) == {}
    assert environ == {name: "0.3"}
  environ = {}
  share = distributed.gpu_memory_share(_config(), environ=environ)
  assert share == {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.6"}
  assert environ == {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.6"}
  with pytest.raises(ValueError, match="gpu_memory_fraction"):
    distributed.gpu_memory_env(_config(fraction=1.5), environ={})


# The share must be in the environment before JAX's backend starts (XLA reads it then): a fresh
# `sesam train` process stops at `distributed.initialize`, the next thing `loop.train` does.
_ORDER = """
import os, sys
sys.path.insert(0, {repo!r})
from jax._src import xla_bridge
from sesam_jax.run import distributed
def stop(config):
  print("ENV", os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
        "STARTED", xla_bridge.backends_are_initialized(), flush=True)
  sys.exit(0)
distributed.initialize = stop
from sesam_jax import main
main.main(sys.argv[1:])
"""


def test_train_sets_the_share_before_jax_starts(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_PYTHON_CLIENT")}
  run = subprocess.run(
      [sys.executable, "-c", _ORDER.format(repo=REPO), "train",
       "--config=configs/segformer_synthetic.py:weak=points,method=sesam",
       f"--workdir={tmp_path / 'w'}", "--config.sam.backend=random:vit_b",
       "--config.sam.device=cuda", "--config.sam.gpu_memory_fraction=0.5"],
      cwd=REPO, env=dict(env, PYTHONPATH=REPO), capture_output=True, text=True, timeout=300)
  assert "ENV 0.5 STARTED False" in run.stdout, run.stderr[-2000:]
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.5" in run.stderr


class _Device(NamedTuple):
  platform: str
  local_hardware_id: int


def test_each_hosts_bridge_goes_on_its_own_gpu(monkeypatch):
  gpus = [_Device("gpu", 2), _Device("gpu", 3)]  # e.g. the 2nd pair of GPUs of a host
  assert resolver.local_gpu("cuda", gpus) == "cuda:2"
  assert resolver.local_gpu("cuda:0", gpus) == "cuda:0"  # an explicit GPU is kept
  assert resolver.local_gpu("cpu", gpus) == "cpu"
  assert resolver.local_gpu("cuda", [_Device("cpu", 0)]) == "cuda"  # JAX on CPU: torch's default
  # What the bridge's worker is given: the training config's "cuda" made this host's GPU.
  import jax
  monkeypatch.setattr(jax, "local_devices", lambda *a, **k: gpus)
  started = {}

  def fake_service(spec, *, backend_kwargs, **kwargs):
    started.update(spec=spec, **backend_kwargs)
    return object()

  monkeypatch.setattr(resolver, "RefineService", fake_service)
  config = _config()
  sam_feed.start_service(config, "/nonexistent")
  assert started["spec"] == "random:vit_b" and started["device"] == "cuda:2"


def test_auto_puts_a_torch_bridge_where_the_trainer_runs(monkeypatch, tmp_path):
  gpus = [_Device("gpu", 1)]
  device, where = resolver.auto_device("auto", "random:vit_b", gpus)
  assert device == "cuda:1" and "cuda:1" in where and "auto" in where
  assert resolver.auto_device("auto", "random:vit_b", [_Device("cpu", 0)])[0] == "cpu"
  assert "JAX's gpu devices" in resolver.auto_device("auto", "jax-random:tiny", gpus)[1]
  assert resolver.auto_device("cuda:0", "random:vit_b", gpus)[0] == "cuda:0"
  # Before JAX starts: a GPU host (an NVIDIA device node) shares the GPU under `auto`. (JAX may
  # have started in this test session already: the answer before it starts is what is tested.)
  monkeypatch.setattr(resolver.xla_bridge, "backends_are_initialized", lambda: False)
  (tmp_path / "nvidia0").touch()
  assert resolver.gpu_host(environ={}, dev=str(tmp_path))
  assert not resolver.gpu_host(environ={"JAX_PLATFORMS": "cpu"}, dev=str(tmp_path))
  assert not resolver.gpu_host(environ={}, dev=str(tmp_path / "none"))
  monkeypatch.setattr(resolver, "gpu_host", lambda: True)
  assert distributed.gpu_memory_env(_config(device="auto"), environ={}) == {
      distributed.MEM_FRACTION: "0.6"}
  monkeypatch.setattr(resolver, "gpu_host", lambda: False)
  assert distributed.gpu_memory_env(_config(device="auto"), environ={}) == {}


def test_a_reproduction_uses_the_flax_sam_on_an_accelerator_host(monkeypatch, tmp_path):
  monkeypatch.setattr(resolver.xla_bridge, "backends_are_initialized", lambda: False)
  assert resolver.accelerator_backend(environ={}, dev=str(tmp_path)) == "transformers"
  (tmp_path / "accel0").touch()  # A TPU host.
  assert resolver.accelerator_backend(environ={}, dev=str(tmp_path)) == "jax"
  (tmp_path / "accel0").unlink()
  (tmp_path / "nvidia0").touch()  # A GPU host.
  assert resolver.accelerator_backend(environ={}, dev=str(tmp_path)) == "jax"
  assert resolver.accelerator_backend(environ={"JAX_PLATFORMS": "cpu"},
                                      dev=str(tmp_path)) == "transformers"
