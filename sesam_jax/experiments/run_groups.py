"""`sesam report`'s cells: runs grouped into table cells, every seed of one configuration.

A cell's row is (label kind, method, ablation fields that differ from the defaults, training-set
budget, init, weak-label source, SAM prior); its column (dataset, student). Runs that differ in
any of these are never averaged together. `summary` prints the groups as the paper's tables,
`tables_csv` as records (CSV) and as the cost-vs-mIoU data.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from sesam_jax import configs_common, cost, report
from sesam_jax.experiments import label_sources, paper_figures
from sesam_jax.run.runs import Run
from sesam_jax.methods import METHODS

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


def prior_of(config: Mapping[str, Any]) -> str:
  """The SAM backend (prior) of a run's config as a dict: `sam.backend`, "" without SAM."""
  method = config.get("method", "supervised")
  return str(_field(config, "sam.backend", "") or "") if _uses_sam(method) else ""


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
    row: (weak, method, variant, budget, init "pretrained" | "random", weak-label source,
      prior: the SAM backend of a SAM method, `config.sam.backend`; "" without SAM).
    runs: every run of the cell, finished or not.
  """
  column: tuple[str, str]
  row: tuple[str, str, tuple, int, str, str, str]
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

  def command(self) -> str:
    """The `sesam train` command of the cell's first run (lowest seed) that has one, or ""."""
    for run in sorted(self.runs, key=lambda r: int(r.config.get("seed", 0) or 0)):
      text = run.command()
      if text:
        return text
    return ""

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
           label_sources.source_name(c.get("weak_source", "")), prior_of(c))
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
    weak, method, variant, budget, init, *_ = group.row
    reference = groups.get((group.column, ("fine", "supervised", (), budget, init,
                                           label_sources.GENERATED, "")))
    if reference and reference.miou_mean and group.miou_mean is not None:
      group.wvf = 100.0 * group.miou_mean / reference.miou_mean
  methods = {m: i for i, m in enumerate(METHODS)}

  def order(g: Group) -> tuple:
    weak, method, variant, budget, init, source, prior = g.row
    return (g.column[0], g.column[1], budget or math.inf,
            WEAK_ORDER.index(weak) if weak in WEAK_ORDER else len(WEAK_ORDER),
            methods.get(method, len(methods)), method, len(variant), str(variant), prior, init,
            source)
  return sorted(groups.values(), key=order)


def variant_text(variant: tuple) -> str:
  """Ablation fields as "name=value, ..."."""
  return ", ".join(f"{k}={v}" for k, v in variant)


def row_fields(g: Group) -> dict[str, str]:
  """The row's headings as the table and the CSV print them."""
  weak, method, variant, budget, init, source, prior = g.row
  return {"labels": weak, "method": method, "prior": prior, "variant": variant_text(variant),
          "budget": str(budget) if budget else "all", "init": init, "labels from": source}
