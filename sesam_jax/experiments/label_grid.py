"""Label-level tables (Table 5, SAM versions): each cell one `sesam refine` of a split, scored.

A cell of a `grid.Table` of kind "labels" refines the validation split's weak labels with one
SAM version, as SeSAM's refinement does (the paper: Cityscapes coarse labels, SAM ViT-B,
SAM 2.1 Hiera-B+ and SAM 3), and scores the labels SAM adds (precision, recall, F1:
`sesam_jax.sam.refine_labels`). Its folder holds

  labels/        the refined `<image stem>.png` labels (written whole or not at all)
  refine.json    `sesam refine`'s JSON result; its presence marks the cell finished
  reproduce.log  the command's output

`run_plans` skips finished cells, so a stopped sweep resumes with the same command; `report`
prints the paper's layout (rows precision / recall / F1, a column per SAM version) with the
paper's figures and the differences.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from sesam_jax import report
from sesam_jax.experiments import grid, paper_figures, preflight

RESULT = "refine.json"
LABELS = "labels"
SPLIT = "val"  # The paper scores SAM versions on the Cityscapes validation set.
# SAM version -> (name in the table, the flag of `sesam reproduce` giving its checkpoint, what
# to download).
VERSIONS = {"sam": ("SAM ViT-B", "--sam-checkpoint", "sam_vit_b_01ec64.pth"),
            "sam2": ("SAM 2.1 Hiera-B+", "--sam2-checkpoint",
                     "the transformers folder of facebook/sam2.1-hiera-base-plus"),
            "sam3": ("SAM 3", "--sam3-checkpoint", "the transformers folder of facebook/sam3")}
CHECKPOINT_PLACEHOLDER = "/path/to/{version}"
METRICS = (("Precision", "precision"), ("Recall", "recall"), ("F1", "f1"))


@dataclasses.dataclass(frozen=True)
class LabelPlan:
  """A label-level cell's command.

  Attributes:
    cell: the cell (`cell.fields` holds its ("sam_version", version)).
    version: a key of VERSIONS.
    argv: the `sesam refine` command.
    workdir: the cell's folder.
    placeholders: the placeholder values the command still holds.
  """
  cell: grid.Cell
  version: str
  argv: tuple[str, ...]
  workdir: str
  placeholders: tuple[str, ...] = ()

  @property
  def command(self) -> str:
    return shlex.join(self.argv)


def plan_cells(cells: Sequence[grid.Cell], *, root: str, checkpoints: Mapping[str, str],
               data_dirs: Mapping[str, str], weak_sources: Mapping[tuple[str, str], str],
               extra: Sequence[str] = ()) -> list[LabelPlan]:
  """The `sesam refine` command of every cell.

  Args:
    cells: from `grid.expand` of a "labels" table.
    root: the sweep's root folder.
    checkpoints: SAM version -> its weights (file or transformers folder).
    data_dirs: dataset -> root folder (else a placeholder).
    weak_sources: (dataset, weak kind) -> `--weak-source` spec ("" = made from the fine labels).
    extra: further `sesam refine` flags for every command (e.g. --device cuda, --limit 100).
  """
  plans = []
  for cell in cells:
    version = dict(cell.fields)["sam_version"]
    workdir = os.path.join(root, cell.table, cell.dataset, version, cell.weak, f"seed{cell.seed}")
    placeholders = []
    checkpoint = checkpoints.get(version) or CHECKPOINT_PLACEHOLDER.format(version=version)
    data_dir = data_dirs.get(cell.dataset) or f"/path/to/{cell.dataset}"
    for value, given in ((checkpoint, version in checkpoints), (data_dir,
                                                                 cell.dataset in data_dirs)):
      if not given:
        placeholders.append(value)
    argv = ["sesam", "refine", "--dataset", cell.dataset, "--data-dir", data_dir,
            "--split", SPLIT, "--weak", cell.weak, "--seed", str(cell.seed),
            "--backend", "transformers", "--checkpoint", checkpoint,
            "--out", os.path.join(workdir, LABELS)]
    source = weak_sources.get((cell.dataset, cell.weak), "")
    if source:
      argv += ["--weak-source", source]
    plans.append(LabelPlan(cell, version, tuple(argv + list(extra)), workdir,
                           tuple(placeholders)))
  return plans


def missing_inputs(plans: Sequence[LabelPlan]) -> list[str]:
  """Checkpoints and data folders the plans lack, one item each."""
  out = []
  for plan in plans:
    name, flag, what = VERSIONS[plan.version]
    checkpoint = plan.argv[plan.argv.index("--checkpoint") + 1]
    data_dir = plan.argv[plan.argv.index("--data-dir") + 1]
    if checkpoint in plan.placeholders or not os.path.exists(checkpoint):
      out.append(f"{name} checkpoint ({what}: give {flag} PATH)")
    if data_dir in plan.placeholders or not os.path.isdir(data_dir):
      out.append(f"data folder of {plan.cell.dataset} (give --data-dir {plan.cell.dataset}=DIR)")
  return list(dict.fromkeys(out))


def read_result(workdir: str | os.PathLike) -> dict | None:
  """A finished cell's `sesam refine` result, or None."""
  path = os.path.join(workdir, RESULT)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def run_plans(plans: Sequence[LabelPlan], *, keep_going: bool = False,
              python: str = sys.executable) -> list[dict[str, Any]]:
  """Runs the commands one after another, skipping finished cells (`preflight.run_each`)."""
  def run_one(_: int, plan: LabelPlan, log: Any) -> dict[str, Any]:
    code, result = preflight.run_sesam(plan.argv, log, python)
    if code != 0 or "error" in result or not result:
      return {"error": f"exit code {code}; {result.get('error', 'see ' + log.name)}"}
    report.write_json(os.path.join(plan.workdir, RESULT), result)
    return {}
  return preflight.run_each(plans, finished=lambda p: read_result(p.workdir) is not None,
                            run_one=run_one, keep_going=keep_going)


def find_results(paths: Sequence[str | os.PathLike]) -> list[tuple[str, dict]]:
  """(cell folder, result) of every finished label-level cell under `paths`."""
  found = []
  for path in map(str, paths):
    if os.path.isfile(os.path.join(path, RESULT)):
      found.append(path)
    elif os.path.isdir(path):
      found += sorted(d for d, _, files in os.walk(path) if RESULT in files)
  return [(d, read_result(d)) for d in dict.fromkeys(found)]


def _version_of(workdir: str) -> str:
  parts = workdir.split(os.sep)
  return next((p for p in reversed(parts) if p in VERSIONS), "")


def report_labels(results: Sequence[tuple[str, dict]]) -> dict[str, Any]:
  """Prints Table 5's layout: precision / recall / F1 (%) per SAM version, with the paper's.

  Returns:
    {"label_cells": [{"workdir", "version", "precision", "recall", "f1", "images", "paper"}]}.
  """
  cells = []
  for workdir, result in results:
    version = _version_of(workdir)
    cells.append({"workdir": workdir, "version": version or result.get("backend", "?"),
                  "images": result.get("images"), "weak_source": result.get("weak_source") or
                  "generated", **{key: result.get(key) for _, key in METRICS},
                  "paper": dict(zip(("precision", "recall", "f1"),
                                    paper_figures.TABLE5.get(version, (None,) * 3)))})
  heads = [VERSIONS.get(c["version"], (c["version"],))[0] for c in cells]
  lines = ["| | " + " | ".join(heads) + " |", "|---|" + "---|" * len(cells)]
  for label, key in METRICS:
    row = []
    for c in cells:
      ours, paper = c[key], c["paper"][key]
      text = "-" if ours is None else f"{100 * ours:.1f}"
      if paper is not None and ours is not None:
        text += f" (paper {paper:.1f}, {100 * ours - paper:+.1f})"
      row.append(text)
    lines.append(f"| {label} | " + " | ".join(row) + " |")
  lines += ["", "% of the pixels SAM adds to the weak labels (sesam_jax/sam/refine_labels.py); "
            "images: " + ", ".join(f"{c['version']} {c['images']}" for c in cells) +
            "; weak labels: " + ", ".join(sorted({c["weak_source"] for c in cells}))]
  print("\n".join(lines), flush=True)
  return {"label_cells": cells}


def reproduce(cells: Sequence[grid.Cell], table: grid.Table, *, root: str,
              checkpoints: Mapping[str, str], data_dirs: Mapping[str, str],
              weak_sources: Mapping[tuple[str, str], str], notes: Sequence[str] = (),
              extra: Sequence[str] = (), run: bool = False,
              keep_going: bool = False) -> dict[str, Any]:
  """`sesam reproduce` of a label-level table: prints (or runs) its `sesam refine` commands.

  Returns:
    As `sweep.reproduce`: {"table", "commands", "workdirs", "left_out", "notes", "placeholders",
    "missing", "report", and with `run` "runs"}.
  """
  plans = plan_cells(cells, root=root, checkpoints=checkpoints, data_dirs=data_dirs,
                     weak_sources=weak_sources, extra=extra)
  table_root = os.path.join(root, table.name)
  report_cmd = shlex.join(["sesam", "report", table_root])
  notes = list(table.notes) + list(notes)
  report.log(f"{table.name}: {table.title}")
  report.log(f"{len(plans)} label-level cells under {table_root}")
  for note in notes:
    report.log(f"note: {note}")
  lacking = missing_inputs(plans)
  out: dict[str, Any] = {
      "table": table.name, "commands": [p.command for p in plans],
      "workdirs": [p.workdir for p in plans],
      "cells": [{"workdir": p.workdir, "sam_version": p.version} for p in plans],
      "left_out": [{"what": w, "why": y} for w, y in table.left_out], "not_selected": [],
      "notes": notes, "placeholders": sorted({v for p in plans for v in p.placeholders}),
      "missing": lacking, "report": report_cmd}
  return preflight.run_or_print(plans, out, lacking, run=run, report_cmd=report_cmd,
                                run_plans=lambda: run_plans(plans, keep_going=keep_going))
