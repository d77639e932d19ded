"""Metric logs: TensorBoard event files (tensorboardX, no TensorFlow) and a JSON-lines file.

`<workdir>/tensorboard/` holds the event files (scalars, and images of a few validation
predictions at each evaluation: `sesam_jax.train.val_images`); `<workdir>/metrics.jsonl` one
object per log step (`{"step": n, "loss": ...}`), easy to read back with pandas or `jq`. After a
resume the steps between the last checkpoint and the kill appear twice in the JSON lines; the
later line wins. Only process 0 writes.
"""

from __future__ import annotations

import io
import json
import math
import os
import pathlib
import struct
import sys
from collections.abc import Mapping
from typing import Any

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
  """Writes scalar metrics (and images) to TensorBoard and scalars to `metrics.jsonl`."""

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
  `sesam_jax.train.val_images` writes), without TensorBoard."""
  from PIL import Image  # Deferred: only image readers need PIL.
  images = {}
  for event in read_events(logdir):
    for value in event.summary.value:
      if value.HasField("image"):
        with Image.open(io.BytesIO(value.image.encoded_image_string)) as image:
          images[(int(event.step), value.tag)] = np.asarray(image.convert("RGB"))
  return images
