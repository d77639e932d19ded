"""What `sesam reproduce --run` checks before its first cell: every input, missing ones listed
together (student weights, SAM checkpoint, data folders, weak-label folders asked for).

The commands of a dry run carry placeholders (below) where the user has not yet said where an
input is; `--run` refuses them, naming the flag that provides each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sesam_jax import report
from sesam_jax.run.layout import Layout
from sesam_jax.experiments import label_sources, weights as weights_lib
from sesam_jax.methods import get_method
from sesam_jax.sam import resolver

# What the commands carry until the user says where SAM's weights and the datasets are.
SAM_CHECKPOINT_PLACEHOLDER = "/path/to/sam_vit_b_01ec64.pth"
DATA_DIR_PLACEHOLDER = "/path/to/{dataset}"
INIT_PLACEHOLDER = "/path/to/converted/{model}.msgpack"


def missing_inputs(plans: Sequence[Any], *, sam_backend: str, sam_checkpoint: str | None,
                   data_dirs: Mapping[str, str], weights_dir: str | None,
                   labels: Mapping[tuple[str, str], label_sources.Choice]) -> list[str]:
  """Every input the plans need and lack, one item each (checked before the first cell)."""
  missing = []
  for plan in plans:
    for value in plan.placeholders:
      if value.startswith(INIT_PLACEHOLDER.partition("{")[0]):
        where = (f"no {plan.model} weights in {weights_dir}" if weights_dir else
                 "give --weights DIR")
        item = (f"student weights for {plan.model} "
                f"({weights_lib.SOURCES.get(plan.cell.student, 'ImageNet weights')}: {where}; "
                "or --random-init)")
      elif value == SAM_CHECKPOINT_PLACEHOLDER:
        item = "SAM checkpoint (give --sam-checkpoint FILE, e.g. sam_vit_b_01ec64.pth)"
      else:
        item = f"data folder of {plan.cell.dataset} (give --data-dir {plan.cell.dataset}=DIR)"
      missing.append(item)
  # The SAM backends of the cells: the one of --sam-backend, or the cell's own prior.
  backends = {p.cell.sam_backend or sam_backend for p in plans
              if get_method(p.cell.method).uses_sam}
  for backend in sorted(backends) if not any(SAM_CHECKPOINT_PLACEHOLDER in p.placeholders
                                             for p in plans) else ():
    try:  # The backend's name and weights, without loading them.
      resolver.resolve(backend, sam_checkpoint or "",
                       flags={**resolver.CLI_FLAGS, "backend": "--sam-backend",
                              "checkpoint": "--sam-checkpoint"})
    except (ValueError, FileNotFoundError, report.UserError) as e:
      missing.append(f"SAM backend {backend} ({e})")
  missing += missing_data_dirs(data_dirs)
  used = {(p.cell.dataset, p.cell.weak) for p in plans}
  missing += [c.missing for key, c in labels.items() if c.missing and key in used]
  return list(dict.fromkeys(missing))


def missing_data_dirs(data_dirs: Mapping[str, str]) -> list[str]:
  """The `--data-dir DATASET=DIR` folders that do not exist, one item each."""
  return [f"data folder of {dataset} ({path}: no such folder; --data-dir {dataset}=DIR)"
          for dataset, path in data_dirs.items() if not os.path.isdir(path)]


def run_or_print(plans: Sequence[Any], out: dict[str, Any], lacking: Sequence[str], *, run: bool,
                 run_plans: Callable[[], list[dict[str, Any]]], report_cmd: str,
                 prepare: Callable[[], None] | None = None, dry_note: str = "") -> dict[str, Any]:
  """Runs the plans (`--run`: nothing when an input is missing) or prints their commands.

  Args:
    plans: the cells, each with a `command`.
    out: the command's JSON result so far; `runs` is added after a run.
    lacking: `missing_inputs`' items.
    run: run the cells rather than print them.
    run_plans: runs every cell (skipping finished ones) and returns their results.
    report_cmd: the `sesam report` command that prints the table afterwards.
    prepare: work before the first cell (e.g. converting student weights).
    dry_note: appended to the dry run's line about missing inputs.

  Returns:
    `out`.
  """
  if run:
    if lacking:
      raise ValueError(f"nothing was run; missing {len(lacking)} input(s): " + "; ".join(lacking))
    if prepare is not None:
      prepare()
    out["runs"] = run_plans()
    report.log(f"all {len(plans)} cells finished; the table: {report_cmd}")
  else:
    if lacking:
      report.log(f"before --run: missing {'; '.join(lacking)}{dry_note}")
    for plan in plans:
      print(plan.command, flush=True)
    report.log(f"dry run: nothing was run (--run runs them); the table afterwards: {report_cmd}")
  return out


def run_each(plans: Sequence[Any], *, finished: Callable[[Any], bool],
             run_one: Callable[[int, Any, Any], dict[str, Any]], keep_going: bool = False,
             again: str = "finished cells are skipped") -> list[dict[str, Any]]:
  """Runs the cells one after another, skipping finished ones: the loop of every table kind.

  Args:
    plans: the cells, each with `workdir` and `command`.
    finished: whether a cell finished before (skipped).
    run_one: runs cell i (1-based) with its open `reproduce.log`; returns the fields of its
      record, with "error" (why it failed) when it failed. May raise `report.Stopped`.
    keep_going: run the other cells after a failed one.
    again: what running the same command again does, for the failure message.

  Returns:
    Per plan: {"workdir", "status": "skipped" | "ran" | "failed" | "not run", and run_one's
    fields}.

  Raises:
    ValueError: a cell failed (each named with its reason), after the others ran or not.
  """
  out, failures = [], []
  for i, plan in enumerate(plans, 1):
    if finished(plan):
      report.log(f"[{i}/{len(plans)}] finished before: {plan.workdir}")
      out.append({"workdir": plan.workdir, "status": "skipped"})
      continue
    if failures and not keep_going:
      out.append({"workdir": plan.workdir, "status": "not run"})
      continue
    os.makedirs(plan.workdir, exist_ok=True)
    log_path = str(Layout.of(plan.workdir).reproduce_log)
    report.log(f"[{i}/{len(plans)}] running (output in {log_path}): {plan.command}")
    with open(log_path, "a") as log:
      # `Run.command` reads the command back from this header.
      log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {plan.command}\n")
      log.flush()
      fields = run_one(i, plan, log)
    error = fields.pop("error", None)
    if error is not None:
      failures.append(f"{plan.workdir} ({error})")
    out.append({"workdir": plan.workdir, "status": "ran" if error is None else "failed",
                **fields})
  if failures:
    raise ValueError(f"{len(failures)} cell(s) failed: " + "; ".join(failures) + ". Fix the "
                     f"cause and run the same command again ({again}).")
  return out


def run_sesam(argv: Sequence[str], log: Any, python: str = sys.executable
              ) -> tuple[int, dict[str, Any]]:
  """Runs a `sesam ...` command in a child process, its log lines to `log`; (exit code, the
  JSON result of its last stdout line, or {})."""
  proc = subprocess.run([python, "-m", "sesam_jax.main", *argv[1:]], stdout=subprocess.PIPE,
                        stderr=log, text=True)
  log.write(proc.stdout)
  log.flush()
  lines = proc.stdout.strip().splitlines()
  try:
    result = json.loads(lines[-1]) if lines else {}
  except json.JSONDecodeError:
    result = {}
  return proc.returncode, result if isinstance(result, dict) else {}
