"""`sesam report`: the paper's tables from the runs' own files.

Every `sesam train` workdir holds `config.json` (the resolved config) and, once the run has
finished, `result.json` (see `sesam_jax.train.loop.train_and_evaluate`). `report()` reads every
workdir under the given paths and prints one markdown table in the paper's layout:

  rows     label kind x method (plus the ablation fields that differ from the defaults, and
           the training-set budget `dataset.max_train_images` where one is set)
  columns  dataset x student, each with: val mIoU in % (student, or EMA teacher with `ema`),
           mean ± std over seeds (sample std); WvF in %: mIoU over that of the weak=fine
           supervised run of the same dataset, student and budget; annotation hours of the
           training labels (`sesam_jax.cost`: minutes per image of the label kind x training
           images); label-source coverage at the last logged step (weak / SAM / pseudo-label
           pixels, % of the batch); wall time (train + SAM pre-warm + eval seconds, mean)

A run is finished when its result.json holds a step >= its config's num_steps; any other run
(no result.json: killed or still running; a lower step) is listed as unfinished with the last
step it logged, never left out.

The cost-vs-mIoU data (Figure 4) is written with `cost_json`, in this format (version 1):

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
import json
import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from sesam_jax import cost, report

CONFIG_FILE = "config.json"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
TRAIN_IMAGES_FILE = "train_images.json"
# Config fields that make an ablation row (Tables 3-4) when they differ from the defaults;
# fields this version's config lacks are simply absent from older or newer runs.
ABLATION_FIELDS = ("sam.instances", "sam.selection", "sam.sampling", "sam.prompt",
                   "sam.refined_sampling", "loss.merge_weak_sam")
WEAK_ORDER = ("points", "scribbles", "coarse", "fine")
COVERAGE = ("weak", "sam", "pseudo")
_MISSING = object()


def get_field(config: Mapping[str, Any], dotted: str, default: Any = _MISSING) -> Any:
  """`config["a"]["b"]` for "a.b" in a config read from JSON (default when absent)."""
  node: Any = config
  for part in dotted.split("."):
    if not isinstance(node, Mapping) or part not in node:
      return default
    node = node[part]
  return node


@dataclasses.dataclass
class Run:
  """One workdir.

  Attributes:
    workdir: the run directory.
    config: config.json as a dict.
    result: result.json, or None when the run wrote none.
    finished: result.json holds a step >= the config's num_steps.
    step: the last step known (result.json, else metrics.jsonl), or None.
  """
  workdir: str
  config: dict
  result: dict | None
  finished: bool
  step: int | None

  @property
  def num_steps(self) -> int:
    return int(self.config["num_steps"])


def read_json(path: str) -> dict:
  """A JSON file; one line naming the file when it is not JSON."""
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); rewrite or remove it.") from None


def last_logged_step(workdir: str) -> int | None:
  """The highest step in `<workdir>/metrics.jsonl`, or None."""
  path = os.path.join(workdir, METRICS_FILE)
  step = None
  if os.path.isfile(path):
    with open(path) as f:
      for line in f:
        try:
          step = max(step or 0, int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
          continue  # A line cut by a kill; the others still count.
  return step


def finished_step(workdir: str, num_steps: int) -> int | None:
  """The step of `<workdir>/result.json` if it says the run reached `num_steps`, else None."""
  path = os.path.join(workdir, RESULT_FILE)
  if not os.path.isfile(path):
    return None
  try:
    step = int(read_json(path).get("step", -1))
  except ValueError:
    return None  # Half-written by a crash: the run is not finished.
  return step if step >= num_steps else None


def read_run(workdir: str) -> Run:
  """A workdir's config.json and result.json."""
  config = read_json(os.path.join(workdir, CONFIG_FILE))
  if "num_steps" not in config:
    raise ValueError(f"{os.path.join(workdir, CONFIG_FILE)} has no num_steps; is {workdir} a "
                     "`sesam train` workdir?")
  path = os.path.join(workdir, RESULT_FILE)
  result = None
  if os.path.isfile(path):
    try:
      result = read_json(path)
    except ValueError:
      result = None
  step = int(result["step"]) if result and "step" in result else last_logged_step(workdir)
  finished = result is not None and step is not None and step >= int(config["num_steps"])
  return Run(workdir, config, result, finished, step)


def find_workdirs(paths: Sequence[str]) -> list[str]:
  """Workdirs among `paths`: each path holding config.json, else every such folder below it."""
  found: list[str] = []
  for path in paths:
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
      found.append(path)
      continue
    if not os.path.isdir(path):
      raise FileNotFoundError(f"{path} does not exist; pass `sesam train` workdirs or folders "
                              "holding them (e.g. the --workdir-root of `sesam reproduce`).")
    below = []
    for folder, subdirs, files in os.walk(path):
      subdirs.sort()
      if CONFIG_FILE in files:
        below.append(folder)
        subdirs.clear()  # A workdir's own folders (checkpoints/, ...) hold no other runs.
    if not below:
      raise FileNotFoundError(f"{path} holds no run (no {CONFIG_FILE} in it or below it); pass "
                              "workdirs written by `sesam train` or a folder of them.")
    found += below
  return list(dict.fromkeys(os.path.normpath(p) for p in found))


def _uses_sam(method: str) -> bool:
  from sesam_jax.train.methods import METHODS
  return METHODS[method].uses_sam if method in METHODS else True


def _defaults() -> dict:
  from sesam_jax import config_lib
  return config_lib.base_config().to_dict()


def variant_of(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> tuple:
  """The ablation fields of a run that differ from the defaults, ((name, value), ...)."""
  method = config.get("method", "supervised")
  out = []
  for name in ABLATION_FIELDS:
    value = get_field(config, name)
    if value is _MISSING or (name.startswith("sam.") and not _uses_sam(method)):
      continue  # SAM settings mean nothing to a run without SAM.
    if name == "loss.merge_weak_sam" and method != "sesam":
      continue
    if value != get_field(defaults, name, value):
      out.append((name.rsplit(".", 1)[-1], value))
  return tuple(out)


_train_image_counts: dict[tuple, int | None] = {}


def train_images(run: Run) -> int | None:
  """Training images the run's labels cost: result.json's `train_images`, the subset in
  train_images.json, else the size of the config's train split (None if it cannot be read)."""
  if run.result and run.result.get("train_images"):
    return int(run.result["train_images"])
  subset = os.path.join(run.workdir, TRAIN_IMAGES_FILE)
  if os.path.isfile(subset):
    return int(read_json(subset)["count"])
  d = run.config.get("dataset", {})
  if d.get("max_train_images"):
    return None  # A subset run that never wrote its subset: nothing trained yet.
  key = (d.get("name"), run.config.get("data_dir"), d.get("train_split"),
         d.get("num_train_images"), tuple(d.get("image_size") or ()))
  if key not in _train_image_counts:
    # Mirrors sesam_jax.train.loop.make_sources without importing jax.
    from sesam_jax.data import get_source
    kw: dict[str, Any] = {}
    if run.config.get("data_dir"):
      kw["data_dir"] = run.config["data_dir"]
    if d.get("name") == "synthetic":
      if tuple(d.get("image_size") or (0, 0)) != (0, 0):
        kw["size"] = tuple(d["image_size"])
      if d.get("num_train_images"):
        kw["num_images"] = d["num_train_images"]
    try:
      _train_image_counts[key] = len(get_source(d["name"], split=d.get("train_split", "train"),
                                                **kw))
    except (FileNotFoundError, ValueError, OSError, KeyError) as e:
      report.log(f"report: cannot count the training images of {run.workdir} ({e}); its "
                 "annotation hours are left blank")
      _train_image_counts[key] = None
  return _train_image_counts[key]


@dataclasses.dataclass
class Group:
  """The runs of one table cell (all seeds of one configuration).

  Attributes:
    column: (dataset, model).
    row: (weak, method, variant, budget).
    runs: every run of the cell, finished or not.
  """
  column: tuple[str, str]
  row: tuple[str, str, tuple, int]
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
  from sesam_jax.train.methods import METHODS
  defaults = _defaults()
  key_name = "val_miou_ema" if ema else "val_miou"
  groups: dict[tuple, Group] = {}
  for run in runs:
    c = run.config
    column = (c["dataset"]["name"], c["model"])
    row = (c["weak"], c["method"], variant_of(c, defaults),
           int(c["dataset"].get("max_train_images", 0) or 0))
    group = groups.setdefault((column, row), Group(column, row))
    group.runs.append(run)
    if run.finished:
      value = run.result.get(key_name)
      if value is None:
        raise ValueError(f"{os.path.join(run.workdir, RESULT_FILE)} has no {key_name}"
                         f"{' (the run had config.eval.ema off)' if ema else ''}; "
                         f"{'drop --ema or ' if ema else ''}re-evaluate it with `sesam eval`.")
      group.miou.append(float(value))
  for group in groups.values():
    weak, method, variant, budget = group.row
    reference = groups.get((group.column, ("fine", "supervised", (), budget)))
    if reference and reference.miou_mean and group.miou_mean is not None:
      group.wvf = 100.0 * group.miou_mean / reference.miou_mean
  methods = {m: i for i, m in enumerate(METHODS)}

  def order(g: Group) -> tuple:
    weak, method, variant, budget = g.row
    return (g.column[0], g.column[1], budget or math.inf,
            WEAK_ORDER.index(weak) if weak in WEAK_ORDER else len(WEAK_ORDER),
            methods.get(method, len(methods)), method, len(variant), str(variant))
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
  weak, method, variant, budget = g.row
  return {"labels": weak, "method": method, "variant": _variant_text(variant),
          "budget": str(budget) if budget else "all"}


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
  heads = list(row_heads)
  for dataset, model in columns:
    heads += [f"{model} {dataset}: mIoU", "WvF", "hours", "coverage w/s/p %", "wall"]
  lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
  for row in rows:
    first = next(g for g in groups if g.row == row)
    cells = [_row_fields(first)[h] for h in row_heads]
    for column in columns:
      g = by_key.get((column, row))
      if g is None:
        cells += ["", "", "", "", ""]
        continue
      cells += [_miou_text(g), "-" if g.wvf is None else f"{g.wvf:.1f}",
                _hours(g.hours(minutes_per_image)),
                _coverage_text(g), _duration(g.wall_seconds())]
    lines.append("| " + " | ".join(cells) + " |")
  who = "EMA teacher" if ema else "student"
  lines.append("")
  lines.append(f"val mIoU ({who}) in %, mean ± std over seeds; WvF: % of the weak=fine "
               "supervised run of the same dataset, student and budget; hours: annotation "
               "hours of the training labels (sesam_jax/cost.py); coverage: weak/SAM/pseudo-"
               "label pixels at the last logged step; wall: train + SAM pre-warm + eval.")
  return "\n".join(lines)


def unfinished_lines(groups: Sequence[Group]) -> list[str]:
  """One line per unfinished run: what it is, how far it got, where it is."""
  out = []
  for g in groups:
    for run in g.unfinished:
      weak, method, variant, budget = g.row
      what = " ".join(p for p in (g.column[0], g.column[1], weak, method, _variant_text(variant),
                                  f"budget {budget}" if budget else "") if p)
      where = ("no step logged yet" if run.step is None
               else f"step {run.step} of {run.num_steps}")
      out.append(f"- unfinished: {what} seed {run.config.get('seed', 0)} ({where}): {run.workdir}")
  return out


def csv_rows(groups: Sequence[Group], *, ema: bool = False,
             minutes_per_image: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
  """The table as flat records (one per cell), the numbers unrounded."""
  out = []
  for g in groups:
    fields = _row_fields(g)
    coverage = {f"coverage_{k}_pct": _scaled(g.mean(f"final_coverage_{k}")) for k in COVERAGE}
    out.append({"dataset": g.column[0], "model": g.column[1], **fields,
                "miou_pct": _scaled(g.miou_mean), "miou_std_pct": _scaled(g.miou_std),
                "miou_of": "ema" if ema else "student", "wvf_pct": g.wvf,
                "train_images": g.train_images(), "hours": g.hours(minutes_per_image),
                **coverage, "wall_seconds": g.wall_seconds(), "runs": len(g.runs),
                "finished": len(g.finished),
                "status": "finished" if not g.unfinished else
                          ("unfinished" if not g.finished else "partly finished"),
                "unfinished_workdirs": ";".join(r.workdir for r in g.unfinished),
                "workdirs": ";".join(r.workdir for r in g.runs)})
  return out


def _scaled(value: float | None) -> float | None:
  return None if value is None else 100.0 * value


def cost_points(groups: Sequence[Group], *, ema: bool = False,
                minutes_per_image: Mapping[str, float] | None = None) -> dict[str, Any]:
  """The data of the cost-vs-mIoU plot (Figure 4), in the format of the module docstring."""
  minutes = dict(minutes_per_image or cost.MINUTES_PER_IMAGE)
  lines: dict[tuple, dict] = {}
  for g in groups:
    hours = g.hours(minutes)
    if not g.miou or hours is None:
      continue
    weak, method, variant, _ = g.row
    reference = weak == "fine" and method == "supervised" and not variant
    label = "fine" if reference else f"{weak}, {method}"
    if variant:
      label += f" ({_variant_text(variant)})"
    line = lines.setdefault((g.column, weak, method, variant), {
        "label": label, "weak": weak, "method": method, "variant": _variant_text(variant),
        "dataset": g.column[0], "model": g.column[1], "reference": reference, "points": []})
    line["points"].append({
        "hours": round(hours, 4), "val_miou": g.miou_mean, "val_miou_std": g.miou_std,
        "seeds": len(g.miou), "train_images": g.train_images(),
        "workdir": g.finished[0].workdir, "workdirs": [r.workdir for r in g.finished],
        "val_miou_from": RESULT_FILE})
  for line in lines.values():
    line["points"].sort(key=lambda p: p["hours"])
  if len({key[0] for key in lines}) > 1:  # Several datasets/students: say which in the label.
    for (column, *_), line in lines.items():
      line["label"] = f"{column[1]} {column[0]}: {line['label']}"
  return {"format": "sesam-cost-points/1", "x": "annotation hours",
          "y": f"val mIoU ({'EMA teacher' if ema else 'student'})",
          "minutes_per_image": minutes, "lines": list(lines.values()),
          "unfinished": [r.workdir for g in groups for r in g.unfinished]}


def report_runs(paths: Sequence[str], *, ema: bool = False, csv_path: str | None = None,
                cost_json: str | None = None,
                minutes_per_image: Mapping[str, float] | None = None) -> dict[str, Any]:
  """Prints the table of every run under `paths` (`sesam report`) on stdout.

  Args:
    paths: workdirs, or folders holding them.
    ema: report the EMA teacher's val mIoU instead of the student's.
    csv_path: also write the table as CSV here (atomically).
    cost_json: also write the cost-vs-mIoU data (Figure 4) here, as JSON.
    minutes_per_image: the cost model (default `sesam_jax.cost.MINUTES_PER_IMAGE`).

  Returns:
    {"runs", "finished", "unfinished": [workdir, ...], "cells": the CSV records, and "csv" /
    "cost_json" when written}.
  """
  runs = [read_run(w) for w in find_workdirs(paths)]
  groups = group_runs(runs, ema=ema)
  text = markdown(groups, ema=ema, minutes_per_image=minutes_per_image)
  extra = unfinished_lines(groups)
  print(text + ("\n\n" + "\n".join(extra) if extra else ""), file=sys.stdout, flush=True)
  records = csv_rows(groups, ema=ema, minutes_per_image=minutes_per_image)
  out: dict[str, Any] = {"runs": len(runs), "finished": sum(r.finished for r in runs),
                         "unfinished": [r.workdir for r in runs if not r.finished],
                         "cells": records}
  if csv_path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]) if records else ["dataset"])
    writer.writeheader()
    writer.writerows(records)
    report.write_text(csv_path, buffer.getvalue())
    out["csv"] = csv_path
  if cost_json:
    report.write_json(cost_json, cost_points(groups, ema=ema, minutes_per_image=minutes_per_image))
    out["cost_json"] = cost_json
  report.log(f"report: {len(runs)} runs, {out['finished']} finished, "
             f"{len(out['unfinished'])} unfinished")
  return out
