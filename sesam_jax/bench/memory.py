"""`sesam bench --what memory`: memory per device of the SeSAM train step, at the paper's scale.

For each student x dtype x device count the step (EMA teacher forward on the weak view,
pseudo-labels, strong augmentation, student forward and backward over the weak, SAM and
pseudo label maps, AdamW, EMA update; state donated) is lowered on abstract inputs
(`jax.ShapeDtypeStruct` with the run's shardings: nothing is allocated) and compiled, and
XLA's own memory analysis of the compiled step is read:

  arguments  the state (student, EMA teacher, optimizer moments, batch-norm statistics,
             replicated: every device holds all of it) + this device's share of the batch
  outputs    the new state (+ metrics, the teacher's confident map)
  alias      outputs written in place of donated arguments (counted once)
  temp       everything else live during the step: activations kept for the backward pass,
             the teacher's logits, the label maps upsampled to the crop, gradients
  total      arguments + outputs - alias + temp + generated code, per device

On a CPU these are XLA:CPU's figures for the same program, an estimate of what a GPU would
need, not a GPU measurement (XLA:GPU fuses and schedules differently). On a GPU, `--run`
(default there) also executes the step and reads the device's peak bytes in use, the
measurement itself, and times a few steps.

Default cases are the paper's: DeepLabV3+-R101 at crop 1024, batch 4 (Table 6: 22.7 GB with
SeSAM) and SegFormer-B0 at crop 1024, batch 8; fp32 and bf16 compute; 1 device and 8 (a
device count above the global batch is lowered to the batch: one example per device). Each
measurement runs in its own process (`--isolate`): a device count this host lacks is
simulated there with `--xla_force_host_platform_device_count` (CPU devices), and each GPU
peak is that measurement's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sesam_jax import configs_common, methods, report
from sesam_jax.bench import memory_methods, memory_peak
from sesam_jax.models import MODELS, create_model
from sesam_jax.models.attention import resolve_attention
from sesam_jax.train import optim, train_state, train_step as step_lib

GIB = 2 ** 30
DEFAULT_CASES = "deeplabv3plus_r101:4,segformer_b0:8"
# Memory goals, GiB per device: (model, dtype or None for any) -> bound. DeepLabV3+ R101 must fit
# in the paper's 22.7 GB (Table 6); SegFormer-B0 in bf16 in a 16 GiB card.
GOALS_GIB = {("segformer_b0", "bf16"): 16.0, ("deeplabv3plus_r101", None): 22.7}
PAPER_GB = {"deeplabv3plus_r101": 22.7}  # Table 6, SeSAM, crop 1024, batch 4 (GPU memory)
# Model forms (see sesam_jax.models.mit): what a GPU runs, or the CPU fast paths.
IMPLS = {"gpu": {"dwconv_impl": "lax", "attention": "full"},
         "cpu": {"dwconv_impl": "shift", "attention": "chunked"}}
# measure()'s fields that `case_key` and the run's own fields already say.
CASE_FIELDS = ("model", "batch", "crop", "dtype", "devices", "method", "device_kind")
NOTE_CPU = ("XLA:CPU's compiled memory analysis of the step: an estimate of the memory a GPU "
            "would need, not a GPU measurement")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--cases", default=DEFAULT_CASES, metavar="MODEL:BATCH,...",
                      help="students and global batches (default: the paper's settings)")
  parser.add_argument("--crop", type=int, default=1024, help="square training crop, pixels")
  parser.add_argument("--dtypes", default="fp32,bf16", help="compute dtypes: fp32, bf16")
  parser.add_argument("--devices", default="1,8",
                      help="device counts (per-device figures); a count above the batch "
                           "becomes the batch")
  parser.add_argument("--method", default=None,
                      help="the step(s) compiled, comma-separated (default sesam, or the "
                           "--setting's): "
                           f"{', '.join(memory_methods.METHODS)} (supervised: no teacher, one "
                           "label map; agmm_naive: AGMM without class chunks)")
  parser.add_argument("--setting", default=None, choices=tuple(memory_methods.SETTINGS),
                      help="the paper's cases (sets --cases, --crop, --dtypes, --devices, "
                           "--num-classes and, unless given, --method): table6 = Table 6, "
                           "ade20k = 150 classes")
  parser.add_argument("--num-classes", type=int, default=19, help="Cityscapes: 19")
  parser.add_argument("--impl", default="gpu", choices=("gpu", "cpu", "auto"),
                      help="SegFormer forms: gpu = lax depthwise conv, unchunked attention (what "
                           "a GPU runs, default); cpu = the CPU fast paths; auto = this backend's")
  parser.add_argument("--query-chunk", type=int, default=None,
                      help="SegFormer attention query chunk (0 = off, -1 = cuDNN's fused attention on a "
                           "GPU in bf16), overriding --impl's "
                           "(chunks are recomputed in the backward pass, so the attention "
                           "weights are never kept whole)")
  parser.add_argument("--attention", default=None,
                      help="SegFormer attention implementation (chunked, full, dot_product, "
                           "cudnn, auto), overriding --impl's and --query-chunk's")
  parser.add_argument("--output-stride", type=int, default=16, choices=(8, 16),
                      help="DeepLabV3+ backbone output stride")
  parser.add_argument("--run", default="auto", choices=("auto", "on", "off"),
                      help="also execute the step and read the device's peak memory and step "
                           "seconds (auto: on a GPU/TPU, not on CPU)")
  parser.add_argument("--steps", type=int, default=3, help="timed steps after the first (--run)")
  parser.add_argument("--explain", type=int, default=0, metavar="N",
                      help="list the N largest groups of buffers live at the step's peak, by the "
                           "JAX operation that made them (XLA's live-range dump)")
  parser.add_argument("--isolate", default=True, action=argparse.BooleanOptionalAction,
                      help="each measurement in its own process (default); without it, device "
                           "counts this process has are measured in-process")
  parser.add_argument("--timeout", type=float, default=3600.0,
                      help="seconds one isolated measurement may take")


def parse_cases(text: str) -> list[tuple[str, int]]:
  """"a:4,b:8" -> [("a", 4), ("b", 8)], with a clear error for bad entries."""
  cases = []
  for item in text.split(","):
    name, sep, batch = item.strip().partition(":")
    if not name:
      continue
    if not sep or not batch.isdigit() or int(batch) < 1:
      raise ValueError(f"--cases entry {item!r}: write MODEL:BATCH, e.g. segformer_b0:8.")
    cases.append((name, int(batch)))
  if not cases:
    raise ValueError("--cases is empty; e.g. --cases segformer_b0:8.")
  return cases


def _bytes(tree: Any) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def abstract_batch(batch: int, crop: int, sharding: Any) -> dict[str, Any]:
  """The training batch the loop sends to the SeSAM step, as ShapeDtypeStructs.

  "image" BxCxCx3 uint8 (weak view), "label" (fine, for the oracle prior), "weak", "sam" and
  "valid" BxCxC uint8, "index" B int32, "aug" Bx4 float32 (input_pipeline.make_train_dataset
  plus the feed's "sam"), "weak_classes" Bx256 uint8 (AGMM's image classes).
  """
  spec = {"image": ((batch, crop, crop, 3), jnp.uint8), "label": ((batch, crop, crop), jnp.uint8),
          "weak": ((batch, crop, crop), jnp.uint8), "sam": ((batch, crop, crop), jnp.uint8),
          "valid": ((batch, crop, crop), jnp.uint8), "index": ((batch,), jnp.int32),
          "aug": ((batch, 4), jnp.float32), "weak_classes": ((batch, 256), jnp.uint8)}
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
          for k, (shape, dtype) in spec.items()}


def jit_step(method: str, model: Any, schedule: Any, mesh: Any, state: Any) -> Any:
  """The jitted training step of `method`, exactly as the training loop builds it (the methods
  table's step on `base_config`'s paper defaults, `train_step.jit_step`)."""
  name, config = memory_methods.step_config(method, configs_common.base_config())
  step = methods.get_method(name).make_step(model, config, schedule)
  return step_lib.jit_step(step, mesh, state)


def _devices_for(n: int) -> tuple[list, bool]:
  """n devices of the default backend, else of the host platform (an estimate)."""
  devices = jax.devices()
  if len(devices) >= n:
    return devices[:n], False
  cpus = jax.devices("cpu")
  if len(cpus) >= n:
    return cpus[:n], True
  raise ValueError(f"{n} devices asked for, this process has {len(devices)}; run with "
                   f"XLA_FLAGS=--xla_force_host_platform_device_count={n} or --isolate.")


def measure(model_name: str, batch: int, crop: int, dtype: str, n_devices: int, *,
            method: str = "sesam", num_classes: int = 19, impl: str = "gpu",
            output_stride: int = 16, query_chunk: int | None = None,
            attention: str | None = None, run_step: bool = False,
            steps: int = 3, explain: int = 0) -> dict[str, Any]:
  """Compiles one training step on abstract inputs and reads its memory per device.

  Args:
    model_name: a student of `sesam_jax.models.create_model`.
    batch: global batch (split over `n_devices`).
    crop: square crop side, pixels.
    dtype: "fp32" or "bf16" compute.
    n_devices: devices of the data mesh.
    method: "sesam", "fixmatch" or "supervised".
    num_classes: classes of the head.
    impl: SegFormer forms, a key of IMPLS or "auto".
    output_stride: DeepLabV3+ output stride.
    query_chunk: SegFormer attention query chunk, overriding `impl`'s attention (None: keep;
      0: "full"; -1: "cudnn"; > 0: "chunked" with that many queries per chunk).
    attention: SegFormer attention implementation (sesam_jax.models.attention), overriding
      `impl`'s and `query_chunk`'s (None: keep).
    run_step: also execute the step on real (random) data and read the device's peak.
    steps: timed steps after the first when `run_step`.
    explain: if > 0, also the `explain` largest groups of buffers live at the peak.

  Returns:
    Sizes in GiB: state parts (`params`, `ema`, `opt_state`, `batch_stats`), `batch`
    (per device), XLA's `argument`, `output`, `alias`, `temp`, `code` and `total` per device,
    `compile_seconds`, `backend`, `estimate` (true when compiled for CPU), and with `run_step`
    `peak_gib` (device peak bytes in use) and `step_seconds`; with `explain`, `peak_buffers`
    ({JAX operation: GiB} live at XLA's simulated peak, largest first) and `peak_by_scope`
    (the same summed by the first three parts of the operation's name).
  """

  if batch % n_devices:
    raise ValueError(f"global batch {batch} does not split over {n_devices} devices.")
  devices, fallback = _devices_for(n_devices)
  mesh = step_lib.make_mesh(devices)
  overrides: dict[str, Any] = {}
  if model_name.startswith("segformer"):
    overrides = dict(IMPLS[impl]) if impl != "auto" else {}
    if query_chunk is not None:
      overrides["attention"] = {0: "full", -1: "cudnn"}.get(query_chunk, "chunked")
      if query_chunk > 0:
        overrides["query_chunk"] = query_chunk
    if attention is not None:
      overrides["attention"] = attention
  if model_name.startswith("deeplabv3plus"):
    overrides = {"output_stride": output_stride}
  compute_dtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
  attn = resolve_attention(overrides.pop("attention", "auto"), dtype=compute_dtype,
                           field="--attention")  # "auto": this process's backend's choice.
  model = create_model(model_name, num_classes, dtype=compute_dtype, attention=attn, **overrides)
  optim_cfg = configs_common.base_config().optim
  tx, schedule = optim.make_optimizer(optim_cfg, train_state.abstract_params(model), 1000)
  state = train_state.abstract_train_state(model, tx, mesh)
  batch_abs = abstract_batch(batch, crop, step_lib.batch_sharding(mesh))
  rng = jax.device_put(jax.random.key(0), train_state.replicated(mesh))
  step = jit_step(method, model, schedule, mesh, state)
  start = time.perf_counter()
  lowered = step.lower(state, batch_abs, rng)
  with tempfile.TemporaryDirectory(prefix="sesam_xla_dump_") as dump:
    options = {"xla_dump_to": dump, "xla_dump_hlo_as_text": True,
               "xla_dump_hlo_module_re": ".*train_step.*"} if explain else None
    compiled = lowered.compile(options)
    compile_seconds = time.perf_counter() - start
    peak = memory_peak.peak_buffers_from_dump(dump) if explain else None
  analysis = compiled.memory_analysis()
  backend = devices[0].platform
  out: dict[str, Any] = {
      "model": model_name, "batch": batch, "crop": crop, "dtype": dtype, "devices": n_devices,
      "per_device_batch": batch // n_devices, "method": method, "backend": backend,
      "device_kind": devices[0].device_kind, "estimate": backend == "cpu",
      "compile_seconds": round(compile_seconds, 1),
      "params_gib": _bytes(state.params) / GIB, "ema_gib": _bytes(state.ema_params) / GIB,
      "opt_state_gib": _bytes(state.opt_state) / GIB,
      "batch_stats_gib": (_bytes(state.batch_stats) + _bytes(state.ema_batch_stats)) / GIB,
      "batch_gib": _bytes(batch_abs) / n_devices / GIB}
  if peak is not None:
    # By operation, and by the first three parts of its name (model / module / stage).
    out["peak_buffers"] = memory_peak.top(peak, explain)
    out["peak_by_scope"] = memory_peak.top(peak, explain, depth=3)
  if fallback:
    out["note"] = f"{n_devices} devices simulated on the host CPU (this host has fewer)"
  if analysis is None:
    out["total_gib"] = None
  else:
    parts = {"argument": analysis.argument_size_in_bytes, "output": analysis.output_size_in_bytes,
             "alias": analysis.alias_size_in_bytes, "temp": analysis.temp_size_in_bytes,
             "code": analysis.generated_code_size_in_bytes}
    out.update({f"{k}_gib": v / GIB for k, v in parts.items()})
    out["total_gib"] = (parts["argument"] + parts["output"] - parts["alias"] + parts["temp"]
                        + parts["code"]) / GIB
  if run_step:
    out.update(_run_and_peak(compiled, model, tx, mesh, batch, crop, steps))
  return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in out.items()}


def _run_and_peak(compiled: Any, model: Any, tx: Any, mesh: Any, batch: int, crop: int,
                  steps: int) -> dict[str, Any]:
  """Runs the compiled step on random data; the device's peak bytes and step seconds.

  The device's peak counter cannot be reset, so the peak before the first step (compilation's
  autotuning scratch, the state and the batch) is reported beside the one after the steps:
  when they are equal, the step itself needed no more than that.
  """

  rng = np.random.default_rng(0)
  host = {"image": rng.integers(0, 256, (batch, crop, crop, 3), dtype=np.uint8),
          "label": rng.integers(0, 19, (batch, crop, crop), dtype=np.uint8),
          "valid": np.ones((batch, crop, crop), np.uint8),
          "index": np.arange(batch, dtype=np.int32),
          "aug": np.tile(np.float32([1.0, 0.0, 0.0, 0.0]), (batch, 1)),
          "weak_classes": np.ones((batch, 256), np.uint8)}
  host["weak"] = np.where(rng.random((batch, crop, crop)) < 0.2, host["label"], 255).astype(
      np.uint8)
  host["sam"] = np.where(rng.random((batch, crop, crop)) < 0.6, host["label"], 255).astype(
      np.uint8)
  key = jax.device_put(jax.random.key(0), train_state.replicated(mesh))
  # The first of this process's devices in the mesh (the peak is read on it).
  device = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
  try:
    state = train_state.create_train_state(model, tx, jax.random.key(0), mesh)
    data = step_lib.shard_batch(host, mesh)
    jax.block_until_ready((state, data))
    before = device.memory_stats() or {}
    outputs = compiled(state, data, key)
    jax.block_until_ready(outputs)
    times = []
    for _ in range(steps):
      state = outputs[0]
      start = time.perf_counter()
      outputs = compiled(state, data, key)
      jax.block_until_ready(outputs)
      times.append(time.perf_counter() - start)
  except Exception as e:  # noqa: BLE001 - an out-of-memory step is a result, not a crash.
    if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
      raise
    return {"run_error": f"out of memory: {str(e).splitlines()[0][:200]}"}
  result: dict[str, Any] = {}
  if times:
    result["step_seconds"] = float(np.median(times))
  stats = device.memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    result["peak_gib"] = stats["peak_bytes_in_use"] / GIB
    result["peak_before_step_gib"] = before.get("peak_bytes_in_use", 0) / GIB
    result["in_use_before_step_gib"] = before.get("bytes_in_use", 0) / GIB
  if "bytes_limit" in stats:
    result["device_limit_gib"] = stats["bytes_limit"] / GIB
  return result


def goal_gib(model: str, dtype: str) -> float | None:
  """The memory goal for this case (GiB per device, `GOALS_GIB`), if it has one."""
  return GOALS_GIB.get((model, dtype), GOALS_GIB.get((model, None)))


def _isolated(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
  """`measure(**spec)` in a fresh Python process with enough host devices."""
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={spec['n_devices']}".strip()
  cmd = [sys.executable, "-m", "sesam_jax.bench.memory", json.dumps(spec)]
  try:
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s (--timeout)"}
  lines = proc.stdout.strip().splitlines()
  if proc.returncode != 0 or not lines:
    return {"error": f"measurement process exited with {proc.returncode} (its stderr is above)"}
  return json.loads(lines[-1])


def case_key(model: str, batch: int, dtype: str, n_devices: int) -> str:
  return f"{model}_b{batch}_{dtype}_{n_devices}dev"


def _table(cases: dict[str, dict[str, Any]], crop: int) -> str:
  """The cases as a markdown table (GiB per device)."""
  head = ("| case | devices | batch/device | state (student+EMA+opt) | batch | temp | total / "
          "device | goal | GPU peak |\n|---|---|---|---|---|---|---|---|---|")
  rows = [head]
  for key, c in cases.items():
    if "error" in c:
      rows.append(f"| {key} | | | | | | {c['error']} | | |")
      continue
    state = c["params_gib"] + c["ema_gib"] + c["opt_state_gib"] + c["batch_stats_gib"]
    total = "-" if c.get("total_gib") is None else f"{c['total_gib']:.2f}"
    goal = "" if c.get("goal_gib") is None else (
        f"< {c['goal_gib']}: {'met' if c['meets_goal'] else 'MISSED'}")
    peak = f"{c['peak_gib']:.2f}" if "peak_gib" in c else c.get("run_error", "-")
    key, _, method = key.partition("__")
    model, _, dtype, devices = key.rsplit("_", 3)
    rows.append(f"| {model} {dtype} crop {crop}{' ' + method if method else ''} | {devices[:-3]} | "
                f"{c['per_device_batch']} | {state:.3f} | {c['batch_gib']:.3f} | "
                f"{c.get('temp_gib', 0):.2f} | {total} | {goal} | {peak} |")
  return "\n".join(rows)


def run(args: argparse.Namespace) -> dict:
  memory_methods.apply_setting(args)
  method_names = memory_methods.parse_methods(args.method)
  cases = parse_cases(args.cases)
  dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
  if not dtypes or set(dtypes) - {"fp32", "bf16"}:
    raise ValueError(f"--dtypes {args.dtypes!r}: choose from fp32, bf16.")
  counts = sorted({int(n) for n in args.devices.split(",") if n.strip()})
  if not counts or counts[0] < 1:
    raise ValueError(f"--devices {args.devices!r}: positive device counts, e.g. 1,8.")
  unknown = [m for m, _ in cases if m not in MODELS]
  if unknown:
    raise ValueError(f"--cases: unknown students {unknown}; choose from {', '.join(MODELS)}.")
  result: dict[str, Any] = {"crop": args.crop, "method": args.method, "impl": args.impl,
                            "query_chunk": args.query_chunk, "attention": args.attention,
                            "num_classes": args.num_classes,
                            "cases": {}}
  grid = [(m, b, d, n, x) for m, b in cases for d in dtypes
          for n in sorted({min(c, b) for c in counts}) for x in method_names]
  for model, batch, dtype, n, method in grid:
    spec = dict(model_name=model, batch=batch, crop=args.crop, dtype=dtype, n_devices=n,
                method=method, num_classes=args.num_classes, impl=args.impl,
                output_stride=args.output_stride, query_chunk=args.query_chunk,
                attention=args.attention,
                steps=args.steps,
                run_step=args.run == "on", explain=args.explain)
    if args.run == "auto":
      spec["run_step"] = None  # Decided where it runs: on an accelerator.
    key = case_key(model, batch, dtype, n)
    if len(method_names) > 1:  # Several methods: one entry per method of each case.
      key = f"{key}__{method}"
    report.log(f"memory: compiling the {method} step of {model}, batch {batch}, crop "
               f"{args.crop}, {dtype}, {n} device(s)")
    if args.isolate or not _have_devices(n):
      entry = _isolated(spec, args.timeout)
    else:
      entry = measure_spec(spec)
    goal = goal_gib(model, dtype)
    if goal is not None and entry.get("total_gib") is not None:
      measured = entry.get("peak_gib", entry["total_gib"])
      entry.update(goal_gib=goal, meets_goal=bool(measured < goal))
    if model in PAPER_GB and method == "sesam":
      entry["paper_gb"] = PAPER_GB[model]
    if method.startswith("agmm"):  # What the public code's broadcast alone would hold.
      entry["agmm_broadcast_gib"] = memory_methods.broadcast_gib(
          model, args.num_classes, batch // n, args.crop)
    # The key names model, batch, dtype and devices; crop and method are the run's.
    result["cases"][key] = {k: v for k, v in entry.items() if k not in CASE_FIELDS}
    if "error" not in entry:
      report.log(f"memory: {key}: {entry.get('total_gib', 0):.2f} GiB per device "
                 f"({'XLA:CPU estimate' if entry['estimate'] else entry['backend']}), "
                 f"temp {entry.get('temp_gib', 0):.2f} GiB, compiled in "
                 f"{entry['compile_seconds']} s"
                 + (f"; GPU peak {entry['peak_gib']:.2f} GiB" if "peak_gib" in entry else ""))
      for what in ("peak_by_scope", "peak_buffers"):
        for op, gib in entry.get(what, {}).items():
          report.log(f"  live at the peak: {gib:8.3f} GiB  {op}")
  if any(c.get("estimate") for c in result["cases"].values()):
    result["note"] = NOTE_CPU
  if len(method_names) > 1:
    result["vs_fixmatch"] = memory_methods.compare(result["cases"])
  result["table"] = _table(result["cases"], args.crop)
  report.log(result["table"])
  return result


def _have_devices(n: int) -> bool:
  return len(jax.devices()) >= n or len(jax.devices("cpu")) >= n


def measure_spec(spec: dict[str, Any]) -> dict[str, Any]:
  """`measure(**spec)`, deciding `run_step=None` (auto) by where the step compiles."""
  spec = dict(spec)
  if spec.get("run_step") is None:
    spec["run_step"] = jax.default_backend() != "cpu" and len(jax.devices()) >= spec["n_devices"]
  return measure(**spec)


if __name__ == "__main__":
  # One isolated measurement (see `_isolated`): the spec as JSON, the result as the last line.
  report.emit(measure_spec(json.loads(sys.argv[1])))
