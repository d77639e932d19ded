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
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath


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
  return grain.checkpoint.CheckpointSave(item) if name == "data" else BytesSave(item)


def _restore_args(name: str, item: Any) -> ocp.args.CheckpointArgs:
  return grain.checkpoint.CheckpointRestore(item) if name == "data" else BytesRestore(item)


class Checkpointer:
  """Saves and restores (state, data position, extra items) under `<workdir>/checkpoints/<step>`."""

  def __init__(self, workdir: str, *, keep: int = 2) -> None:
    """Args: workdir: the run directory (created); keep: how many checkpoints to keep."""
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    """The last committed step, or None for a fresh workdir."""
    return self.manager.latest_step()

  def save(self, step: int, state: Any, items: Mapping[str, Any] | None = None) -> None:
    """Starts an asynchronous save of `state` and `items` (name -> get_state object) at `step`."""
    args = {"state": ocp.args.StandardSave(state)}
    args.update({name: _save_args(name, item) for name, item in (items or {}).items()})
    self.manager.save(step, args=ocp.args.Composite(**args), force=True)

  def restore(self, abstract_state: Any, items: Mapping[str, Any] | None = None,
              step: int | None = None) -> Any:
    """Restores the state (into the shardings of `abstract_state`) and `items` in place.

    Args:
      abstract_state: ShapeDtypeStructs with shardings (`abstract_train_state`).
      items: name -> object with `set_state` (the data position, the SAM bank, ...); None for
        evaluation, which needs the state alone.
      step: which checkpoint; default the latest.

    Returns:
      The restored state.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}; train first with "
                              "`sesam train --config=... --workdir=...`.")
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    args.update({name: _restore_args(name, item) for name, item in (items or {}).items()})
    return self.manager.restore(step, args=ocp.args.Composite(**args)).state

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()
