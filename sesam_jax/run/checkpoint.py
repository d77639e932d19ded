"""One orbax CheckpointManager per workdir: everything a resume needs, saved at the same step.

Items of a checkpoint `<workdir>/checkpoints/<step>/`:
  state     the train state with the EMA teacher (orbax's StandardCheckpointHandler);
  data      the input position, grain's own handler: one JSON file per process, so each
            host of a multi-host run gets its input slice back;
  <others>  whatever the method's feed adds (SeSAM: `sam_bank`, the SAM labels and teacher
            extensions of this process's images) and the run's `clock`: bytes from the
            object's `get_state()`, one file per process (`ProcessBytesHandler`).
One retention rule (`keep`) governs them all. Saves are asynchronous; orbax writes to a
temporary directory and renames it on commit, so a run killed mid-save leaves the previous
checkpoint intact and a restart picks up the last committed step.

Faults speak in one line naming the folder (`CheckpointError`, exit code 2), and never hang:
  - the step folder is created when `save` is called, not in a background thread (there, a
    folder that could not be created left the other writers waiting 300 s for its signal);
  - a save that fails in the background (disk full, folder gone) is seen by `poll()`, which
    the loop calls once per step, so the run stops within a step of the failure; the previous
    checkpoint stays as it was and is what a rerun resumes from;
  - when a training resumes, a latest checkpoint that cannot be read (truncated, corrupt) is
    reported and the one before is restored (single process); the unreadable one moves to
    `<workdir>/unreadable_checkpoints/`. Evaluation names it instead.

This is the one module that calls orbax on a workdir: evaluation and prediction restore the state
(`restore`) or only some of its arrays (`read_arrays`, e.g. the weights) through it, usually via
`sesam_jax.run.runs.open_run`.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
import numpy as np
from etils import epath

from sesam_jax import report
from sesam_jax.run import layout as layout_lib


class CheckpointError(report.UserError):
  """A checkpoint cannot be written or read; the message names the folder and the fix."""


def _why(error: BaseException) -> str:
  """The cause of a storage error in a few words ("No space left on device", ...).

  orbax wraps the error that matters (tensorstore's, the OS's) in its own; the chain is walked
  to the deepest one.
  """
  chain, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    chain.append(error)
    error = error.__cause__ or error.__context__
  for e in reversed(chain):
    if isinstance(e, OSError) and e.strerror:
      return e.strerror
    text = str(e)
    code = re.search(r"os_error_code='?(\d+)", text)  # tensorstore's errors carry the errno
    if code:
      return os.strerror(int(code.group(1)))
    for known in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.ENOENT, errno.EDQUOT):
      if os.strerror(known) in text:
        return os.strerror(known)
  first = (str(chain[-1]).strip().splitlines() or [type(chain[-1]).__name__])[0]
  return first if len(first) <= 240 else first[:240] + "..."


def _fix(why: str) -> str:
  if why in (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT)):
    return "free space on that disk"
  if why in (os.strerror(errno.EROFS), os.strerror(errno.EACCES), os.strerror(errno.EPERM)):
    return "make the folder writable"
  if why == os.strerror(errno.ENOENT):
    return "the folder was moved, deleted or unmounted during the run"
  return "check the folder and its disk"


class ProcessBytesHandler(ocp.CheckpointHandler):
  """Saves an object's `get_state() -> bytes` as `process_<i>-of-<n>.bin`; restores with
  `set_state(bytes)`. Every process writes (and reads back) its own file."""

  @staticmethod
  def _file(directory: epath.Path) -> epath.Path:
    return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.bin"

  def save(self, directory: epath.Path, args: "BytesSave") -> None:
    self._file(directory).write_bytes(args.item.get_state())

  def restore(self, directory: epath.Path, args: "BytesRestore") -> Any:
    path = self._file(directory)
    if not path.exists():
      raise FileNotFoundError(f"checkpoint item {directory.name!r} has no file for process "
                              f"{jax.process_index()} ({path}); was the run started with a "
                              "different number of processes?")
    args.item.set_state(path.read_bytes())
    return args.item


@ocp.args.register_with_handler(ProcessBytesHandler, for_save=True)
@dataclasses.dataclass
class BytesSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(ProcessBytesHandler, for_restore=True)
@dataclasses.dataclass
class BytesRestore(ocp.args.CheckpointArgs):
  item: Any


def _save_args(name: str, item: Any) -> ocp.args.CheckpointArgs:
  return (grain.checkpoint.CheckpointSave(item) if name == layout_lib.DATA_ITEM
          else BytesSave(item))


def _restore_args(name: str, item: Any) -> ocp.args.CheckpointArgs:
  return (grain.checkpoint.CheckpointRestore(item) if name == layout_lib.DATA_ITEM
          else BytesRestore(item))


class _FirstLineOfOrbaxErrors(logging.Filter):
  """orbax logs each failed background write with its traceback, a few dozen lines per failure;
  the run's own error names the folder and the cause, so orbax's records keep their first line."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname:
      message = (record.getMessage().strip().splitlines() or [""])[0]
      record.msg, record.args = message[:300], ()
      record.exc_info = record.exc_text = None
    return True


_ORBAX_FILTER = _FirstLineOfOrbaxErrors()


class Checkpointer:
  """Saves and restores (state, data position, extra items) under `<workdir>/checkpoints/<step>`."""

  def __init__(self, workdir: str | os.PathLike, *, keep: int = 2, create: bool = True) -> None:
    """Args:
      workdir: the run directory.
      keep: how many checkpoints to keep.
      create: create `<workdir>/checkpoints` (a training); without, the folder must exist
        (FileNotFoundError naming it otherwise): evaluation and prediction only read.
    """
    self.layout = layout_lib.Layout.of(workdir)
    self.directory = str(self.layout.checkpoints)
    if not create and not os.path.isdir(self.directory):
      raise FileNotFoundError(f"no checkpoint in {self.directory}; train first with "
                              "`sesam train --config=... --workdir=...`.")
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=create,
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False)))
    self._pending: int | None = None  # the step of a save that may still be running
    self._failed = False
    logging.getLogger("absl").addFilter(_ORBAX_FILTER)  # orbax logs through absl's logger

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

  def latest_step(self) -> int | None:
    """The last committed step, or None for a fresh workdir."""
    return self.manager.latest_step()

  def steps(self) -> list[int]:
    """Every committed step, oldest first."""
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, items: Mapping[str, Any] | None = None) -> None:
    """Starts an asynchronous save of `state` and `items` (name -> get_state object) at `step`.

    Raises:
      CheckpointError: this save, or the previous one, could not be written.
    """
    self._finish_pending()  # The previous save's error is that save's, named as such.
    if not os.path.isdir(self.directory):
      self._raise_write(step, FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)))
    args = {layout_lib.STATE_ITEM: ocp.args.StandardSave(state)}
    args.update({name: _save_args(name, item) for name, item in (items or {}).items()})
    try:
      self.manager.save(step, args=ocp.args.Composite(**args), force=True)
    except Exception as e:  # orbax, tensorstore and the OS raise all kinds.
      self._raise_write(step, e)
    self._pending = step

  def poll(self) -> None:
    """Raises `CheckpointError` if a save failed in the background (cheap; call once per step)."""
    if self._pending is not None and not self.manager.is_saving_in_progress():
      self._finish_pending()

  def _finish_pending(self) -> None:
    step, self._pending = self._pending, None
    if step is None:
      return
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      self._raise_write(step, e)

  def _raise_write(self, step: int, error: BaseException) -> None:
    self._failed = True
    why = _why(error)
    kept = [s for s in self._committed_steps() if s < step]
    if not os.path.isdir(self.directory):
      keeps = "the checkpoints written before went with the folder"
    elif kept:
      keeps = f"checkpoint {kept[-1]} is kept: run the same command to resume from it"
    else:
      keeps = "no earlier checkpoint exists"
    raise CheckpointError(f"could not write checkpoint {step} to {self.directory} ({why}); "
                          f"{_fix(why)}. The run stops here; {keeps}.") from None

  def _committed_steps(self) -> list[int]:
    """Step folders on disk (orbax renames a step's temporary folder to `<step>` on commit)."""
    try:
      return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())
    except OSError:
      return []

  def restore(self, abstract_state: Any, items: Mapping[str, Any] | None = None,
              step: int | None = None, *, fall_back: bool = False) -> Any:
    """Restores the state (into the shardings of `abstract_state`) and `items` in place.

    With `fall_back` (a training resuming), a latest checkpoint that cannot be read is reported,
    moved to `<workdir>/unreadable_checkpoints/`, and the one before is restored instead; only in
    a single process (several could disagree on which one to take, so there it is an error).

    Args:
      abstract_state: ShapeDtypeStructs with shardings (`abstract_train_state`).
      items: name -> object with `set_state` (the data position, the SAM bank, ...); None for
        evaluation, which needs the state alone.
      step: which checkpoint; default the latest.
      fall_back: try older checkpoints when the latest cannot be read (see above).

    Returns:
      The restored state.

    Raises:
      FileNotFoundError: no checkpoint.
      CheckpointError: no checkpoint can be read (the message names the folder and the cause).
    """
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    if not steps or steps[0] is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}; train first with "
                              "`sesam train --config=... --workdir=...`.")
    args = {layout_lib.STATE_ITEM: ocp.args.StandardRestore(abstract_state)}
    args.update({name: _restore_args(name, item) for name, item in (items or {}).items()})
    fallback = fall_back and step is None and jax.process_count() == 1
    unreadable: list[tuple[int, str]] = []
    for s in steps:
      try:
        restored = self.manager.restore(s, args=ocp.args.Composite(**args))[
            layout_lib.STATE_ITEM]
      except Exception as e:  # A truncated file fails in orbax, tensorstore, numpy, json...
        unreadable.append((s, _why(e)))
        if not fallback:
          break
        report.log(f"checkpoint {s} in {self.directory} cannot be read ({_why(e)}); trying the "
                   "one before")
        continue
      if unreadable:
        moved = self._move_aside([u for u, _ in unreadable])
        report.log(f"resumed from checkpoint {s}, the latest that can be read; the unreadable "
                   f"one(s) moved to {moved}")
      return restored
    s, why = unreadable[0]
    if fallback:  # None of them: a changed config, more likely than every file corrupt.
      raise CheckpointError(
          f"checkpoint {s} in {self.directory} cannot be read ({why}), nor any before it. If the "
          "config changed since they were written, train with the old config or a new "
          f"--workdir; otherwise move {self.directory} away to start afresh.")
    raise CheckpointError(
        f"checkpoint {s} in {self.directory} cannot be read ({why}). If the config changed "
        "since it was written, train with the old config or a new --workdir; otherwise move "
        f"{os.path.join(self.directory, str(s))} away to resume from the one before.")

  def read_arrays(self, names: Sequence[str], step: int | None = None
                  ) -> tuple[dict[str, Any], int]:
    """Some top-level fields of a checkpoint's state as numpy arrays, nothing else read.

    No model, optimizer or sharding is needed: the arrays' shapes come from the checkpoint's own
    tree metadata (what `sesam predict` and `export` restore the weights with).

    Args:
      names: fields of the train state, e.g. ("params", "batch_stats").
      step: which checkpoint; default the latest.

    Returns:
      ({name: pytree of numpy arrays ({} for an empty field)}, step).

    Raises:
      FileNotFoundError: no checkpoint.
      ValueError: the state lacks one of `names` (not written by `sesam train`).
      CheckpointError: the checkpoint cannot be read.
    """
    step = self.latest_step() if step is None else int(step)
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}; train first with "
                              "`sesam train --config=... --workdir=...`.")
    path = epath.Path(self.layout.checkpoint(step, layout_lib.STATE_ITEM))
    handler = ocp.PyTreeCheckpointHandler()  # Reads the state item StandardSave wrote.
    try:
      tree = handler.metadata(path).tree
    except Exception as e:  # Missing or damaged metadata: orbax, tensorstore, json...
      raise CheckpointError(f"checkpoint {step} in {self.directory} cannot be read ({_why(e)})"
                            "; give another step or train again.") from None
    missing = [n for n in names if n not in tree]
    if missing:
      raise ValueError(f"checkpoint {path} has no {missing}; it was not written by `sesam "
                       "train`.")
    wanted = {n: tree[n] for n in names}
    target = jax.tree.map(lambda m: np.zeros((0,), m.dtype), wanted)
    restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    try:
      restored = handler.restore(path, args=ocp.args.PyTreeRestore(
          item=target, restore_args=restore_args, partial_restore=True))
    except Exception as e:
      raise CheckpointError(f"checkpoint {step} in {self.directory} cannot be read ({_why(e)})"
                            "; give another step or train again.") from None
    return {n: {} if restored[n] is None else restored[n] for n in names}, step

  def _move_aside(self, steps: list[int]) -> str:
    """Moves step folders to `<workdir>/unreadable_checkpoints/` (kept for a look, not used)."""
    target = str(self.layout.unreadable_checkpoints)
    os.makedirs(target, exist_ok=True)
    for s in steps:
      dest = os.path.join(target, str(s))
      if os.path.exists(dest):
        dest += time.strftime("-%Y%m%d-%H%M%S")
      shutil.move(os.path.join(self.directory, str(s)), dest)
    self.manager.reload()
    return target

  def close(self) -> None:
    """Waits for pending saves and releases the manager.

    Raises:
      CheckpointError: the last save failed (not raised again once a failure was reported).
    """
    try:
      if not self._failed:
        self._finish_pending()
    finally:
      try:
        self.manager.close()
      except Exception:
        if not self._failed:
          raise
      finally:
        logging.getLogger("absl").removeFilter(_ORBAX_FILTER)
