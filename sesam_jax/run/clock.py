"""A run's clock: training wall seconds and process CPU seconds, summed over its sessions.

Saved in each checkpoint (the `clock` item, grain's `get_state` / `set_state` protocol as JSON
bytes), so a resumed run adds to what the sessions before it spent. Wall seconds count from
`start()` (after the SAM pre-warm); CPU seconds count the whole process (start-up, compilation,
pre-warm, steps, evaluation) and its finished children (the SAM bridge's worker process once it
has exited; a child still running when a checkpoint is saved is not in that checkpoint).
"""

from __future__ import annotations

import json
import os
import time


def process_cpu_seconds() -> float:
  """User + system CPU seconds of this process and of its children that have exited."""
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


class RunClock:
  """Training seconds and CPU seconds summed over a run's sessions (a checkpoint item)."""

  def __init__(self) -> None:
    self.before = 0.0                 # wall seconds trained before this restart (restored)
    self.cpu_before = 0.0             # CPU seconds of the sessions before this one (restored)
    self.started: float | None = None  # when this session's training started

  def start(self) -> None:
    self.started = time.time()

  def seconds(self) -> float:
    """Training wall seconds, this session's included."""
    return self.before + (time.time() - self.started if self.started is not None else 0.0)

  def cpu_seconds(self) -> float:
    """CPU seconds of every session, this process's so far included."""
    return self.cpu_before + process_cpu_seconds()

  def get_state(self) -> bytes:
    return json.dumps({"train_seconds": self.seconds(),
                       "cpu_seconds": self.cpu_seconds()}).encode()

  def set_state(self, state: bytes) -> None:
    saved = json.loads(state)
    self.before = float(saved["train_seconds"])
    # Checkpoints of earlier versions hold no CPU seconds: their sessions count as 0.
    self.cpu_before = float(saved.get("cpu_seconds", 0.0))
