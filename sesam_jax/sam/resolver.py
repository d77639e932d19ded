"""One place that turns SAM settings into a running backend: `resolve()`, then `.service()`.

`sesam refine`, `sesam demo` and training all name SAM the same way (a backend spec, a weights
path, a device, dtypes) and get it checked here, before any work starts (weights files included:
`sam_bridge.weights` reads their names and shapes without torch, so a file that is not SAM
weights stops `sesam train` before it writes anything, and the trainer never imports torch).

The kinds are the rows of `BACKENDS`: sam_bridge's table (`sam_bridge.backends.KINDS`: oracle,
superpixel, random, transformers, segment_anything) and the Flax SAM's (`jax_backend.KINDS`:
jax, jax-random). A kind that needs weights takes them after ':' or from `checkpoint`
(`transformers` + checkpoint = `transformers:PATH`); a random one takes a variant (default
its first, vit_b).

PyTorch backends run in the bridge's worker process (`sam_bridge.service.RefineService`, built
there from the spec, so torch never loads in the trainer); JAX backends are built here and run
by a thread of this process (`sam_bridge.local_service.LocalRefineService`) with the same
`submit` / `get` / `in_flight` interface.

`decoder_dtype="auto"` picks bfloat16 for SAM's prompt decoder only where it is computed
natively (CUDA, TPU, or an x86 CPU with AVX512-BF16 or AMX), float32 elsewhere: on a CPU that
emulates bf16 the decoder runs ~3x slower in bf16 than in fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import os
from collections.abc import Mapping
from typing import Any

import jax
from jax._src import xla_bridge

from sam_bridge import backends, weights
from sam_bridge import refine_config as refine_schema
from sam_bridge.api import SamSetupError
from sam_bridge.backends import BackendKind
from sam_bridge.local_service import LocalRefineService
from sam_bridge.refine_config import RefineConfig
from sam_bridge.service import RefineService
from sesam_jax.models import attention as attention_lib
from sesam_jax.sam import jax_backend

# sesam_jax's table of backend kinds: sam_bridge's (PyTorch SAM, oracle, superpixel) and the
# Flax SAM's. Where each runs, whether it needs weights, what it is in reports: the rows say.
BACKENDS: dict[str, BackendKind] = {**backends.KINDS, **jax_backend.KINDS}

# How each command names the settings, for the fix hints of errors.
TRAIN_FLAGS = {"backend": "--config.sam.backend", "checkpoint": "--config.sam.checkpoint",
               "device": "--config.sam.device", "dtype": "--config.sam.dtype",
               "decoder_dtype": "--config.sam.decoder_dtype",
               "attention": "--config.sam.attention"}
CLI_FLAGS = {"backend": "--backend", "checkpoint": "--checkpoint", "device": "--device",
             "dtype": "--dtype", "decoder_dtype": "--decoder-dtype", "attention": "--attention"}


def needs_weights(backend: str) -> bool:
  """Whether the backend spec still needs `checkpoint` (a weights kind without a path after ':')."""
  kind, _, path = backend.partition(":")
  return kind in BACKENDS and BACKENDS[kind].weights == "checkpoint" and not path


def runs_on(backend: str) -> str:
  """Where the backend spec runs: "torch", "jax" or "numpy" (see BackendKind); "" if unknown."""
  kind = BACKENDS.get(backend.partition(":")[0])
  return kind.runs_on if kind else ""


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
  """Whether this x86 CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 flags)."""
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((line for line in f if line.startswith("flags")), "").split()
  except OSError:
    return False
  return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_decoder_dtype(device: str) -> tuple[str, str]:
  """(dtype, why) of the prompt decoder for `device` ("cpu", "cuda[:i]", "gpu", "tpu")."""
  if not device.startswith("cpu"):
    return "bfloat16", f"{device} computes bf16 natively"
  if cpu_has_native_bf16():
    return "bfloat16", "this CPU has AVX512-BF16/AMX"
  return "float32", "this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag): bf16 is emulated"


@dataclasses.dataclass(frozen=True)
class SamBackend:
  """A checked SAM choice.

  Attributes:
    spec: the backend spec ("random:vit_b", "transformers:/w", "jax:/w.msgpack", ...).
    kwargs: the backend's keywords (device, dtype, decoder_dtype where they apply).
    in_process: built in this process and run by a thread (JAX SAM), else in the bridge worker.
    decoder_note: what `decoder_dtype="auto"` chose and why ("" when not asked).
  """
  spec: str
  kwargs: Mapping[str, Any]
  in_process: bool
  decoder_note: str = ""
  checkpoint_flag: str = ""  # how the command names the weights, for errors at build time
  where: str = ""            # where it runs, in words (training's `sam.device`, for the log)

  @property
  def kind(self) -> str:
    return self.spec.partition(":")[0]

  @property
  def description(self) -> str:
    """The spec with what it is where that is not SAM's own weights (for logs and results)."""
    return BACKENDS[self.kind].describe(self.spec)

  def build(self) -> Any:
    """The backend object, in this process (PyTorch backends import torch here)."""
    with self._naming_the_flag():
      return backends.create_backend(self.spec, kinds=BACKENDS, **self.kwargs)

  @contextlib.contextmanager
  def _naming_the_flag(self):
    """Adds the command's weights flag to a `SamSetupError` raised while the backend is built."""
    try:
      yield
    except SamSetupError as e:
      if not self.checkpoint_flag or self.checkpoint_flag in str(e):
        raise
      raise SamSetupError(f"{e} ({self.checkpoint_flag})") from None

  def service(self, *, config: Any, seed: int = 0, max_pending: int = 8, timeout_s: float = 300.0,
              fallback: bool = False, cache: Any = None, torch_threads: int | None = 1) -> Any:
    """A running refine service for this backend (close it when done).

    Args:
      config: sam_bridge.refine.RefineConfig for every request.
      seed, max_pending, timeout_s, fallback, cache: as `RefineService`.
      torch_threads: torch CPU threads of the worker (PyTorch backends).
    """
    if self.in_process:
      return LocalRefineService(self.build(), config=config, seed=seed, max_pending=max_pending,
                                timeout_s=timeout_s, fallback=fallback, cache=cache)
    with self._naming_the_flag():  # The worker builds the backend; its SamSetupError lands here.
      return RefineService(self.spec, backend_kwargs=dict(self.kwargs), config=config, seed=seed,
                           max_pending=max_pending, timeout_s=timeout_s, fallback=fallback,
                           cache=cache, torch_threads=torch_threads)


def resolve(backend: str, checkpoint: str = "", *, device: str = "cpu", dtype: str = "float32",
            decoder_dtype: str = "auto", attention: str = "auto",
            flags: Mapping[str, str] = CLI_FLAGS, what: str = "this run") -> SamBackend:
  """Checks SAM settings and says how to run them.

  Args:
    backend: a spec ("oracle", "random:vit_b", "transformers", "jax:/w.msgpack", ...).
    checkpoint: weights (a directory or file) for backends that need them, unless the spec
      carries the path after its colon.
    device: torch device of PyTorch backends ("cpu", "cuda", "cuda:1").
    dtype: SAM compute dtype (float32 | bfloat16).
    decoder_dtype: prompt-decoder dtype: "auto", "" (= dtype), float32 or bfloat16.
    attention: the Flax SAM encoder's attention (`sesam_jax.models.attention.CHOICES`; "auto"
      is resolved where the encoder is built); PyTorch backends keep their own.
    flags: how the calling command names these settings (for error messages).
    what: who needs SAM, for the message when `backend` is "" (e.g. "method=sesam").

  Returns:
    A SamBackend.

  Raises:
    ValueError / FileNotFoundError: one line naming the setting and the fix; `SamSetupError`
      (a ValueError) for weights that cannot be SAM weights (`sam_bridge.weights`).
  """
  if not backend:
    b, c = flags["backend"], flags["checkpoint"]
    raise ValueError(
        f"{what} needs SAM and {b} is not set. Point it at SAM weights: {b}=transformers "
        f"{c}=/path/to/sam-vit-base (a transformers SAM folder) or {c}=/path/to/"
        f"sam_vit_b_01ec64.pth (the official weights; also {b}=segment_anything or jax). "
        f"{b}=superpixel runs a SAM-free prior instead (reported as such).")
  row = backends.lookup(backend, BACKENDS, flag=flags["backend"])
  kind, _, arg = backend.partition(":")
  for name, value in (("dtype", dtype), ("decoder_dtype", decoder_dtype)):
    if value not in ("float32", "bfloat16") + (("auto", "") if name == "decoder_dtype" else ()):
      raise ValueError(f"{flags[name]}={value!r}: choose float32 or bfloat16"
                       f"{' (or auto)' if name == 'decoder_dtype' else ''}.")
  if attention not in attention_lib.CHOICES:
    raise ValueError(f"{flags['attention']}={attention!r}: choose one of "
                     f"{', '.join(attention_lib.CHOICES)}.")
  if row.weights == "checkpoint":
    path = arg or checkpoint
    if not path:
      raise ValueError(f"{flags['backend']}={kind} needs SAM weights: give {flags['checkpoint']}"
                       "=/path/to/sam_vit_b_01ec64.pth (or a saved weights directory).")
    if not os.path.exists(path):
      raise FileNotFoundError(f"SAM weights {path} not found ({flags['checkpoint']}); give the "
                              "path of a sam_vit_*.pth, a converted .msgpack or a weights "
                              "directory.")
    # What the file holds, read without torch (names and shapes only): a file that is not SAM
    # weights stops every command here, before it writes anything.
    weights.check_weights(path, kind, flag=flags["checkpoint"])
    spec = f"{kind}:{os.path.abspath(path)}"
  elif row.weights == "random":
    spec = f"{kind}:{arg or row.variants[0]}"
    if spec.partition(":")[2] not in row.variants:
      raise ValueError(f"{flags['backend']}={backend!r}: unknown random SAM variant; choose "
                       f"{', '.join(f'{kind}:{v}' for v in row.variants)}.")
  else:
    spec = backend
  kwargs: dict[str, Any] = {}
  if "device" in row.options:
    kwargs["device"] = device
  if "dtype" in row.options:
    kwargs["dtype"] = dtype
  if "attention" in row.options:
    kwargs["attention"] = attention
  note = ""
  if "decoder_dtype" in row.options:
    if decoder_dtype == "auto" and row.runs_on == "jax" and _jax_platform() == "cpu":
      # XLA:CPU computes bf16 dots no faster than fp32 (measured: Flax decoder 71 vs 68 ms).
      decoder_dtype, note = "float32", (f"SAM prompt decoder in float32 (XLA on CPU gains nothing "
                                        f"from bf16; {flags['decoder_dtype']} overrides)")
    elif decoder_dtype == "auto":
      where = device if row.runs_on == "torch" else _jax_platform()
      decoder_dtype, why = auto_decoder_dtype(where)
      note = f"SAM prompt decoder in {decoder_dtype} ({why}; {flags['decoder_dtype']} overrides)"
    if decoder_dtype:
      kwargs["decoder_dtype"] = decoder_dtype
  return SamBackend(spec, kwargs, in_process=row.runs_on == "jax", decoder_note=note,
                    checkpoint_flag=flags["checkpoint"] if row.weights == "checkpoint" else "")


def _jax_platform() -> str:
  return jax.local_devices()[0].platform


def local_gpu(device: str, local_devices: Any = None) -> str:
  """The torch device of this host's bridge: "cuda" becomes the GPU JAX uses on this host.

  In a multi-host run every host starts its own bridge with the same config; "cuda" (no index)
  puts each one on its host's first JAX GPU (`cuda:<local_hardware_id>`, the index torch sees
  too), beside the student it serves. Any other device ("cpu", "cuda:1") is kept as given.

  Args:
    device: `sam.device`.
    local_devices: this process's JAX devices (default `jax.local_devices()`; starts JAX's
      backend, so the GPU memory share must be set before).
  """
  if device != "cuda":
    return device
  if local_devices is None:
    local_devices = jax.local_devices()
  gpus = [d for d in local_devices if d.platform == "gpu"]
  return f"cuda:{gpus[0].local_hardware_id}" if gpus else device


def gpu_host(environ: Mapping[str, str] | None = None, dev: str = "/dev") -> bool:
  """Whether JAX will train on an NVIDIA GPU here, answered without starting JAX's backend.

  Once the backend is up its devices say; before (JAX's GPU memory share must be set first),
  an NVIDIA device node and a `JAX_PLATFORMS` that does not rule out CUDA do.
  """
  if xla_bridge.backends_are_initialized():
    return any(d.platform == "gpu" for d in jax.local_devices())
  environ = os.environ if environ is None else environ
  platforms = environ.get("JAX_PLATFORMS", "").lower()
  if platforms and not any(p in platforms for p in ("cuda", "gpu")):
    return False
  return bool(glob.glob(os.path.join(dev, "nvidia[0-9]*")))


def accelerator_backend(environ: Mapping[str, str] | None = None, dev: str = "/dev") -> str:
  """The SAM backend kind a paper reproduction uses here: the Flax SAM (`jax`, on the trainer's
  own devices) on a GPU or TPU host, the PyTorch SAM of the bridge (`transformers`) elsewhere.

  Answered without starting JAX's backend, as `gpu_host`; a TPU host shows `/dev/accel*`.
  """
  environ = os.environ if environ is None else environ
  tpu = "tpu" in environ.get("JAX_PLATFORMS", "").lower() or bool(
      glob.glob(os.path.join(dev, "accel[0-9]*")))
  return "jax" if tpu or gpu_host(environ, dev) else "transformers"


def auto_device(device: str, backend: str, local_devices: Any = None) -> tuple[str, str]:
  """(torch device, where SAM runs in words) for `sam.device` and a backend spec.

  "auto" (the default) runs SAM where the trainer runs: a PyTorch backend on the GPU JAX uses
  on this host (`local_gpu("cuda")`), the CPU only where JAX has no GPU (a TPU host's torch
  has no TPU: the Flax SAM, `sam.backend=jax`, runs there); a JAX backend on the trainer's own
  devices; numpy backends (oracle, superpixel) on the CPU whatever the device.

  Args:
    device: `sam.device` ("auto", "cpu", "cuda", "cuda:N").
    backend: the backend spec.
    local_devices: this process's JAX devices (default `jax.local_devices()`).
  """
  where = runs_on(backend)
  if where == "jax":
    devices = local_devices if local_devices is not None else jax.local_devices()
    return device, f"in this process on JAX's {devices[0].platform} devices (the trainer's)"
  if where != "torch":
    return device, "on the CPU (numpy)"
  if device == "auto":
    devices = local_devices if local_devices is not None else jax.local_devices()
    gpu = local_gpu("cuda", devices)
    device = gpu if gpu != "cuda" else "cpu"
    why = "the GPU JAX uses here" if device != "cpu" else "no GPU on this host"
    return device, f"in the bridge process on {device} (sam.device=auto: {why})"
  device = local_gpu(device, local_devices)
  return device, f"in the bridge process on {device}"


def from_config(sam: Any, what: str = "this run") -> SamBackend:
  """`resolve()` for a training config's `sam` group (messages name `--config.sam.*`); the
  bridge goes where the trainer runs (`auto_device`), which `SamBackend.where` says."""
  device, where = sam.device, ""
  if sam.backend:
    device, where = auto_device(sam.device, sam.backend)
  backend = resolve(sam.backend, sam.checkpoint, device=device, dtype=sam.dtype,
                    decoder_dtype=sam.decoder_dtype, attention=sam.get("attention", "auto"),
                    flags=TRAIN_FLAGS, what=what)
  return dataclasses.replace(backend, where=where)


def refine_config(config: Any, **overrides: Any) -> RefineConfig:
  """The sam_bridge RefineConfig of a training config: its `config.sam` settings (every
  RefineConfig field the schema keeps there) and `config.weak` as the weak kind."""
  weak_kind = "coarse" if config.weak == "fine" else config.weak
  return refine_schema.from_config(config.sam, **{"weak_kind": weak_kind, **overrides})
