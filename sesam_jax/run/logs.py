"""Metric logs: TensorBoard event files (tensorboardX, no TensorFlow) and a JSON-lines file.

`<workdir>/tensorboard/` holds the event files (scalars, and images of a few validation
predictions at each evaluation: `sesam_jax.run.val_images`; `read_images` reads them back);
`<workdir>/metrics.jsonl` one object per log step (`{"step": n, "loss": ...}`), easy to read back
with pandas or `jq`, or with `read_metrics` (one merged dict per step). A resumed run runs the steps after its checkpoint again, so it first drops
their rows (`drop_rows_after`): every step keeps one row. (TensorBoard keeps both events of such a
step and shows the later one.) Only process 0 writes.
"""

from __future__ import annotations

import io
import json
import math
import os
import pathlib
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image

from sesam_jax.atomic import write_atomic
from sesam_jax.run import val_images
from sesam_jax.run.layout import Layout


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
  """Writes scalar metrics (and images) to TensorBoard and scalars to `metrics.jsonl`.

  Args:
    workdir: the run directory.
    resume_step: the step the run (re)starts from: rows of later steps, run again now, are
      dropped first (`drop_rows_after`); None keeps every row.
    final_eval: the run had finished at `resume_step` (its final evaluation is redone).
  """

  def __init__(self, workdir: str, *, resume_step: int | None = None,
               final_eval: bool = False) -> None:
    self.active = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      if resume_step is not None:
        drop_rows_after(workdir, resume_step, final_eval=final_eval)
      layout = Layout.of(workdir)
      self._tb = _SummaryWriter(logdir=str(layout.tensorboard))
      self._jsonl = open(layout.metrics, "a")

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

  def write_evaluation(self, step: int, ev: Mapping[str, Any], val_source: Any) -> None:
    """Records an evaluation (`loop.evaluate_state`): its "*_miou" values as "val/" scalars and
    the examples it kept as rows of panels in TensorBoard (`val_images`)."""
    self.write(step, {k: v for k, v in ev.items() if k.endswith("_miou")}, prefix="val/")
    val_images.write(self, step, ev, val_source)

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


def drop_rows_after(workdir: str, step: int, *, final_eval: bool = False) -> int:
  """Removes `metrics.jsonl` rows of steps after `step` (a resume from `step` runs them again).

  Args:
    workdir: the run directory.
    step: the restored checkpoint's step.
    final_eval: the run had finished (`step` is its last): its final evaluation's row at `step`
      goes too, since the rerun evaluates again.

  Returns:
    The number of rows removed (the file is rewritten atomically only when there are some).
  """
  path = Layout.of(workdir).metrics
  if not path.is_file():
    return 0
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue  # A line cut short by a kill.
    n = int(row.get("step", 0))
    redone_eval = final_eval and n == step and not any(k.startswith("train/") for k in row)
    if n <= step and not redone_eval:
      kept.append(line if line.endswith("\n") else line + "\n")
  if len(kept) != len(lines):
    write_atomic(path, "".join(kept))
  return len(lines) - len(kept)


def read_metric_rows(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """`<workdir>/metrics.jsonl` as written: one dict per line, in file order.

  A last line cut short (a run killed while writing it) is left out.

  Raises:
    FileNotFoundError: the run has logged no metrics (no file).
    ValueError: a damaged line before the last (names the file and line).
  """
  path = Layout.of(workdir).metrics
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found; the run has logged no metrics yet.")
  lines = path.read_text().splitlines()
  rows = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      int(row["step"])
    except (ValueError, KeyError, TypeError):
      if number == len(lines):
        break  # Cut by the kill that stopped the run.
      raise ValueError(f"{path}:{number} is not a JSON object with a step; the file is "
                       "damaged.") from None
    rows.append(row)
  return rows


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """`<workdir>/metrics.jsonl` as one dict per step, sorted by step.

  Rows of one step are merged (training and validation metrics are separate lines); a step
  logged twice (a final evaluation redone) keeps the later values. Raises as `read_metric_rows`.
  """
  merged: dict[int, dict[str, Any]] = {}
  for row in read_metric_rows(workdir):
    merged.setdefault(int(row["step"]), {}).update(row)
  return [merged[s] for s in sorted(merged)]


def series(rows: Sequence[Mapping[str, Any]], key: str) -> list[list[float]]:
  """[[step, value], ...] of `key` over metrics rows (rows without it or with null skipped)."""
  return [[row["step"], row[key]] for row in rows if row.get(key) is not None]


def read_events(logdir: str | os.PathLike) -> list[Any]:
  """Every Event of the event files in `logdir`, oldest file first (TensorBoard not needed).

  Event files are TFRecords: an 8-byte little-endian length, its masked CRC-32C, the serialised
  Event protobuf and its masked CRC; both CRCs are checked (tensorboardX's own protos and CRC).
  A record cut short at the end of a file (a writer still writing) ends that file.

  Raises:
    ValueError: a record whose checksum does not match, naming the file.
  """
  # Deferred: only readers need the protobufs (tensorboardX itself was loaded without torch above).
  from tensorboardX.proto import event_pb2
  from tensorboardX.record_writer import masked_crc32c
  events = []
  for path in sorted(pathlib.Path(logdir).glob("events.out.tfevents.*")):
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      if pos + 12 > len(data):
        break
      header = data[pos:pos + 8]
      if struct.unpack("<I", data[pos + 8:pos + 12])[0] != masked_crc32c(header):
        raise ValueError(f"{path}: corrupt record header at byte {pos}; the file is damaged.")
      end = pos + 16 + struct.unpack("<Q", header)[0]
      if end > len(data):
        break
      body = data[pos + 12:end - 4]
      if struct.unpack("<I", data[end - 4:end])[0] != masked_crc32c(body):
        raise ValueError(f"{path}: corrupt record at byte {pos}; the file is damaged.")
      events.append(event_pb2.Event.FromString(body))
      pos = end
  return events


def read_images(logdir: str | os.PathLike) -> dict[tuple[int, str], np.ndarray]:
  """The image summaries of `logdir` as {(step, tag): HxWx3 uint8} (e.g. the validation rows
  `sesam_jax.run.val_images` writes), without TensorBoard."""
  images = {}
  for event in read_events(logdir):
    for value in event.summary.value:
      if value.HasField("image"):
        with Image.open(io.BytesIO(value.image.encoded_image_string)) as image:
          images[(int(event.step), value.tag)] = np.asarray(image.convert("RGB"))
  return images
