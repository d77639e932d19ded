"""Reading finished runs: each workdir's config.json, result.json and metrics.jsonl.

Shared by `sesam plot cost` and `sesam plot curves`, `sesam report` and `sesam reproduce`:
`read_runs(paths)` accepts workdirs and folders holding workdirs (searched recursively for
`config.json`), `cost_points(runs)` gives each run's annotation hours (`sesam_jax.cost`) and
val mIoU, `read_metrics(workdir)` the merged metrics.jsonl rows. A run has finished when its
result.json holds a step >= its config's num_steps (`is_finished`, `finished_step`); any other
run (no result.json: killed or still running; a lower step) is unfinished, and `last_step` says
how far it got.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from sesam_jax import cost
from sesam_jax.evaluate import predict

CONFIG_FILE = "config.json"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"


@dataclasses.dataclass
class Run:
  """One workdir's files.

  Attributes:
    workdir: the run directory.
    config: config.json (a ConfigDict).
    result: result.json (the run's final summary), or None when it has none.
  """
  workdir: pathlib.Path
  config: Any
  result: dict | None

  @property
  def weak(self) -> str:
    return self.config.weak

  @property
  def method(self) -> str:
    return self.config.method

  @property
  def kind(self) -> str:
    """The label kind and method, e.g. "scribbles, sesam" ("fine" alone for the upper bound)."""
    if self.weak == "fine" and self.method == "supervised":
      return "fine"
    return f"{self.weak}, {self.method}"


def find_workdirs(paths: Sequence[str | os.PathLike]) -> list[pathlib.Path]:
  """Workdirs among `paths`: each one itself if it holds config.json, else those below it."""
  found: list[pathlib.Path] = []
  for p in map(pathlib.Path, paths):
    if (p / CONFIG_FILE).is_file():
      found.append(p)
    elif p.is_dir():
      below = sorted(c.parent for c in p.rglob(CONFIG_FILE))
      if not below:
        raise FileNotFoundError(f"{p} holds no run (no {CONFIG_FILE} in it or below it); pass "
                                "workdirs written by `sesam train` or a folder of them.")
      found += below
    else:
      raise FileNotFoundError(f"{p} does not exist; pass workdirs of `sesam train` runs or a "
                              "folder holding them.")
  return list(dict.fromkeys(found))


def read_run(workdir: str | os.PathLike) -> Run:
  """A workdir's config.json and result.json (None when the run wrote none)."""
  workdir = pathlib.Path(workdir)
  config = ml_collections.ConfigDict(_read_json(workdir / CONFIG_FILE))
  result_path = workdir / RESULT_FILE
  result = _read_json(result_path) if result_path.is_file() else None
  return Run(workdir, config, result)


def read_runs(paths: Sequence[str | os.PathLike]) -> list[Run]:
  """`read_run` of every workdir `find_workdirs(paths)` finds."""
  return [read_run(w) for w in find_workdirs(paths)]


def _read_json(path: pathlib.Path) -> dict:
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found; is {path.parent} a `sesam train` workdir?")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); rewrite or remove it.") from None


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """metrics.jsonl as one dict per step, sorted by step.

  Rows of one step are merged (training and validation metrics are separate lines); after a
  resume a step can appear twice, and the later line wins.
  """
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found; the run has logged no metrics yet.")
  merged: dict[int, dict] = {}
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      raise ValueError(f"{path}:{number} is not a JSON object; the file is damaged.") from None
    merged.setdefault(int(row["step"]), {}).update(row)
  return [merged[s] for s in sorted(merged)]


def finished_step(workdir: str | os.PathLike, num_steps: int) -> int | None:
  """The step of `<workdir>/result.json` when it reached `num_steps` (finished), else None."""
  path = pathlib.Path(workdir) / RESULT_FILE
  if not path.is_file():
    return None
  step = int(_read_json(path).get("step", -1))
  return step if step >= num_steps else None


def is_finished(run: Run) -> bool:
  """Whether the run's result.json holds a step >= its config's num_steps."""
  return run.result is not None and int(run.result.get("step", -1)) >= int(run.config.num_steps)


def last_step(run: Run) -> int | None:
  """The last step the run reached: result.json's, else the last in metrics.jsonl, else None."""
  if run.result is not None and "step" in run.result:
    return int(run.result["step"])
  path = run.workdir / METRICS_FILE
  step = None
  if path.is_file():
    for line in path.read_text().splitlines():
      try:
        step = max(step or 0, int(json.loads(line)["step"]))
      except (ValueError, KeyError, TypeError):
        continue  # A line cut by the kill that stopped the run; the others still count.
  return step


def series(rows: Sequence[Mapping[str, Any]], key: str) -> list[list[float]]:
  """[[step, value], ...] of `key` over metrics rows (rows without it or with null skipped)."""
  return [[row["step"], row[key]] for row in rows if row.get(key) is not None]


def final_val_miou(run: Run) -> tuple[float, str]:
  """(student val mIoU, where it came from): result.json, else the last logged validation."""
  if run.result is not None and run.result.get("val_miou") is not None:
    return float(run.result["val_miou"]), RESULT_FILE
  rows = series(read_metrics(run.workdir), "val/student_miou")
  if not rows:
    raise ValueError(f"run {run.workdir} has no {RESULT_FILE} and no val/student_miou in "
                     f"{METRICS_FILE}; let it finish (or evaluate it) first.")
  return float(rows[-1][1]), METRICS_FILE


def train_images(run: Run) -> int:
  """Number of training images the run's labels cost: result.json's `train_images`, else
  `config.dataset.max_train_images` (a subset), else the size of the train split."""
  if run.result is not None and run.result.get("train_images"):
    return int(run.result["train_images"])
  d = run.config.dataset
  subset = int(d.get("max_train_images", 0) or 0)
  if subset > 0:
    return subset
  try:
    return len(predict.dataset_source(run.config, split=d.train_split))
  except (FileNotFoundError, ValueError) as e:
    raise ValueError(f"run {run.workdir}: cannot count its training images ({e}); write "
                     f"\"train_images\" into its {RESULT_FILE}.") from None


def cost_points(runs: Sequence[Run],
                minutes_per_image: Mapping[str, float] | None = None) -> list[dict]:
  """Per run: annotation hours of its training labels and its val mIoU.

  Returns:
    [{"workdir", "kind", "weak", "method", "train_images", "hours", "val_miou",
      "val_miou_from"}], in the order of `runs`.
  """
  out = []
  for run in runs:
    n = train_images(run)
    hours = cost.annotation_hours(n, minutes_per_image)
    if run.weak not in hours:
      raise ValueError(f"run {run.workdir}: no annotation cost for labels {run.weak!r}; give "
                       f"its minutes per image with --minutes {run.weak}=MIN.")
    miou, where = final_val_miou(run)
    out.append({"workdir": str(run.workdir), "kind": run.kind, "weak": run.weak,
                "method": run.method, "train_images": n, "hours": round(hours[run.weak], 4),
                "val_miou": miou, "val_miou_from": where})
  return out
