"""Before JAX starts: its multi-controller runtime (`config.multihost`) and its share of a GPU.

Multi-host runs use JAX's own runtime, nothing else: every host runs the same `sesam train`
command (one process per host), and `initialize(config)` calls `jax.distributed.initialize` with
the coordinator's address, the process count and this process's index from `config.multihost`
(each left empty is detected by JAX: a TPU slice, SLURM, Open MPI, `JAX_COORDINATOR_ADDRESS`),
and with its three timeouts:

  initialization_timeout_s  how long a process waits for every other one to join;
  heartbeat_timeout_s       a process that stops sending heartbeats (killed, its host gone) is
                            declared dead after this long, and JAX's coordination service ends
                            every other process ("Terminating process because the JAX
                            distributed service detected fatal errors ... another task died");
  shutdown_timeout_s        how long a process that finishes (or fails) waits at exit for the
                            others, after which they stop the same way.
So a run whose process dies never hangs: the others stop within about `heartbeat_timeout_s`, and
the same command on every host resumes from the last checkpoint. Collectives between processes
on CPU go through gloo (jax's default `jax_cpu_collectives_implementation`); on GPU, NCCL; on
TPU, the interconnect.

A PyTorch SAM bridge on the GPU JAX trains on shares that card's memory. JAX takes 75% of a GPU
when its backend starts, so `gpu_memory_share(config)` gives it `config.sam.gpu_memory_fraction`
instead (`XLA_PYTHON_CLIENT_MEM_FRACTION`; 0 = allocate on demand,
`XLA_PYTHON_CLIENT_PREALLOCATE=false`). XLA reads these variables once, when the backend
starts, so the loop applies them before anything touches a device; a value the user set in the
environment is kept.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import MutableMapping
from typing import Any

import jax
from jax._src import xla_bridge  # Where jax keeps its backends.

from sesam_jax import report
from sesam_jax.names import SAM_METHODS
from sesam_jax.sam import resolver

MEM_FRACTION = "XLA_PYTHON_CLIENT_MEM_FRACTION"
PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"
# Variables by which a user already chose JAX's GPU memory (XLA_CLIENT_MEM_FRACTION: newer name).
_USER_MEMORY_VARS = (MEM_FRACTION, "XLA_CLIENT_MEM_FRACTION", PREALLOCATE)


class DistributedError(report.UserError):
  """The processes of a multi-host run could not start together; the message says why."""


@dataclasses.dataclass(frozen=True)
class Multihost:
  """`config.multihost` (see configs_common.base_config for the fields)."""
  enabled: bool = False
  coordinator_address: str = ""
  num_processes: int = 0
  process_id: int = -1
  initialization_timeout_s: int = 300
  heartbeat_timeout_s: int = 100
  shutdown_timeout_s: int = 300

  @classmethod
  def from_config(cls, config: Any) -> "Multihost":
    """Reads `config.multihost`: a group, or the bool of configs written before it was one."""
    group = config.get("multihost", False)
    if isinstance(group, bool):
      return cls(enabled=group)
    fields = {f.name: group[f.name] for f in dataclasses.fields(cls) if f.name in group}
    settings = cls(**fields)
    if settings.num_processes > 1 or settings.coordinator_address:
      settings = dataclasses.replace(settings, enabled=True)  # Asking for peers turns it on.
    return settings

  def initialize_kwargs(self) -> dict[str, Any]:
    """The keywords of `jax.distributed.initialize` (unset ones left for JAX to detect)."""
    kwargs: dict[str, Any] = dict(
        initialization_timeout=int(self.initialization_timeout_s),
        heartbeat_timeout_seconds=int(self.heartbeat_timeout_s),
        shutdown_timeout_seconds=int(self.shutdown_timeout_s))
    if self.coordinator_address:
      kwargs["coordinator_address"] = self.coordinator_address
    if self.num_processes > 0:
      kwargs["num_processes"] = int(self.num_processes)
    if self.process_id >= 0:
      kwargs["process_id"] = int(self.process_id)
    return kwargs


def initialize(config: Any) -> bool:
  """`jax.distributed.initialize` once per process when `config.multihost` asks for it.

  Call it before anything uses a device (JAX refuses afterwards).

  Returns:
    Whether this process is part of a multi-process run.

  Raises:
    DistributedError: the processes could not join (one line naming the fields to check).
  """
  settings = Multihost.from_config(config)
  if not settings.enabled:
    return False
  if jax.distributed.is_initialized():
    return True
  kwargs = settings.initialize_kwargs()
  who = (f"process {kwargs.get('process_id', '(detected)')} of "
         f"{kwargs.get('num_processes', '(detected)')}")
  where = kwargs.get("coordinator_address", "the detected coordinator")
  # JAX ends the process itself (no exception) when the coordinator cannot be reached in time:
  # this line is what tells the user which setting to look at.
  report.log(f"multi-host: {who} joining {where}, waiting up to "
             f"{settings.initialization_timeout_s} s for every process "
             "(--config.multihost.initialization_timeout_s)")
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError, TypeError) as e:  # Bad settings; XlaRuntimeError included.
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise DistributedError(
        f"multi-host start failed ({first}); check --config.multihost.coordinator_address "
        f"(now {where!r}), num_processes and process_id, and start every process within "
        f"--config.multihost.initialization_timeout_s={settings.initialization_timeout_s} s of "
        "the first.") from None
  report.log(f"multi-host: process {jax.process_index()} of {jax.process_count()}, "
             f"{jax.local_device_count()} of {jax.device_count()} devices here; if a process "
             f"dies, JAX stops the others within ~{settings.heartbeat_timeout_s} s "
             "(--config.multihost.heartbeat_timeout_s); then run the same command on every "
             "host to resume from the last checkpoint")
  return True


def bridge_shares_gpu(config: Any) -> bool:
  """Whether the run starts a PyTorch SAM bridge on a GPU (the one JAX may train on): `cuda...`,
  or `auto` on a host with a GPU (`resolver.gpu_host`, asked without starting JAX)."""
  sam = config.get("sam")
  # The method table (`sesam_jax.methods`, a layer above) keeps its SAM rows equal to these.
  if sam is None or config.method not in SAM_METHODS:
    return False
  if resolver.runs_on(sam.backend) != "torch":
    return False
  # `auto` puts a PyTorch bridge on the GPU JAX uses, where the host has one.
  return str(sam.device).startswith("cuda") or (sam.device == "auto" and resolver.gpu_host())


def gpu_memory_env(config: Any, environ: MutableMapping[str, str] | None = None
                   ) -> dict[str, str]:
  """The XLA variables that give JAX its share of a GPU shared with the SAM bridge.

  Args:
    config: the training config (`sam.backend`, `sam.device`, `sam.gpu_memory_fraction`).
    environ: the environment to respect (default: os.environ): a memory variable set there wins.

  Returns:
    {name: value} to set: {} when the bridge does not share a GPU or the user chose already.
  """
  environ = os.environ if environ is None else environ
  if not bridge_shares_gpu(config) or any(environ.get(v) for v in _USER_MEMORY_VARS):
    return {}
  fraction = float(config.sam.get("gpu_memory_fraction", 0.6))
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"--config.sam.gpu_memory_fraction={fraction}: give JAX's share of the GPU, "
                     "between 0 (allocate on demand) and 1 (exclusive), e.g. 0.6.")
  if fraction == 0.0:
    return {PREALLOCATE: "false"}
  return {MEM_FRACTION: f"{fraction:g}"}


def gpu_memory_share(config: Any, environ: MutableMapping[str, str] | None = None
                     ) -> dict[str, str]:
  """Sets `gpu_memory_env(config)` in `environ` (default os.environ) before JAX's backend starts.

  Returns:
    What was set ({} if nothing).
  """
  environ = os.environ if environ is None else environ
  if bridge_shares_gpu(config):
    kept = {v: environ[v] for v in _USER_MEMORY_VARS if environ.get(v)}
    if kept:
      report.log("JAX's GPU memory: " + ", ".join(f"{k}={v}" for k, v in kept.items()) +
                 " from the environment (--config.sam.gpu_memory_fraction not applied)")
  env = gpu_memory_env(config, environ)
  if not env:
    return env
  if xla_bridge.backends_are_initialized():
    report.log(f"note: JAX's devices are already up, so {env} cannot take effect in this "
               "process; set it in the environment before starting it")
  environ.update(env)
  report.log("JAX's GPU memory: " + ", ".join(f"{k}={v}" for k, v in env.items()) +
             f" (the SAM bridge shares the GPU on {config.sam.device}; "
             "--config.sam.gpu_memory_fraction)")
  return env
