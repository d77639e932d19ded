"""Bench-backed tables (Table 6, runtime and memory): each cell runs `sesam bench`, not training.

A cell of a `grid.Table` of kind "bench" is one method at the table's setting (Table 6:
DeepLabV3+-R101 on Cityscapes coarse, batch 4, crop 1024, bf16, one device). It runs two
commands, each appending its record to `<cell>/bench.jsonl`:

  sesam bench --what iteration --setting table6 --methods M   seconds per iteration (FixMatch
                                                              timed first in the same process:
                                                              the ratio)
  sesam bench --what memory --setting table6 --method M       the step's memory: the device's
                                                              peak on a GPU or TPU, XLA's
                                                              estimate elsewhere

and then writes `<cell>/result.json` (`seconds_per_iteration`, `ratio_to_fixmatch`,
`peak_memory_gib`, `peak_memory_from`, `bench_device`), which marks it finished. The timed
steps read Cityscapes when `--data-dir cityscapes=DIR` is given, else generated scenes of
Cityscapes' size (time and memory depend on the shapes, not on the pixels; SAM's cost depends
on how many instances a label has, which generated scenes set). SAM is a randomly initialised
ViT-B of the chosen backend unless `--sam-checkpoint` is given: its cost does not depend on
its weights.

The mIoU column is not measured here: `report_bench` takes it from the training runs of the
same method in Table 2's DeepLabV3+ Cityscapes coarse cells (`ROOT/table2/cityscapes/
deeplabv3plus_r101/coarse/<method>/seed*`), since the paper's Table 6 repeats Table 2's figures.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import statistics
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from sesam_jax import report
from sesam_jax.experiments import grid, paper_figures, preflight
from sesam_jax.run import result as result_lib, runs as runs_lib
from sesam_jax.run.layout import BENCH_RECORDS, RESULT, Layout

# The bench setting of each bench-backed table (`sesam bench --setting`).
SETTINGS = {"table6": "table6"}
# The table whose training runs give a bench-backed table its mIoU column.
MIOU_FROM = {"table6": "table2"}
# Table 6's rows: (method, the paper's row label), as the grid lists them.
ROWS = tuple((v.method, v.rows[0]) for v in grid.TABLES["table6"].variants)


@dataclasses.dataclass(frozen=True)
class BenchPlan:
  """A bench-backed cell's commands.

  Attributes:
    cell: the cell.
    model: the student the setting trains.
    commands: the `sesam bench` commands (iteration, then memory).
    workdir: the cell's folder.
  """
  cell: grid.Cell
  model: str
  commands: tuple[tuple[str, ...], ...]
  workdir: str

  @property
  def command(self) -> str:
    return " && ".join(shlex.join(c) for c in self.commands)


def sam_spec(backend: str, checkpoint: str | None) -> str:
  """The iteration bench's `--backend`: the Flax or PyTorch SAM, random ViT-B unless weights."""
  if backend == "jax":
    return f"jax:{checkpoint}" if checkpoint else "jax-random:vit_b"
  return f"transformers:{checkpoint}" if checkpoint else "random:vit_b"


def plan_cells(cells: Sequence[grid.Cell], *, root: str, data_dirs: Mapping[str, str],
               sam_backend: str, sam_checkpoint: str | None = None,
               extra: Sequence[str] = ()) -> list[BenchPlan]:
  """The `sesam bench` commands of every cell.

  Args:
    cells: from `grid.expand` of a "bench" table.
    root: the sweep's root folder.
    data_dirs: dataset -> folder; without one, the iteration bench times generated scenes.
    sam_backend: "jax" (the Flax SAM on the trainer's devices) or a PyTorch backend.
    sam_checkpoint: SAM weights (default: a random ViT-B; the cost is the same).
    extra: further flags of the iteration bench (e.g. --iterations 10).
  """
  plans = []
  for cell in cells:
    model = grid.PAPER_MODELS[cell.student]
    workdir = os.path.join(root, cell.relpath(model))
    records = os.path.join(workdir, BENCH_RECORDS)
    setting = SETTINGS[cell.table]
    data = (["--data-dir", data_dirs[cell.dataset]] if cell.dataset in data_dirs
            else ["--dataset", "synthetic"])
    sam = (["--backend", sam_spec(sam_backend, sam_checkpoint)]
           if cell.method == "sesam" else [])
    iteration = ("sesam", "bench", "--what", "iteration", "--setting", setting, "--methods",
                 cell.method, *data, *sam, *extra, "--record", records)
    memory = ("sesam", "bench", "--what", "memory", "--setting", setting, "--method",
              cell.method, "--record", records)
    plans.append(BenchPlan(cell, model, (iteration, memory), workdir))
  return plans


def cell_result(method: str, iteration: Mapping[str, Any], memory: Mapping[str, Any],
                workdir: str) -> dict[str, Any]:
  """result.json of a cell from its two benchmarks' results (checked by the schema)."""
  timed = iteration["methods"][method]
  case = next(iter(memory["cases"].values()))
  if "error" in case:
    raise ValueError(f"the memory benchmark failed: {case['error']}")
  peak = case.get("peak_gib")
  device = iteration.get("platform", "")
  if "device_kind" in iteration:
    device += f" {iteration['device_kind']}"
  return result_lib.check({
      "method": method, "weak": str(iteration.get("weak", "")),
      "seconds_per_iteration": timed["seconds"], "ratio_to_fixmatch": timed["ratio"],
      "peak_memory_gib": round(peak if peak is not None else case["total_gib"], 3),
      "peak_memory_from": "device peak" if peak is not None else "xla estimate",
      "bench_device": device, "workdir": os.path.abspath(workdir)})


def run_plans(plans: Sequence[BenchPlan], *, keep_going: bool = False,
              python: str = sys.executable) -> list[dict[str, Any]]:
  """Runs each cell's benchmarks, skipping cells with a result.json (`preflight.run_each`)."""
  def run_one(_: int, plan: BenchPlan, log: Any) -> dict[str, Any]:
    results = []
    for argv in plan.commands:
      code, result = preflight.run_sesam(argv, log, python)
      if code != 0 or not result or "error" in result:
        return {"error": f"{argv[3]} benchmark: exit code {code}; "
                         f"{result.get('error', 'see ' + log.name)}"}
      results.append(result)
    try:
      result_lib.write(plan.workdir, cell_result(plan.cell.method, *results, plan.workdir))
    except (KeyError, StopIteration, ValueError) as e:
      return {"error": f"its benchmarks gave no figure for {plan.cell.method} ({e!r})"}
    return {}
  return preflight.run_each(
      plans, finished=lambda p: Layout.of(p.workdir).result.is_file(), run_one=run_one,
      keep_going=keep_going)


def reproduce(cells: Sequence[grid.Cell], table: grid.Table, *, root: str,
              data_dirs: Mapping[str, str], sam_backend: str, sam_checkpoint: str | None,
              extra: Sequence[str] = (), run: bool = False,
              keep_going: bool = False) -> dict[str, Any]:
  """`sesam reproduce` of a bench-backed table: prints (or runs) its `sesam bench` commands.

  Returns:
    As `sweep.reproduce`: {"table", "commands", "workdirs", "left_out", "notes", "missing",
    "report", and with `run` "runs"}.
  """
  plans = plan_cells(cells, root=root, data_dirs=data_dirs, sam_backend=sam_backend,
                     sam_checkpoint=sam_checkpoint, extra=extra)
  table_root = os.path.join(root, table.name)
  report_cmd = shlex.join(["sesam", "report", table_root])
  notes = list(table.notes) + [
      f"each cell runs `sesam bench` (iteration, then memory) at the paper's setting; the "
      f"mIoU column comes from {MIOU_FROM[table.name]}'s DeepLabV3+ Cityscapes coarse runs "
      f"(sesam reproduce --table {MIOU_FROM[table.name][5:]} --student deeplabv3plus)"]
  if "cityscapes" not in data_dirs:
    notes.append("no --data-dir cityscapes=DIR: the iteration bench times generated scenes of "
                 "Cityscapes' size (1024x2048)")
  report.log(f"{table.name}: {table.title}")
  report.log(f"{len(plans)} bench cells under {table_root}")
  for note in notes:
    report.log(f"note: {note}")
  lacking = preflight.missing_data_dirs(data_dirs)
  out: dict[str, Any] = {
      "table": table.name, "commands": [p.command for p in plans],
      "workdirs": [p.workdir for p in plans],
      "cells": [{"workdir": p.workdir, "method": p.cell.method} for p in plans],
      "left_out": [{"what": w, "why": y} for w, y in table.left_out], "not_selected": [],
      "notes": notes, "placeholders": [], "missing": lacking, "report": report_cmd}
  return preflight.run_or_print(plans, out, lacking, run=run, report_cmd=report_cmd,
                                run_plans=lambda: run_plans(plans, keep_going=keep_going))


def find_results(paths: Sequence[str | os.PathLike]) -> list[tuple[str, dict]]:
  """(cell folder, result.json) of every finished bench-backed cell under `paths`."""
  found = []
  for path in map(str, paths):
    for folder, _, files in os.walk(path):
      if RESULT in files and not Layout.of(folder).is_run():
        result = result_lib.read(folder)
        if result is not None and "seconds_per_iteration" in result:
          found.append((folder, result))
  return found


def miou_of(cell_dir: str, method: str) -> tuple[float | None, int]:
  """(mean val mIoU, finished seeds) of `method`'s Table 2 runs beside a Table 6 cell."""
  parts = os.path.abspath(cell_dir).split(os.sep)
  table = next((p for p in reversed(parts) if p in MIOU_FROM), None)
  if table is None:
    return None, 0
  i = len(parts) - 1 - parts[::-1].index(table)
  # ROOT/table6/<dataset>/<model>/<weak>/<method>/seedN -> ROOT/table2/<same>/seed*
  runs_dir = os.sep.join(parts[:i] + [MIOU_FROM[table]] + parts[i + 1:-1])
  values = []
  if os.path.isdir(runs_dir):
    for name in sorted(os.listdir(runs_dir)):
      run = os.path.join(runs_dir, name)
      if name.startswith("seed") and Layout.of(run).is_run():
        opened = runs_lib.open_run(run)
        if opened.finished and opened.result.get("val_miou") is not None:
          values.append(float(opened.result["val_miou"]))
  return (statistics.fmean(values) if values else None), len(values)


def report_bench(results: Sequence[tuple[str, dict]]) -> dict[str, Any]:
  """Prints Table 6's layout: s/iteration, memory and mIoU per method, with the paper's.

  Returns:
    {"bench_cells": [{"workdir", "method", "seconds_per_iteration", "ratio_to_fixmatch",
     "peak_memory_gib", "peak_memory_from", "miou", "miou_seeds", "paper"}]}.
  """
  order = {m: i for i, (m, _) in enumerate(ROWS)}
  labels = dict(ROWS)
  cells = []
  for workdir, result in sorted(results, key=lambda r: order.get(r[1].get("method"), 99)):
    method = result.get("method", "?")
    miou, seeds = miou_of(workdir, method)
    cells.append({"workdir": workdir, "method": method, "miou": miou, "miou_seeds": seeds,
                  "paper": paper_figures.TABLE6.get(method),
                  **{k: result.get(k) for k in ("seconds_per_iteration", "ratio_to_fixmatch",
                                                "peak_memory_gib", "peak_memory_from",
                                                "bench_device")}})
  lines = ["| | Training time (sec/iter) | x FixMatch | GPU memory (GiB) | mIoU |",
           "|---|---|---|---|---|"]
  for c in cells:
    paper = c["paper"] or (None, None, None)
    seconds = _with_paper(c["seconds_per_iteration"], paper[0], "{:.2f}")
    ratio = "-" if c["ratio_to_fixmatch"] is None else f"{c['ratio_to_fixmatch']:.2f}"
    if paper[0]:
      ratio += f" (paper {paper[0] / paper_figures.TABLE6['fixmatch'][0]:.1f})"
    memory = _with_paper(c["peak_memory_gib"], paper[1], "{:.1f}")
    if c["peak_memory_from"] == "xla estimate":
      memory += " (XLA estimate)"
    miou = _with_paper(None if c["miou"] is None else 100 * c["miou"], paper[2], "{:.1f}")
    if c["miou_seeds"] > 1:
      miou += f" (n={c['miou_seeds']})"
    lines.append(f"| {labels.get(c['method'], c['method'])} | {seconds} | {ratio} | {memory} | "
                 f"{miou} |")
  devices = sorted({c["bench_device"] or "?" for c in cells})
  lines += ["", f"Measured by `sesam bench` on {', '.join(devices)}; mIoU: the Table 2 "
            "DeepLabV3+ Cityscapes coarse runs of the same method (- until they finished); "
            "paper: the SeSAM paper's Table 6 (its memory in GB as it prints it)."]
  print("\n".join(lines), flush=True)
  return {"bench_cells": cells}


def _with_paper(ours: float | None, paper: float | None, fmt: str) -> str:
  text = "-" if ours is None else fmt.format(ours)
  return text + (f" (paper {fmt.format(paper)})" if paper is not None else "")

