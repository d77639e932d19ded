"""Benchmark records comparable across machines: `--record FILE` and `--compare FILE...`.

A record is one JSON object per line of a `.jsonl` file:

  {"bench": "train-step", "settings": {the target's parsed flags},
   "fingerprint": {where and with what it ran}, "result": {the target's figures}}

The fingerprint names the machine (GPU model and count, or CPU model and cores), the jax
backend and devices the run saw, package versions, the command and the time, so that a
figure read months later still says where it came from. `compare_records` lays records out
as one markdown table per benchmark setting, one column per machine.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax

from sesam_jax.report import jsonable

# Packages whose versions go into every fingerprint (None when not installed).
VERSIONED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "torch",
                      "transformers", "numpy")
# Flags that change how long or how often a benchmark repeats, not what it measures, nor
# where: records that differ only in these land in the same table (the column says where).
REPETITION_SETTINGS = frozenset({
    "reps", "warmup", "repeats", "iterations", "refreshes", "batches", "encoder_reps",
    "steps", "cache_dir", "device", "torch_device", "torch_threads", "isolate", "timeout",
    "run"})
# Flags that only choose which rows a benchmark reports (its figures are named after them, e.g.
# `segformer_b0_seconds`, `cases.segformer_b0_b8_bf16_1dev.total_gib`): records that differ in
# these still share a table, each filling its own rows.
ROW_SETTINGS = {"train-step": {"models"}, "memory": {"cases", "dtypes", "devices", "explain"},
                "sam": {"backends", "scenes"}}
# Longest string value shown in a table cell; longer ones stay in the JSON only.
MAX_CELL_CHARS = 48


def _version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "unknown CPU"


def nvidia_gpus(timeout_s: float = 10.0) -> list[dict[str, str]]:
  """[{"name", "memory", "driver"}] per NVIDIA GPU from nvidia-smi; [] without one."""
  exe = shutil.which("nvidia-smi")
  if exe is None:
    return []
  try:
    out = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True,
                         timeout=timeout_s, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  gpus = []
  for line in out.strip().splitlines():
    parts = [p.strip() for p in line.split(",")]
    if len(parts) == 3:
      gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
  return gpus


def jax_devices() -> dict[str, Any] | None:
  """The jax backend this process used: platform, device kind, local and global count.

  Only when the benchmark imported jax: importing it here would start a backend (and on a
  GPU take most of its memory) just to describe it.
  """
  if "jax" not in sys.modules:
    return None
  devices = jax.devices()
  return {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
          "local_count": jax.local_device_count(), "count": len(devices),
          "process_count": jax.process_count()}


def _git_commit() -> str | None:
  root = pathlib.Path(__file__).resolve().parents[2]
  if not (root / ".git").exists():
    return None
  try:
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, timeout=5, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return out or None


def machine_label(gpus: Sequence[Mapping[str, str]], jax_info: Mapping[str, Any] | None,
                  cpu: str, cores: int, on_accelerator: bool) -> str:
  """The column name of a machine: "NVIDIA H100 80GB HBM3 x1" or "CPU <model> x<cores>".

  A run that used the CPU of a GPU host (e.g. a `--cpu` device check) is labelled by its CPU.
  """
  if on_accelerator and gpus:
    return f"{gpus[0]['name']} x{len(gpus)}"
  if on_accelerator and jax_info and jax_info["platform"] != "cpu":  # TPU, or no nvidia-smi
    return f"{jax_info['device_kind']} x{jax_info['count']}"
  return f"CPU {cpu} x{cores}"


def fingerprint(command: Sequence[str], settings: Mapping[str, Any] | None = None
                ) -> dict[str, Any]:
  """Where and with what this process ran a benchmark.

  Args:
    command: the command line (e.g. ["sesam", "bench", "--what", "memory", ...]).
    settings: the benchmark's parsed flags: `dtype`/`dtypes` and `device`/`torch_device`
      (a torch benchmark on "cuda" ran on the GPU) are read from it.

  Returns:
    {"machine", "gpus", "jax_devices", "cpu_model", "cpu_cores", "cpus_usable", "platform",
     "python", "versions", "dtype", "command", "timestamp", "host", "git_commit"}.
  """
  settings = dict(settings or {})
  gpus = nvidia_gpus()
  jax_info = jax_devices()
  cpu = cpu_model()
  cores = os.cpu_count() or 1
  torch_device = str(settings.get("torch_device") or settings.get("device") or "")
  on_accelerator = bool(jax_info and jax_info["platform"] != "cpu") or \
      torch_device.startswith("cuda")
  versions = {name: _version(name) for name in VERSIONED_PACKAGES}
  for dist in importlib.metadata.distributions():  # jax-cuda12-plugin, jax-cuda13-pjrt, ...
    name = (dist.metadata["Name"] or "").lower()
    if name.startswith("jax-cuda") or name.startswith("jax_cuda"):
      versions[name] = dist.version
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = cores
  dtype = settings.get("dtype", settings.get("dtypes"))
  return {
      "machine": machine_label(gpus, jax_info, cpu, cores, on_accelerator),
      "gpus": gpus, "jax_devices": jax_info, "cpu_model": cpu, "cpu_cores": cores,
      "cpus_usable": usable, "platform": platform.platform(),
      "python": platform.python_version(), "versions": versions,
      "dtype": None if dtype is None else str(dtype),
      "command": " ".join(command),
      "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "host": platform.node(), "git_commit": _git_commit()}


def make_record(bench: str, settings: Mapping[str, Any], result: Mapping[str, Any],
                command: Sequence[str]) -> dict[str, Any]:
  """One record: the benchmark's name, flags, fingerprint and figures (plain JSON values)."""
  settings = jsonable(dict(settings))
  return {"bench": bench, "settings": settings,
          "fingerprint": fingerprint(command, settings), "result": jsonable(dict(result))}


def append_record(path: str | os.PathLike, record: Mapping[str, Any]) -> pathlib.Path:
  """Appends `record` as one JSON line to `path` (temp file, then rename: never half-written).

  Returns:
    The file's path.
  """
  path = pathlib.Path(path)
  if path.parent and not path.parent.exists():
    path.parent.mkdir(parents=True, exist_ok=True)
  old = path.read_text() if path.exists() else ""
  if old and not old.endswith("\n"):
    old += "\n"
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(old + json.dumps(record, sort_keys=False) + "\n")
  os.replace(tmp, path)
  return path


def load_records(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
  """Reads records from `.jsonl` files, in order (later lines are later runs)."""
  records = []
  for p in paths:
    path = pathlib.Path(p)
    if not path.is_file():
      raise FileNotFoundError(f"--compare: {path} not found; give files written by "
                              "`sesam bench --what NAME --record FILE`.")
    for n, line in enumerate(path.read_text().splitlines(), start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"--compare: {path}:{n} is not a JSON record ({e.msg}); each line "
                         "must be one record written by `sesam bench ... --record`.") from None
      if not isinstance(record, dict) or not {"bench", "fingerprint", "result"} <= set(record):
        raise ValueError(f"--compare: {path}:{n} lacks bench/fingerprint/result; it was not "
                         "written by `sesam bench ... --record`.")
      records.append(record)
  if not records:
    raise ValueError("--compare: the files hold no records.")
  return records


def flatten(result: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}; lists are left out (per-repetition values stay in the JSON)."""
  out: dict[str, Any] = {}
  for key, value in result.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "."))
    elif isinstance(value, (list, tuple)):
      continue
    elif isinstance(value, str) and len(value) > MAX_CELL_CHARS:
      continue
    else:
      out[name] = value
  return out


def _cell(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value).replace("|", "\\|")


def _group_key(record: Mapping[str, Any]) -> tuple[str, str]:
  ignored = REPETITION_SETTINGS | ROW_SETTINGS.get(record["bench"], set())
  settings = {k: v for k, v in (record.get("settings") or {}).items() if k not in ignored}
  return record["bench"], json.dumps(settings, sort_keys=True, default=str)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return lines


def compare_records(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Lays records out as markdown: one column per machine, one table per benchmark setting.

  Records of the same benchmark with the same settings (up to `REPETITION_SETTINGS` and the
  benchmark's `ROW_SETTINGS`) share a table, one row per figure. Tables of one benchmark are
  titled by the settings that tell them apart. When a machine ran the same setting more than once, each figure shows its latest value.

  Args:
    records: as `load_records` returns them.

  Returns:
    {"table": markdown text, "machines": column names, "records": count, "groups": number of
     tables of figures}.
  """
  machines: list[str] = []
  for r in records:
    if r["fingerprint"]["machine"] not in machines:
      machines.append(r["fingerprint"]["machine"])
  about = [("device (jax)", lambda f: (f.get("jax_devices") or {}).get("device_kind")),
           ("jax devices", lambda f: (f.get("jax_devices") or {}).get("count")),
           ("CPU", lambda f: f.get("cpu_model")), ("cores", lambda f: f.get("cpu_cores")),
           ("python", lambda f: f.get("python"))]
  about += [(name, (lambda n: lambda f: (f.get("versions") or {}).get(n))(name))
            for name in ("jax", "jaxlib", "flax", "torch", "transformers")]
  about += [("platform", lambda f: f.get("platform")), ("commit", lambda f: f.get("git_commit")),
            ("last run (UTC)", lambda f: f.get("timestamp"))]
  # Per machine, the latest known value of each line (a torch-only run knows no jax devices).
  known: dict[str, dict[str, Any]] = {m: {} for m in machines}
  for r in records:
    for name, get in about:
      value = get(r["fingerprint"])
      if value is not None:
        known[r["fingerprint"]["machine"]][name] = value
  lines = ["### machines", ""]
  lines += _table(["", *machines], [[name, *(_cell(known[m].get(name)) for m in machines)]
                                    for name, _ in about])

  groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
  for r in records:  # A later record's figures replace a machine's earlier ones, row by row.
    groups.setdefault(_group_key(r), {}).setdefault(r["fingerprint"]["machine"], {}).update(
        flatten(r["result"]))
  for (bench, settings_json), figures in groups.items():
    title = bench
    same_bench = [json.loads(s) for b, s in groups if b == bench]
    if len(same_bench) > 1:
      own = json.loads(settings_json)
      differing = sorted(k for k in set().union(*same_bench)
                         if len({json.dumps(s.get(k), default=str) for s in same_bench}) > 1)
      title += " (" + ", ".join(f"{k}={own.get(k)}" for k in differing) + ")"
    names: list[str] = []
    for m in machines:
      for name in figures.get(m, {}):
        if name not in names:
          names.append(name)
    rows = [[name, *(_cell(figures[m][name]) if m in figures and name in figures[m] else ""
                     for m in machines)] for name in names]
    lines += ["", f"### {title}", ""] + _table(["figure", *machines], rows)
  return {"table": "\n".join(lines) + "\n", "machines": machines, "records": len(records),
          "groups": len(groups)}
