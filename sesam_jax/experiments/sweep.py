"""`sesam reproduce`: the `sesam train` command of every cell of a table, printed or run.

Each cell of `grid.expand()` becomes one command with its own workdir under the sweep's root,
named from the cell (`ROOT/table2/cityscapes/segformer_b0/scribbles/sesam/seed0`). The command
is checked by loading its config as `sesam train` would (`config_lib.config_from_flags`), so a
typo in an extra `--config.*` flag stops here, before any run. A cell whose ablation field the
config lacks (a config of the user's own, say, without `sam.refined_sampling`) is left out with
the reason.

`run_plans()` runs the commands one after another, each in its own process (its output appended
to `<workdir>/reproduce.log`), skipping workdirs whose result.json says they finished; the
training loop resumes an interrupted run from its checkpoint, so an interrupted sweep resumes
with the same command.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sesam_jax import config_lib, report
from sesam_jax.experiments import bench_grid, grid, label_grid, label_sources, preflight
from sesam_jax.experiments import weights as weights_lib
from sesam_jax.experiments.preflight import (DATA_DIR_PLACEHOLDER, INIT_PLACEHOLDER,
                                             SAM_CHECKPOINT_PLACEHOLDER, missing_inputs)
from sesam_jax.run import result as result_lib, runs as runs_lib
from sesam_jax.sam import resolver
from sesam_jax.methods import METHODS, get_method

# Datasets whose grids train from random students (no paper figure to reach).
NO_WEIGHTS_DATASETS = ("synthetic", "camvid")


@dataclasses.dataclass(frozen=True)
class Plan:
  """A cell's command.

  Attributes:
    cell: the cell.
    argv: the command, starting with "sesam".
    workdir: its --workdir.
    num_steps: the config's num_steps (a result.json at this step means finished).
    model: the student the config trains.
    placeholders: the placeholder values the command still holds.
    init: "pretrained" (`config.init` set) or "random".
    weak_source: `config.weak_source` ("" = made from the fine labels).
  """
  cell: grid.Cell
  argv: tuple[str, ...]
  workdir: str
  num_steps: int
  model: str
  placeholders: tuple[str, ...] = ()
  init: str = "random"
  weak_source: str = ""

  @property
  def command(self) -> str:
    return shlex.join(self.argv)

  @property
  def init_text(self) -> str:
    """"pretrained (FILE)" or "random", as the dry run prints it."""
    paths = [a.partition("=")[2] for a in self.argv if a.startswith("--config.init=")]
    return f"pretrained ({paths[-1]})" if paths and paths[-1] else "random"


def _flag_value(value: Any) -> str:
  if isinstance(value, bool):
    return "true" if value else "false"
  return str(value)


def _has_field(config: Any, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def plan_cells(cells: Sequence[grid.Cell], *, root: str, configs_dir: str = "configs",
               config_args: str = "", sam_backend: str = "transformers",
               sam_checkpoint: str | None = None, data_dirs: Mapping[str, str] | None = None,
               extra: Sequence[str] = (), inits: Mapping[str, str] | None = None,
               require_init: bool = False,
               weak_sources: Mapping[tuple[str, str], str] | None = None
               ) -> tuple[list[Plan], list[dict[str, str]]]:
  """The command of every cell, and the cells left out because the config lacks a field.

  Args:
    cells: from `grid.expand`.
    root: the sweep's root folder (workdirs below it).
    configs_dir: the folder of `<student>_<dataset>.py` config files.
    config_args: more `key=val` arguments for each config file (e.g. "runlocal").
    sam_backend, sam_checkpoint: `config.sam.backend` / `.checkpoint` of cells that use SAM
      and name no backend of their own (`Cell.sam_backend`, which wins); a backend that needs
      weights and no checkpoint gets SAM_CHECKPOINT_PLACEHOLDER.
    data_dirs: dataset -> data_dir; a dataset whose config has none gets DATA_DIR_PLACEHOLDER.
    extra: `--config.a.b=value` flags added to every command (checked here).
    inits: student (`config.model`) -> converted ImageNet weights, its cells' `config.init`.
    require_init: a student without weights gets INIT_PLACEHOLDER (the paper's schedules),
      except on NO_WEIGHTS_DATASETS; otherwise it starts from random weights.
    weak_sources: (dataset, weak kind) -> `config.weak_source` ("" or absent: generated).

  Returns:
    (plans, left_out: [{"what", "why"}]).
  """
  for flag in extra:
    name = flag.partition("=")[0]
    if any(name == f"--config.{f}" for c in cells for f, _ in c.fields):
      raise ValueError(f"{name} is what the table's cells vary; pick cells with --weak/--methods "
                       "instead of overriding it.")
  plans, left_out, seen = [], [], set()
  for cell in cells:
    path = os.path.join(configs_dir, f"{cell.student}_{cell.dataset}.py")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"config file {path} not found (student {cell.student}, dataset "
                              f"{cell.dataset}); run from the repository root or give "
                              "--configs-dir.")
    spec = f"{path}:weak={cell.weak},method={cell.method}" + (f",{config_args}"
                                                                 if config_args else "")
    config = config_lib.load_config(spec)
    missing = [f for f, _ in cell.fields if not _has_field(config, f)]
    if missing:
      left_out.append({"what": f"{cell.table} {cell.dataset} {cell.weak} {cell.method} "
                               f"{grid.variant_slug(cell.fields)} seed {cell.seed} "
                               f"({'; '.join(cell.rows)})",
                       "why": f"its config {path} has no field {', '.join(missing)}, which this "
                              "run sets; add the field to the config to run it"})
      continue
    flags = [f"--config.seed={cell.seed}"]
    if cell.budget:
      flags.append(f"--config.dataset.max_train_images={cell.budget}")
    flags += [f"--config.{f}={_flag_value(v)}" for f, v in cell.fields]
    placeholders = []
    if get_method(cell.method).uses_sam and cell.sam_backend is None:  # Else the cell's prior.
      flags.append(f"--config.sam.backend={sam_backend}")
      if sam_checkpoint:
        flags.append(f"--config.sam.checkpoint={sam_checkpoint}")
      elif resolver.needs_weights(sam_backend):
        flags.append(f"--config.sam.checkpoint={SAM_CHECKPOINT_PLACEHOLDER}")
        placeholders.append(SAM_CHECKPOINT_PLACEHOLDER)
    table = grid.TABLES.get(cell.table)
    if get_method(cell.method).uses_sam and table is not None and table.shared_sam_cache:
      flags.append(f"--config.sam.cache_dir={os.path.join(root, cell.table, 'sam_cache')}")
    source = (weak_sources or {}).get((cell.dataset, cell.weak), "")
    if source:
      flags.append(f"--config.weak_source={source}")
    init = _init_flag(cell, _model_of(config, extra), inits or {}, require_init, extra)
    if init:
      flags.append(f"--config.init={init}")
      if init.startswith(INIT_PLACEHOLDER.partition("{")[0]):
        placeholders.append(init)
    if cell.dataset in (data_dirs or {}):
      flags.append(f"--config.data_dir={data_dirs[cell.dataset]}")
    elif not config.data_dir and cell.dataset != "synthetic" and not any(
        f.startswith("--config.data_dir") for f in extra):
      flags.append(f"--config.data_dir={DATA_DIR_PLACEHOLDER.format(dataset=cell.dataset)}")
      placeholders.append(DATA_DIR_PLACEHOLDER.format(dataset=cell.dataset))
    flags += list(extra)
    config = config_lib.config_from_flags(spec, flags)  # As `sesam train` does: bad flags stop.
    workdir = os.path.join(root, cell.relpath(config.model))
    if workdir in seen:
      continue  # The same run fills several rows (Tables 3-4 list them in `cell.rows`).
    seen.add(workdir)
    argv = ("sesam", "train", f"--config={spec}", f"--workdir={workdir}", *flags)
    plans.append(Plan(cell, argv, workdir, int(config.num_steps), str(config.model),
                      tuple(placeholders), "pretrained" if config.init else "random",
                      str(config.weak_source)))
  return plans, left_out


def _model_of(config: Any, extra: Sequence[str]) -> str:
  """The student a command trains: `--config.model=` of `extra`, else the config's."""
  given = [f.partition("=")[2] for f in extra if f.startswith("--config.model=")]
  return given[-1] if given else str(config.model)


def _init_flag(cell: grid.Cell, model: str, inits: Mapping[str, str], require: bool,
               extra: Sequence[str]) -> str:
  """The cell's `config.init`: its student's weights, a placeholder, or "" (random)."""
  if any(f.startswith("--config.init=") for f in extra):
    return ""  # The user's own flag, added after ours.
  if model in inits:
    return inits[model]
  if require and cell.dataset not in NO_WEIGHTS_DATASETS:
    return INIT_PLACEHOLDER.format(model=model)
  return ""


def run_plans(plans: Sequence[Plan], *, keep_going: bool = False,
              python: str = sys.executable) -> list[dict[str, Any]]:
  """Runs the commands one after another, skipping finished workdirs.

  Args:
    plans: from `plan_cells`.
    keep_going: run the other cells after a failed one (default: stop at the first failure).
    python: the interpreter that runs `-m sesam_jax.main train ...`.

  Returns:
    Per plan: {"workdir", "status": "skipped" (finished before) | "ran" | "failed" | "not run",
    "seconds", "val_miou"}.
  """
  pending = sorted({p for plan in plans for p in plan.placeholders})
  if pending:
    raise ValueError(f"the commands still hold placeholders ({', '.join(pending)}); give "
                     "--sam-checkpoint (SAM weights) and --data-dir DATASET=DIR, then run again.")

  def run_one(i: int, plan: Plan, log: Any) -> dict[str, Any]:
    start = time.time()
    code = _train(python, plan.argv[1:], log)
    seconds = round(time.time() - start, 1)
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):  # Stopped with a checkpoint.
      raise report.Stopped(f"stopped in cell {i}/{len(plans)} ({plan.workdir}); run the same "
                           "command to resume", code)
    if code != 0 or runs_lib.finished_step(plan.workdir, plan.num_steps) is None:
      report.log(f"[{i}/{len(plans)}] failed after {seconds} s: see {log.name}")
      log.flush()
      return {"error": f"exit code {code}; {_last_line(log.name)}", "seconds": seconds}
    result = result_lib.read(plan.workdir)
    report.log(f"[{i}/{len(plans)}] finished in {seconds} s: val mIoU "
               f"{result.get('val_miou', float('nan')):.4f}")
    return {"seconds": seconds, "val_miou": result.get("val_miou")}
  return preflight.run_each(
      plans, finished=lambda p: runs_lib.finished_step(p.workdir, p.num_steps) is not None,
      run_one=run_one, keep_going=keep_going,
      again="finished cells are skipped, interrupted ones resume")


def _train(python: str, args: Sequence[str], log: Any) -> int:
  """One cell's `sesam train` in a child process; its exit code.

  Ctrl-C reaches the child from the terminal too: it checkpoints at its next step boundary and
  exits 130, which the sweep waits for (SIGTERM is forwarded in case the child did not get the
  Ctrl-C itself). A second Ctrl-C stops both at once. A SIGTERM sent to the sweep alone (`kill`,
  a batch scheduler) is forwarded to the child, which checkpoints and exits 143.
  """
  child = subprocess.Popen([python, "-m", "sesam_jax.main", *args], stdout=log,
                           stderr=subprocess.STDOUT)
  forward = lambda signum, frame: child.send_signal(signal.SIGTERM)
  previous = _set_handler(signal.SIGTERM, forward)
  try:
    return child.wait()
  except KeyboardInterrupt:
    child.send_signal(signal.SIGTERM)  # Ignored by a child already stopping.
    try:
      return child.wait()
    except KeyboardInterrupt:
      child.kill()
      child.wait()
      raise
  finally:
    _set_handler(signal.SIGTERM, previous)


def _set_handler(signum: int, handler: Any) -> Any:
  """`signal.signal`, a no-op (returning None) outside the main thread or for a None handler."""
  if handler is None or threading.current_thread() is not threading.main_thread():
    return None
  return signal.signal(signum, handler)


def _last_line(path: str) -> str:
  """The last non-empty line of a log (a failed `sesam train` ends with its error line)."""
  with open(path, errors="replace") as f:
    lines = [line.strip() for line in f if line.strip()]
  return lines[-1][-300:] if lines else "no output"


def reproduce(table: str, *, datasets: Sequence[str] | None = None,
              students: Sequence[str] | None = None, weak: Sequence[str] | None = None,
              methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
              budgets: Sequence[int] | None = None, root: str = "workdirs",
              configs_dir: str = "configs", config_args: str = "",
              sam_backend: str = "auto", sam_checkpoint: str | None = None,
              data_dirs: Mapping[str, str] | None = None, extra: Sequence[str] = (),
              run: bool = False, keep_going: bool = False, weights: str | None = None,
              random_init: bool = False, weak_labels: str = "auto",
              scribbles: Mapping[str, str] | None = None,
              sam_checkpoints: Mapping[str, str] | None = None) -> dict[str, Any]:
  """`sesam reproduce`: prints (or runs) the command of every cell of a table.

  Args: as `grid.expand` and `plan_cells`; `run` runs the commands (`run_plans`) instead of
  printing them on stdout, after checking every input; `weights` the folder of the students'
  ImageNet weights (`weights.scan`), converted once into `ROOT/pretrained/` when run;
  `random_init` lets the paper's schedules start from random students; `weak_labels` and
  `scribbles` choose the weak labels (`label_sources`); `sam_checkpoints` the weights of the
  other SAM versions of a label-level table ({"sam2": ..., "sam3": ...}; `label_grid`);
  `config_args` come after the table's own (`Table.config_args`); `seeds` None: each row's own.

  Returns:
    {"table", "commands": [...], "workdirs": [...], "cells": [{"workdir", "init",
     "weak_source"}], "left_out": [{"what", "why"}], "not_selected": the paper's columns not
     chosen, "notes", "placeholders", "missing": inputs --run needs, "report": the command that
     makes the table, and with `run` "runs": `run_plans`' records}.
  """
  cells, others = grid.expand(table, datasets=datasets, students=students, weak=weak,
                              methods=methods, seeds=seeds, budgets=budgets)
  config_args = ",".join(dict.fromkeys(a for a in (grid.TABLES[table].config_args.split(",") +
                                                   config_args.split(",")) if a))
  if sam_backend == "auto" and any(  # SAM where the trainer runs, for cells naming none.
      c.sam_backend is None and (c.method not in METHODS or METHODS[c.method].uses_sam)
      for c in cells):
    sam_backend = resolver.accelerator_backend()
    report.log(f"SAM backend of the SAM cells: {sam_backend} ("
               + ("the Flax SAM on the trainer's devices; --sam-backend transformers for the "
                  "PyTorch bridge" if sam_backend == "jax" else
                  "the PyTorch SAM; no GPU or TPU here for the Flax SAM") + ")")
  if not cells:
    raise ValueError(f"--table {table} with --weak {','.join(weak or [])} selects no cell; "
                     f"its weak kinds are {', '.join(grid.TABLES[table].weak_kinds)}.")
  data_dirs = dict(data_dirs or {})
  if grid.TABLES[table].kind == "bench":  # Table 6: `sesam bench` cells (flags: the bench's).
    return bench_grid.reproduce(cells, grid.TABLES[table], root=root, data_dirs=data_dirs,
                                sam_backend=sam_backend, sam_checkpoint=sam_checkpoint,
                                extra=extra, run=run, keep_going=keep_going)
  found, notes = weights_lib.scan(weights) if weights and not random_init else ({}, [])
  cache_dir = os.path.join(root, "pretrained")
  inits = {m: weights_lib.cache_path(w, cache_dir) for m, w in found.items()}
  flags = {a for a in config_args.split(",") if a}
  require_init = (table in grid.PAPER_TABLES and not random_init and
                  not flags & {"runlocal", "tiny"})
  labels = label_sources.choices(
      [(c.dataset, c.weak) for c in cells], mode=weak_labels, data_dirs=data_dirs,
      scribbles=scribbles or {},
      split=label_grid.SPLIT if grid.TABLES[table].kind == "labels" else "train")
  paper_missing = [c.missing for c in labels.values() if c.missing and weak_labels == "paper"]
  if paper_missing:
    raise ValueError("--weak-labels paper: missing " + "; ".join(paper_missing) +
                     " (or --weak-labels auto to make the missing ones from the fine labels)")
  if grid.TABLES[table].kind == "labels":  # Table 5: `sesam refine` cells, scored as labels.
    return label_grid.reproduce(
        cells, grid.TABLES[table], root=root, data_dirs=data_dirs, extra=extra, run=run,
        checkpoints={**({"sam": sam_checkpoint} if sam_checkpoint else {}),
                     **(sam_checkpoints or {})},
        weak_sources={k: c.spec for k, c in labels.items()}, keep_going=keep_going,
        notes=[c.note for c in labels.values()])
  plans, missing = plan_cells(cells, root=root, configs_dir=configs_dir, config_args=config_args,
                              sam_backend=sam_backend, sam_checkpoint=sam_checkpoint,
                              data_dirs=data_dirs, extra=extra, inits=inits,
                              require_init=require_init,
                              weak_sources={k: c.spec for k, c in labels.items()})
  spec = grid.TABLES[table]
  left_out = [{"what": what, "why": why} for what, why in spec.left_out] + missing
  table_root = os.path.join(root, table)
  report_cmd = shlex.join(["sesam", "report", table_root])
  report.log(f"{table}: {spec.title}")
  report.log(f"{len(plans)} runs under {table_root}")
  for item in left_out:
    report.log(f"left out: {item['what']}: {item['why']}")
  if others:
    report.log(f"not selected: the paper's columns {', '.join(others)} (--student / --dataset)")
  notes += _notes(plans, spec) + [c.note for (d, k), c in labels.items() if k != grid.FINE]
  for note in notes:
    report.log(f"note: {note}")
  for plan in plans:
    report.log(f"cell {plan.workdir}: init {plan.init_text}, "
               f"labels {label_sources.source_name(plan.weak_source)}")
  placeholders = sorted({p for plan in plans for p in plan.placeholders})
  lacking = missing_inputs(plans, sam_backend=sam_backend, sam_checkpoint=sam_checkpoint,
                           data_dirs=data_dirs, weights_dir=weights, labels=labels)
  out: dict[str, Any] = {"table": table, "commands": [p.command for p in plans],
                         "workdirs": [p.workdir for p in plans],
                         "cells": [{"workdir": p.workdir, "init": p.init,
                                    "weak_source": label_sources.source_name(p.weak_source)}
                                   for p in plans],
                         "left_out": left_out, "not_selected": others, "notes": notes,
                         "placeholders": placeholders, "missing": lacking, "report": report_cmd}
  return preflight.run_or_print(
      plans, out, lacking, run=run, report_cmd=report_cmd,
      run_plans=lambda: run_plans(plans, keep_going=keep_going),
      prepare=lambda: weights_lib.prepare(found, {p.model for p in plans if p.init == "pretrained"
                                                  and p.model in found}, cache_dir),
      dry_note=" (--run refuses placeholders)")


def _notes(plans: Sequence[Plan], table: grid.Table) -> list[str]:
  """Where the runs differ from the paper's set-up although they fill its cells."""
  notes = list(table.notes)
  for student, model in sorted({(p.cell.student, p.model) for p in plans
                                if p.cell.dataset in grid.PAPER_DATASETS}):
    paper = grid.PAPER_MODELS.get(student)
    if paper and model != paper:
      notes.append(f"the {student} configs train {model}; the paper's is {paper} "
                   f"(add --config.model={paper})")
  randoms = sorted({p.model for p in plans if p.init == "random" and
                    p.cell.dataset in grid.PAPER_DATASETS})
  if randoms:
    notes.append(f"{', '.join(randoms)} start from random weights; the paper's students start "
                 "from ImageNet weights (--weights DIR), so figures stay far below its")
  return notes


def parse_data_dirs(items: Sequence[str] | None, datasets: Sequence[str] | None
                    ) -> dict[str, str]:
  """`--data-dir cityscapes=/data/cs` (repeatable), or `--data-dir DIR` with one --dataset."""
  out: dict[str, str] = {}
  for item in items or ():
    name, sep, path = item.partition("=")
    if not sep:
      if not datasets or len(datasets) != 1:
        raise ValueError(f"--data-dir {item}: write DATASET=DIR (e.g. cityscapes=/data/cs), "
                         "or give exactly one --dataset.")
      name, path = datasets[0], item
    out[name] = path
  return out
