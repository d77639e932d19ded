"""`sesam report`: the paper's tables from the runs' own files.

Every `sesam train` workdir holds `config.json` (the resolved config) and, once the run has
finished, `result.json` (its keys: `sesam_jax.run.result.FIELDS`). `report_runs()` reads every
workdir under the given paths and prints one markdown table in the paper's layout:

  rows     label kind x method (plus the ablation fields that differ from the defaults, and
           the training-set budget `dataset.max_train_images` where one is set) x the student's
           init (pretrained: `config.init` set, or random) x where the weak labels came from
           (`config.weak_source`: generated, or the reader of the user's labels); runs that
           differ in any of these are never averaged together
  columns  dataset x student, each with: val mIoU in % (student, or EMA teacher with `ema`),
           mean ± std over seeds (sample std); where the paper reports the cell
           (`paper_figures`; the table from the workdir's `tableN` folder), its figure and the
           difference; WvF in %: mIoU over that of the weak=fine
           supervised run of the same dataset, student and budget; annotation hours of the
           training labels (`sesam_jax.cost`: minutes per image of the label kind x training
           images); label-source coverage at the last logged step (weak / SAM / pseudo-label
           pixels, % of the batch); wall time (train + SAM pre-warm + eval seconds, mean)

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

import csv
import dataclasses
import io
import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from sesam_jax import configs_common, cost, report
from sesam_jax.atomic import write_atomic
from sesam_jax.experiments import bench_grid, label_grid, label_sources, paper_figures
from sesam_jax.run import runs as runs_lib
from sesam_jax.run.layout import RESULT, Layout
from sesam_jax.run.runs import Run
from sesam_jax.methods import METHODS

COST_FILE = "cost_points.json"  # Figure 4's data, written beside runs with budgets
# Config fields that make an ablation row (Tables 3-4) when they differ from the defaults;
# fields this version's config lacks are simply absent from older or newer runs.
ABLATION_FIELDS = ("sam.instances", "sam.selection", "sam.sampling", "sam.prompt",
                   "sam.refined_sampling", "loss.merge_weak_sam")
WEAK_ORDER = ("points", "scribbles", "coarse", "fine")
COVERAGE = ("weak", "sam", "pseudo")
_ABSENT = object()


def _uses_sam(method: str) -> bool:
  return METHODS[method].uses_sam if method in METHODS else True


def _field(config: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
  """`config["a"]["b"]` for "a.b" in a config as a dict (default when absent)."""
  node: Any = config
  for part in dotted.split("."):
    if not isinstance(node, Mapping) or part not in node:
      return default
    node = node[part]
  return node


_counted: dict[str, int | None] = {}


def train_images(run: Run) -> int | None:
  """`Run.train_images`, or None (said once) when the run's split cannot be read."""
  key = str(run.workdir)
  if key not in _counted:
    try:
      _counted[key] = run.train_images()
    except ValueError as e:
      report.log(f"report: {e}; its annotation hours are left blank")
      _counted[key] = None
  return _counted[key]


def variant_of(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> tuple:
  """The ablation fields of a run that differ from the defaults, ((name, value), ...)."""
  method = config.get("method", "supervised")
  out = []
  for name in ABLATION_FIELDS:
    value = _field(config, name, _ABSENT)
    if value is _ABSENT or (name.startswith("sam.") and not _uses_sam(method)):
      continue  # SAM settings mean nothing to a run without SAM.
    if name == "loss.merge_weak_sam" and method != "sesam":
      continue
    if value != _field(defaults, name, value):
      out.append((name.rsplit(".", 1)[-1], value))
  return tuple(out)


@dataclasses.dataclass
class Group:
  """The runs of one table cell (all seeds of one configuration).

  Attributes:
    column: (dataset, model).
    row: (weak, method, variant, budget, init "pretrained" | "random", weak-label source).
    runs: every run of the cell, finished or not.
  """
  column: tuple[str, str]
  row: tuple[str, str, tuple, int, str, str]
  runs: list[Run] = dataclasses.field(default_factory=list)
  miou: list[float] = dataclasses.field(default_factory=list)
  wvf: float | None = None

  @property
  def finished(self) -> list[Run]:
    return [r for r in self.runs if r.finished]

  @property
  def unfinished(self) -> list[Run]:
    return [r for r in self.runs if not r.finished]

  @property
  def miou_mean(self) -> float | None:
    return statistics.fmean(self.miou) if self.miou else None

  @property
  def miou_std(self) -> float | None:
    return statistics.stdev(self.miou) if len(self.miou) > 1 else None

  def paper(self) -> float | None:
    """The paper's mIoU (%) of this cell, or None."""
    weak, method, variant, budget, *_ = self.row
    return paper_figures.paper_miou(paper_figures.table_of(self.runs[0].workdir), *self.column,
                                    weak, method, variant, budget)

  def paper_diff(self) -> float | None:
    """This cell's mIoU minus the paper's, in points of %."""
    paper = self.paper()
    return None if paper is None or self.miou_mean is None else 100 * self.miou_mean - paper

  def mean(self, key: str) -> float | None:
    """Mean of a result.json field over the finished runs that have it."""
    values = [float(r.result[key]) for r in self.finished if r.result.get(key) is not None]
    return statistics.fmean(values) if values else None

  def wall_seconds(self) -> float | None:
    values = [sum(float(r.result.get(k) or 0.0) for k in
                  ("train_seconds", "prewarm_seconds", "eval_seconds")) for r in self.finished]
    return statistics.fmean(values) if values else None

  def train_images(self) -> int | None:
    counts = [n for n in (train_images(r) for r in self.finished) if n is not None]
    return round(statistics.fmean(counts)) if counts else None

  def hours(self, minutes_per_image: Mapping[str, float] | None = None) -> float | None:
    n, weak = self.train_images(), self.row[0]
    if n is None:
      return None
    return cost.annotation_hours(n, minutes_per_image).get(weak)


def group_runs(runs: Sequence[Run], *, ema: bool = False) -> list[Group]:
  """Runs grouped into table cells (seeds together), in the paper's order, with WvF."""
  defaults = configs_common.base_config().to_dict()
  key_name = "val_miou_ema" if ema else "val_miou"
  groups: dict[tuple, Group] = {}
  for run in runs:
    c = run.config.to_dict()
    column = (c["dataset"]["name"], c["model"])
    row = (c["weak"], c["method"], variant_of(c, defaults),
           int(c["dataset"].get("max_train_images", 0) or 0),
           "pretrained" if c.get("init") else "random",
           label_sources.source_name(c.get("weak_source", "")))
    group = groups.setdefault((column, row), Group(column, row))
    group.runs.append(run)
    if run.finished:
      value = run.result.get(key_name)
      if value is None:
        raise ValueError(f"{run.layout.result} has no {key_name}"
                         f"{' (the run had config.eval.ema off)' if ema else ''}; "
                         f"{'drop --ema or ' if ema else ''}re-evaluate it with `sesam eval`.")
      group.miou.append(float(value))
  for group in groups.values():
    weak, method, variant, budget, init, _ = group.row
    reference = groups.get((group.column, ("fine", "supervised", (), budget, init,
                                           label_sources.GENERATED)))
    if reference and reference.miou_mean and group.miou_mean is not None:
      group.wvf = 100.0 * group.miou_mean / reference.miou_mean
  methods = {m: i for i, m in enumerate(METHODS)}

  def order(g: Group) -> tuple:
    weak, method, variant, budget, init, source = g.row
    return (g.column[0], g.column[1], budget or math.inf,
            WEAK_ORDER.index(weak) if weak in WEAK_ORDER else len(WEAK_ORDER),
            methods.get(method, len(methods)), method, len(variant), str(variant), init, source)
  return sorted(groups.values(), key=order)


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


def _variant_text(variant: tuple) -> str:
  return ", ".join(f"{k}={v}" for k, v in variant)


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


def _row_fields(g: Group) -> dict[str, str]:
  weak, method, variant, budget, init, source = g.row
  return {"labels": weak, "method": method, "variant": _variant_text(variant),
          "budget": str(budget) if budget else "all", "init": init, "labels from": source}


def _signed(value: float | None) -> str:
  return "-" if value is None else f"{value:+.1f}"


def markdown(groups: Sequence[Group], *, ema: bool = False,
             minutes_per_image: Mapping[str, float] | None = None) -> str:
  """The paper-layout table: one row per (labels, method, variant, budget), column groups per
  (dataset, student) with mIoU, WvF, hours, coverage and wall time."""
  columns = list(dict.fromkeys(g.column for g in groups))
  rows = list(dict.fromkeys(g.row for g in groups))
  by_key = {(g.column, g.row): g for g in groups}
  row_heads = ["labels", "method"]
  if any(r[2] for r in rows):
    row_heads.append("variant")
  if any(r[3] for r in rows):
    row_heads.append("budget")
  row_heads += ["init", "labels from"]
  with_paper = any(g.paper() is not None for g in groups)
  heads = list(row_heads)
  for dataset, model in columns:
    heads += [f"{model} {dataset}: mIoU"] + (["paper", "Δ"] if with_paper else []) + [
        "WvF", "hours", "coverage w/s/p %", "wall"]
  lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
  for row in rows:
    first = next(g for g in groups if g.row == row)
    cells = [_row_fields(first)[h] for h in row_heads]
    for column in columns:
      g = by_key.get((column, row))
      if g is None:
        cells += [""] * (7 if with_paper else 5)
        continue
      paper = [("-" if g.paper() is None else f"{g.paper():.1f}"), _signed(g.paper_diff())]
      cells += [_miou_text(g)] + (paper if with_paper else []) + [
                "-" if g.wvf is None else f"{g.wvf:.1f}",
                _hours(g.hours(minutes_per_image)),
                _coverage_text(g), _duration(g.wall_seconds())]
    lines.append("| " + " | ".join(cells) + " |")
  who = "EMA teacher" if ema else "student"
  lines.append("")
  lines.append(f"val mIoU ({who}) in %, mean ± std over seeds; WvF: % of the weak=fine "
               "supervised run of the same dataset, student and budget; hours: annotation "
               "hours of the training labels (sesam_jax/cost.py); coverage: weak/SAM/pseudo-"
               "label pixels at the last logged step; wall: train + SAM pre-warm + eval; init: "
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
      what = " ".join(p for p in (g.column[0], g.column[1], weak, method, _variant_text(variant),
                                  f"budget {budget}" if budget else "") if p)
      step = run.last_step()
      where = "no step logged yet" if step is None else f"step {step} of {run.config.num_steps}"
      out.append(f"- unfinished: {what} seed {run.config.get('seed', 0)} ({where}): {run.workdir}")
  return out


def csv_rows(groups: Sequence[Group], *, ema: bool = False,
             minutes_per_image: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
  """The table as flat records (one per cell), numbers rounded to 4 decimals."""
  out = []
  for g in groups:
    fields = _row_fields(g)
    coverage = {f"coverage_{k}_pct": _scaled(g.mean(f"final_coverage_{k}")) for k in COVERAGE}
    out.append({"dataset": g.column[0], "model": g.column[1], **fields,
                "miou_pct": _scaled(g.miou_mean), "miou_std_pct": _scaled(g.miou_std),
                "miou_of": "ema" if ema else "student", "paper_miou_pct": g.paper(),
                "miou_diff_pct": _round(g.paper_diff()), "wvf_pct": _round(g.wvf),
                "train_images": g.train_images(), "hours": _round(g.hours(minutes_per_image)),
                **coverage, "wall_seconds": _round(g.wall_seconds()), "runs": len(g.runs),
                "finished": len(g.finished),
                "status": "finished" if not g.unfinished else
                          ("unfinished" if not g.finished else "partly finished"),
                "unfinished_workdirs": ";".join(str(r.workdir) for r in g.unfinished),
                "workdirs": ";".join(str(r.workdir) for r in g.runs)})
  return out


def _round(value: float | None) -> float | None:
  return None if value is None else round(value, 4)


def _scaled(value: float | None) -> float | None:
  return None if value is None else round(100.0 * value, 4)


def cost_points(groups: Sequence[Group], *, ema: bool = False,
                minutes_per_image: Mapping[str, float] | None = None) -> dict[str, Any]:
  """The data of the cost-vs-mIoU plot (Figure 4), in the format of the module docstring."""
  minutes = dict(minutes_per_image or cost.MINUTES_PER_IMAGE)
  lines: dict[tuple, dict] = {}
  mixed = len({g.row[4:] for g in groups}) > 1  # Several inits or label sources: name them.
  for g in groups:
    hours = g.hours(minutes)
    if not g.miou or hours is None:
      continue
    weak, method, variant, _, init, source = g.row
    reference = weak == "fine" and method == "supervised" and not variant
    label = "fine" if reference else f"{weak}, {method}"
    if variant:
      label += f" ({_variant_text(variant)})"
    if mixed:
      label += f" [{init}, {source}]"
    line = lines.setdefault((g.column, weak, method, variant, init, source), {
        "label": label, "weak": weak, "method": method, "variant": _variant_text(variant),
        "dataset": g.column[0], "model": g.column[1], "reference": reference, "points": []})
    line["points"].append({
        "hours": round(hours, 4), "val_miou": g.miou_mean, "val_miou_std": g.miou_std,
        "seeds": len(g.miou), "train_images": g.train_images(),
        "workdir": str(g.finished[0].workdir), "workdirs": [str(r.workdir) for r in g.finished],
        "val_miou_from": RESULT})
  for line in lines.values():
    line["points"].sort(key=lambda p: p["hours"])
  if len({key[0] for key in lines}) > 1:  # Several datasets/students: say which in the label.
    for (column, *_), line in lines.items():
      line["label"] = f"{column[1]} {column[0]}: {line['label']}"
  return {"format": "sesam-cost-points/1", "x": "annotation hours",
          "y": f"val mIoU ({'EMA teacher' if ema else 'student'})",
          "minutes_per_image": minutes, "lines": list(lines.values()),
          "unfinished": [str(r.workdir) for g in groups for r in g.unfinished]}


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
  records = csv_rows(groups, ema=ema, minutes_per_image=minutes_per_image)
  out: dict[str, Any] = {"runs": len(runs), "finished": sum(r.finished for r in runs),
                         "unfinished": [str(r.workdir) for r in runs
                                        if not r.finished],
                         "cells": records}
  if csv_path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]) if records else ["dataset"])
    writer.writeheader()
    writer.writerows(records)
    write_atomic(csv_path, buffer.getvalue())
    out["csv"] = csv_path
  if cost_json:
    report.write_json(cost_json, cost_points(groups, ema=ema, minutes_per_image=minutes_per_image))
    out["cost_json"] = cost_json
  report.log(f"report: {len(runs)} runs, {out['finished']} finished, "
             f"{len(out['unfinished'])} unfinished")
  return out
