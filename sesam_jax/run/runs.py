"""`open_run(workdir) -> Run`: what a finished or running training holds, read through `run/`.

A `Run` gives the run's config (its config.json as a ConfigDict), its result (result.json, None
until the run finished), its metrics rows (metrics.jsonl, one merged dict per step), the steps
that have checkpoints, and restores the latest (or a given step's) train state or only its
weights through the `Checkpointer`. `sesam eval`, `predict`, `plot`, `report`, `reproduce` and the
benchmarks open runs through it; `find_workdirs` / `open_runs` accept folders holding workdirs.

A run has finished when its result.json holds a step >= its config's num_steps (`finished`,
`finished_step`); any other run (no result.json: killed or still running; a lower step) is
unfinished, and `last_step` says how far it got. Workdirs written by earlier versions open the
same way (the layout did not change; their result.json may hold fewer or other keys).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import ml_collections

from sesam_jax.data import get_source
from sesam_jax.run import logs
from sesam_jax.run import result as result_lib
from sesam_jax.run.checkpoint import Checkpointer
from sesam_jax.run.layout import CONFIG, METRICS, RESULT, Layout

WEIGHTS = ("params", "batch_stats")  # the student's fields of the train state
EMA_WEIGHTS = ("ema_params", "ema_batch_stats")  # the EMA teacher's


@dataclasses.dataclass
class Run:
  """One workdir's contents.

  Attributes:
    workdir: the run directory, as given.
    layout: its paths (`run.layout`).
    config: config.json (a ConfigDict; lists stay lists).
    result: result.json (the run's final summary), or None when it has none.
  """
  workdir: pathlib.Path
  layout: Layout
  config: ml_collections.ConfigDict
  result: dict[str, Any] | None

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

  @property
  def finished(self) -> bool:
    """Whether result.json holds a step >= the config's num_steps."""
    return self.result is not None and int(self.result.get("step", -1)) >= int(
        self.config.num_steps)

  def metrics(self) -> list[dict[str, Any]]:
    """metrics.jsonl as one dict per step, sorted by step ([] before the first log)."""
    if not self.layout.metrics.is_file():
      return []
    return logs.read_metrics(self.workdir)

  def last_step(self) -> int | None:
    """The last step the run reached: result.json's, else the last logged, else None."""
    if self.result is not None and "step" in self.result:
      return int(self.result["step"])
    rows = self.metrics()
    return int(rows[-1]["step"]) if rows else None

  # --- checkpoints ---------------------------------------------------------------

  def checkpointer(self) -> Checkpointer:
    """The run's Checkpointer, reading only (FileNotFoundError without checkpoints/)."""
    return Checkpointer(self.workdir, create=False)

  def checkpoint_steps(self) -> list[int]:
    """Steps with a committed checkpoint, oldest first ([] when there are none)."""
    if not self.layout.checkpoints.is_dir():
      return []
    with self.checkpointer() as ckpt:
      return ckpt.steps()

  def restore_weights(self, *, ema: bool = False, step: int | None = None
                      ) -> tuple[dict[str, Any], int]:
    """Only the weights of a checkpoint, as numpy arrays (no model or optimizer needed).

    Args:
      ema: the EMA teacher's weights instead of the student's.
      step: which checkpoint; default the latest.

    Returns:
      ({"params", "batch_stats"}, step).

    Raises:
      FileNotFoundError: no checkpoint. ValueError / CheckpointError: not a readable state.
    """
    names = EMA_WEIGHTS if ema else WEIGHTS
    with self.checkpointer() as ckpt:
      arrays, step = ckpt.read_arrays(names, step)
    return dict(zip(WEIGHTS, (arrays[n] for n in names))), step

  def restore_state(self, abstract_state: Any, step: int | None = None) -> Any:
    """The whole train state of a checkpoint (default the latest), into the shardings of
    `abstract_state` (`train_state.abstract_train_state`); see `Checkpointer.restore`."""
    with self.checkpointer() as ckpt:
      return ckpt.restore(abstract_state, step=step)

  # --- what the run cost and reached -------------------------------------------

  def train_images(self) -> int:
    """Training images the run's labels cost: result.json's `train_images`, else
    `config.dataset.max_train_images` (a subset), else the size of the train split."""
    if self.result is not None and self.result.get("train_images"):
      return int(self.result["train_images"])
    d = self.config.dataset
    subset = int(d.get("max_train_images", 0) or 0)
    if subset > 0:
      return subset
    try:
      return len(dataset_source(self.config, split=d.train_split))
    except (FileNotFoundError, ValueError) as e:
      raise ValueError(f"run {self.workdir}: cannot count its training images ({e}); write "
                       f"\"train_images\" into its {RESULT}.") from None

  def command(self) -> str:
    """The `sesam train` command `sesam reproduce --run` ran here, or "" (run some other way).

    It is the first header line of reproduce.log, `# <date> <time> <command>`
    (`sesam_jax.experiments.sweep.run_plans` writes one per session; a resume repeats it).
    """
    path = self.layout.reproduce_log
    if not path.is_file():
      return ""
    with open(path, errors="replace") as f:
      for line in f:
        if line.startswith("# ") and " sesam " in f" {line}":
          parts = line[2:].rstrip("\n").split(" ", 2)
          return parts[2] if len(parts) == 3 else ""
    return ""

  def final_val_miou(self) -> tuple[float, str]:
    """(student val mIoU, where it came from): result.json, else the last logged validation."""
    if self.result is not None and self.result.get("val_miou") is not None:
      return float(self.result["val_miou"]), RESULT
    rows = logs.series(self.metrics(), "val/student_miou")
    if not rows:
      raise ValueError(f"run {self.workdir} has no {RESULT} and no val/student_miou in "
                       f"{METRICS}; let it finish (or evaluate it) first.")
    return float(rows[-1][1]), METRICS


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """`<workdir>/config.json` as a ConfigDict (lists stay lists).

  Raises:
    FileNotFoundError: no config.json (not a training workdir). ValueError: not JSON.
  """
  path = Layout.of(workdir).config
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: --workdir must be a run directory written by "
                            f"`sesam train` (it holds {CONFIG} and checkpoints/).")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); restore it from the run.") from None


def open_run(workdir: str | os.PathLike,
             config: ml_collections.ConfigDict | None = None) -> Run:
  """The run in `workdir` (finished, running or stopped); see the module docstring.

  Args:
    workdir: a run directory of `sesam train`.
    config: use this config instead of the run's config.json (`sesam eval --config`), which
      then need not exist.

  Raises:
    FileNotFoundError: `workdir` holds no config.json. ValueError: a damaged JSON file.
  """
  workdir = pathlib.Path(workdir)
  config = read_config(workdir) if config is None else config
  return Run(workdir, Layout.of(workdir), config, result_lib.read(workdir))


def find_workdirs(paths: Sequence[str | os.PathLike]) -> list[pathlib.Path]:
  """Workdirs among `paths`: each one itself if it holds config.json, else those below it."""
  found: list[pathlib.Path] = []
  for p in map(pathlib.Path, paths):
    if Layout.of(p).is_run():
      found.append(p)
    elif p.is_dir():
      below = sorted(c.parent for c in p.rglob(CONFIG))
      if not below:
        raise FileNotFoundError(f"{p} holds no run (no {CONFIG} in it or below it); pass "
                                "workdirs written by `sesam train` or a folder of them.")
      found += below
    else:
      raise FileNotFoundError(f"{p} does not exist; pass workdirs of `sesam train` runs or a "
                              "folder holding them.")
  return list(dict.fromkeys(found))


def open_runs(paths: Sequence[str | os.PathLike]) -> list[Run]:
  """`open_run` of every workdir `find_workdirs(paths)` finds."""
  return [open_run(w) for w in find_workdirs(paths)]


def finished_step(workdir: str | os.PathLike, num_steps: int) -> int | None:
  """The step of `<workdir>/result.json` when it reached `num_steps` (finished), else None."""
  result = result_lib.read(workdir)
  step = int(result.get("step", -1)) if result is not None else -1
  return step if step >= num_steps else None


def dataset_source(config: Any, *, dataset: str | None = None, data_dir: str | None = None,
                   split: str | None = None) -> Any:
  """A split of `dataset` (default: the run's), read as the run read it when it is the run's.

  Args:
    config: the run's config.
    dataset: dataset name; default `config.dataset.name`.
    data_dir: dataset root; default the run's `data_dir` when `dataset` is the run's.
    split: split name; default the run's validation split.

  Returns:
    A random-access source (`sesam_jax.data.get_source`).
  """
  d = config.dataset
  dataset = dataset or d.name
  split = split or d.val_split
  kw: dict[str, Any] = {}
  if dataset == d.name:
    data_dir = data_dir or config.get("data_dir") or None
    if dataset == "synthetic":
      # The generated scenes depend on these settings: the run's, so that ids mean the same.
      if tuple(d.image_size) != (0, 0):
        kw["size"] = tuple(d.image_size)
      count = d.num_train_images if split == d.train_split else d.num_val_images
      if count:
        kw["num_images"] = count
  return get_source(dataset, data_dir=data_dir, split=split, **kw)
