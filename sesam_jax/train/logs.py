"""Metric logs: TensorBoard event files (tensorboardX, no TensorFlow) and a JSON-lines file.

`<workdir>/tensorboard/` holds the event files; `<workdir>/metrics.jsonl` one object per log
step (`{"step": n, "loss": ...}`), easy to read back with pandas or `jq`. After a resume the steps
between the last checkpoint and the kill appear twice in the JSON lines; the later line wins.
Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import jax
import numpy as np


class MetricWriter:
  """Writes scalar metrics to TensorBoard and `metrics.jsonl` in the workdir."""

  def __init__(self, workdir: str) -> None:
    self.active = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if self.active:
      from tensorboardX import SummaryWriter  # imported lazily: only the writing process needs it
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

  def write(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
    """Records scalars at `step` (names prefixed with `prefix`, e.g. "train/")."""
    if not self.active:
      return
    row = {"step": int(step)}
    for name, value in metrics.items():
      value = float(np.asarray(value))
      self._tb.add_scalar(prefix + name, value, int(step))
      row[prefix + name] = value if math.isfinite(value) else None
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.active:
      self._tb.close()
      self._jsonl.close()
