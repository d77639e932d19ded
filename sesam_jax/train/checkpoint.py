"""One orbax CheckpointManager per workdir: train state (with the EMA teacher) + data iterator.

The grain iterator state is saved by grain's own orbax handler (one JSON file per process, so
multi-host runs each get their input shard back). Saves are asynchronous; orbax writes to a
temporary directory and renames it on commit, so a run killed mid-save leaves the previous
checkpoint intact and a restart picks up the last committed step.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores (state, data iterator) under `<workdir>/checkpoints/<step>`."""

  def __init__(self, workdir: str, *, keep: int = 2) -> None:
    """Args: workdir: the run directory (created); keep: how many checkpoints to keep."""
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    """The last committed step, or None for a fresh workdir."""
    return self.manager.latest_step()

  def save(self, step: int, state: Any, iterator: Any | None) -> None:
    """Starts an asynchronous save of `state` and the iterator's position at `step`."""
    items = {"state": ocp.args.StandardSave(state)}
    if iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(iterator)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state: Any, iterator: Any | None, step: int | None = None) -> Any:
    """Restores the state (into the shardings of `abstract_state`) and the iterator in place.

    Args:
      abstract_state: ShapeDtypeStructs with shardings (`abstract_train_state`).
      iterator: the grain iterator to rewind, or None (evaluation).
      step: which checkpoint; default the latest.

    Returns:
      The restored state.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}; train first with "
                              "`sesam train --config=... --workdir=...`.")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items)).state

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()
