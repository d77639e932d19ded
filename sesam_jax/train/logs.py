"""Metric logs: TensorBoard event files (tensorboardX, no TensorFlow) and a JSON-lines file.

`<workdir>/tensorboard/` holds the event files (scalars, and images of a few validation
predictions at each evaluation: `sesam_jax.train.val_images`); `<workdir>/metrics.jsonl` one
object per log step (`{"step": n, "loss": ...}`), easy to read back with pandas or `jq`. After a
resume the steps between the last checkpoint and the kill appear twice in the JSON lines; the
later line wins. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping

import jax
import numpy as np


def _summary_writer_class() -> type:
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch whenever it is installed (only to accept torch tensors), which would
  load torch into the trainer: seconds of start-up, hundreds of MB, and CUDA initialised beside
  JAX on a GPU host. Unless torch is already loaded, its import is made to fail for that moment;
  this runs when this module is imported, before any input-pipeline thread could look for torch.
  """
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects.
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


_SummaryWriter = _summary_writer_class()


class MetricWriter:
  """Writes scalar metrics to TensorBoard and `metrics.jsonl` in the workdir."""

  def __init__(self, workdir: str) -> None:
    self.active = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      self._tb = _SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))
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

  def write_images(self, step: int, images: Mapping[str, np.ndarray], prefix: str = "") -> None:
    """Records HxWx3 uint8 images at `step` in TensorBoard (names prefixed with `prefix`)."""
    if not self.active:
      return
    for name, image in images.items():
      self._tb.add_image(prefix + name, np.asarray(image, np.uint8), int(step), dataformats="HWC")
    self._tb.flush()

  def close(self) -> None:
    if self.active:
      self._tb.close()
      self._jsonl.close()
