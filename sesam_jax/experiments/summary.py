"""`sesam report`: the paper's tables from the runs' own files.

Every `sesam train` workdir holds `config.json` (the resolved config) and, once the run has
finished, `result.json` (its keys: `sesam_jax.run.result.FIELDS`). `report_runs()` reads every
workdir under the given paths and prints one markdown table in the paper's layout:

  rows     label kind x method (plus the ablation fields that differ from the defaults, and
           the training-set budget `dataset.max_train_images` where one is set) x the student's
           init (pretrained: `config.init` set, or random) x where the weak labels came from
           (`config.weak_source`: generated, or the reader of the user's labels) x the SAM
           prior of a SAM method (`config.sam.backend`); runs that differ in any of these are
           never averaged together (`run_groups`)
  columns  dataset x student, each with: val mIoU in % (student, or EMA teacher with `ema`),
           mean ± std over seeds (sample std); where the paper reports the cell
           (`paper_figures`; the table from the workdir's `tableN` folder), its figure and the
           difference; WvF in %: mIoU over that of the weak=fine
           supervised run of the same dataset, student and budget; annotation hours of the
           training labels (`sesam_jax.cost`: minutes per image of the label kind x training
           images); label-source coverage at the last logged step (weak / SAM / pseudo-label
           pixels, % of the batch); where runs logged it, the SAM labels' precision against
           the fine labels (%); wall time (train + SAM pre-warm + eval seconds, mean)

`--csv` writes the same cells as records (`tables_csv`, whose docstring lists the columns).

Runs are opened by `sesam_jax.run.runs.open_run`: a run is finished when its result.json holds a step >=
its config's num_steps; any other run (no result.json: killed or still running; a lower step) is
listed as unfinished with the last step it reached, never left out.

The cost-vs-mIoU data (Figure 4) is written to `cost_json`, or, when the runs have budgets
(`dataset.max_train_images`, as `sesam reproduce --table fig4` makes them), to
`cost_points.json` in the first folder given, in this format (version 1):

  {"format": "sesam-cost-points/1", "x": "annotation hours", "y": "val mIoU (student)",
   "minutes_per_image": {"fine": 90.0, ...},
   "lines": [{"label": "scribbles, sesam" | "fine", "weak", "method", "variant", "dataset",
              "model", "reference": true for weak=fine supervised,
              "points": [{"hours", "val_miou" (0-1, mean over seeds), "val_miou_std" (or null),
                          "seeds", "train_images", "workdir" (the first seed's),
                          "workdirs", "val_miou_from": "result.json"}] sorted by hours}],
   "unfinished": [workdir, ...]}

Each line is one (dataset, student, label kind, method, variant) over budgets; the keys of
`lines` and `points` are those `sesam plot cost` draws.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from sesam_jax import report
from sesam_jax.experiments import bench_grid, label_grid, tables_csv
from sesam_jax.experiments.run_groups import COVERAGE, Group, group_runs, row_fields, variant_text
from sesam_jax.run import runs as runs_lib
from sesam_jax.run.layout import Layout

COST_FILE = "cost_points.json"  # Figure 4's data, written beside runs with budgets


def _pct(value: float | None, digits: int = 1) -> str:
  return "-" if value is None else f"{100 * value:.{digits}f}"


def _hours(value: float | None) -> str:
  if value is None:
    return "-"
  return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def _duration(seconds: float | None) -> str:
  if seconds is None:
    return "-"
  if seconds < 120:
    return f"{seconds:.0f} s"
  if seconds < 7200:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.1f} h"


def _miou_text(g: Group) -> str:
  if not g.miou:
    return "unfinished"
  text = _pct(g.miou_mean)
  if g.miou_std is not None:
    text += f" ± {_pct(g.miou_std)}"
  if len(g.miou) > 1:
    text += f" (n={len(g.miou)})"
  if g.unfinished:
    text += f" ({len(g.finished)} of {len(g.runs)} runs finished)"
  return text


def _coverage_text(g: Group) -> str:
  parts = [g.mean(f"final_coverage_{k}") for k in COVERAGE]
  if all(p is None for p in parts):
    return "-"
  return "/".join(_pct(p, 2) for p in parts)


def _signed(value: float | None) -> str:
  return "-" if value is None else f"{value:+.1f}"


def markdown(groups: Sequence[Group], *, ema: bool = False,
             minutes_per_image: Mapping[str, float] | None = None) -> str:
  """The paper-layout table: one row per (labels, method, variant, budget), column groups per
  (dataset, student) with mIoU, WvF, hours, coverage and wall time."""
  columns = list(dict.fromkeys(g.column for g in groups))
  rows = list(dict.fromkeys(g.row for g in groups))
  by_key = {(g.column, g.row): g for g in groups}
  row_heads = ["labels", "method"] + (["prior"] if any(r[6] for r in rows) else [])
  if any(r[2] for r in rows):
    row_heads.append("variant")
  if any(r[3] for r in rows):
    row_heads.append("budget")
  row_heads += ["init", "labels from"]
  with_paper = any(g.paper() is not None for g in groups)
  with_precision = any(g.mean("final_precision_sam") is not None for g in groups)
  heads = list(row_heads)
  for dataset, model in columns:
    heads += [f"{model} {dataset}: mIoU"] + (["paper", "Δ"] if with_paper else []) + [
        "WvF", "hours", "coverage w/s/p %"] + (["SAM precision %"] if with_precision else []) + [
        "wall"]
  lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
  for row in rows:
    first = next(g for g in groups if g.row == row)
    cells = [row_fields(first)[h] for h in row_heads]
    for column in columns:
      g = by_key.get((column, row))
      if g is None:
        cells += [""] * (5 + 2 * with_paper + with_precision)
        continue
      paper = [("-" if g.paper() is None else f"{g.paper():.1f}"), _signed(g.paper_diff())]
      cells += [_miou_text(g)] + (paper if with_paper else []) + [
                "-" if g.wvf is None else f"{g.wvf:.1f}",
                _hours(g.hours(minutes_per_image)),
                _coverage_text(g)] + (
                [_pct(g.mean("final_precision_sam"), 2)] if with_precision else []) + [
                _duration(g.wall_seconds())]
    lines.append("| " + " | ".join(cells) + " |")
  who = "EMA teacher" if ema else "student"
  lines.append("")
  lines.append(f"val mIoU ({who}) in %, mean ± std over seeds; WvF: % of the weak=fine "
               "supervised run of the same dataset, student and budget; hours: annotation "
               "hours of the training labels (sesam_jax/cost.py); coverage: weak/SAM/pseudo-"
               "label pixels at the last logged step; " + (
                   "SAM precision: SAM-labelled pixels matching the fine label; " if with_precision
                   else "") + "wall: train + SAM pre-warm + eval; prior: the SAM backend; init: "
               "the student's start (pretrained: config.init); labels from: generated from the "
               "fine labels, or the reader of published ones" +
               ("; paper: the paper's mIoU of the cell, Δ: ours minus the paper's" if with_paper
                else "") + ".")
  return "\n".join(lines)


def unfinished_lines(groups: Sequence[Group]) -> list[str]:
  """One line per unfinished run: what it is, how far it got, where it is."""
  out = []
  for g in groups:
    for run in g.unfinished:
      weak, method, variant, budget, *_ = g.row
      what = " ".join(p for p in (g.column[0], g.column[1], weak, method, variant_text(variant),
                                  f"budget {budget}" if budget else "") if p)
      step = run.last_step()
      where = "no step logged yet" if step is None else f"step {step} of {run.config.num_steps}"
      out.append(f"- unfinished: {what} seed {run.config.get('seed', 0)} ({where}): {run.workdir}")
  return out


def report_runs(paths: Sequence[str], *, ema: bool = False, csv_path: str | None = None,
                cost_json: str | None = None,
                minutes_per_image: Mapping[str, float] | None = None) -> dict[str, Any]:
  """Prints the table of every run under `paths` (`sesam report`) on stdout.

  Args:
    paths: workdirs, or folders holding them.
    ema: report the EMA teacher's val mIoU instead of the student's.
    csv_path: also write the table as CSV here (atomically).
    cost_json: also write the cost-vs-mIoU data (Figure 4) here, as JSON (default with
      budgets: `<paths[0]>/cost_points.json`).
    minutes_per_image: the cost model (default `sesam_jax.cost.MINUTES_PER_IMAGE`).

  Returns:
    {"runs", "finished", "unfinished": [workdir, ...], "cells": the CSV records, and "csv" /
    "cost_json" when written}.
  """
  try:
    runs = runs_lib.open_runs(paths)
  except FileNotFoundError:
    bench_cells = bench_grid.find_results(paths)  # Table 6: `sesam bench` cells, no runs.
    if bench_cells:
      return bench_grid.report_bench(bench_cells)
    label_cells = label_grid.find_results(paths)  # Table 5: `sesam refine` cells, no runs.
    if label_cells:
      return label_grid.report_labels(label_cells)
    raise
  groups = group_runs(runs, ema=ema)
  if cost_json is None and any(g.row[3] for g in groups) and not Layout.of(
      paths[0]).is_run():
    cost_json = os.path.join(paths[0], COST_FILE)  # Budgets: Figure 4's data goes beside them.
  text = markdown(groups, ema=ema, minutes_per_image=minutes_per_image)
  extra = unfinished_lines(groups)
  print(text + ("\n\n" + "\n".join(extra) if extra else ""), file=sys.stdout, flush=True)
  records = tables_csv.csv_rows(groups, ema=ema, minutes_per_image=minutes_per_image)
  out: dict[str, Any] = {"runs": len(runs), "finished": sum(r.finished for r in runs),
                         "unfinished": [str(r.workdir) for r in runs
                                        if not r.finished],
                         "cells": records}
  if csv_path:
    tables_csv.write_csv(csv_path, records)
    out["csv"] = csv_path
  if cost_json:
    report.write_json(cost_json, tables_csv.cost_points(groups, ema=ema,
                                                        minutes_per_image=minutes_per_image))
    out["cost_json"] = cost_json
  report.log(f"report: {len(runs)} runs, {out['finished']} finished, "
             f"{len(out['unfinished'])} unfinished")
  return out
