"""Reading `sesam train` workdirs: config.json, result.json, metrics.jsonl, train_images.json.

A workdir is a folder holding `config.json` (written when a run starts); the run finished when its
`result.json` (written at the end of every run or resume) holds a step >= the config's
`num_steps`. Anything else (no result.json: killed or still running; a lower step, e.g. after
`num_steps` was raised) is unfinished, and the last step it logged comes from metrics.jsonl.
Used by `sesam reproduce --run` (which cells to skip) and `sesam report`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from sesam_jax import report
from sesam_jax.data import get_source

CONFIG_FILE = "config.json"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
TRAIN_IMAGES_FILE = "train_images.json"


def get_field(config: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
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
    # Mirrors sesam_jax.train.loop.make_sources, which would import jax (runs written before
    # result.json had `train_images`).
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
