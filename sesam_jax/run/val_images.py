"""A few validation predictions as TensorBoard images, at each evaluation of a training run.

Each of the first `config.eval.tb_images` validation images becomes one row of panels, left to
right: the image, the student's prediction, the EMA teacher's (when `config.eval.ema`) and the
fine label, in the dataset's colours (unlabeled white), a white gap between panels. The tag names
the columns: `val/image-student-ema-fine/<image id>`. Panels wider or taller than `MAX_SIDE`
pixels are scaled down (labels by nearest neighbour).

The labels are those of the evaluation itself (`inference.evaluate(..., keep_examples=N)`: the
same jitted forward pass that scores the split, which hands back its first N predictions), so
drawing them costs no inference and no compilation. Only process 0 writes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from sesam_jax.data.base import colorize

MAX_SIDE = 512  # Longest side of one panel, pixels.
GAP = 4  # White pixels between panels.
TAG = "val/image-{}-fine/"  # {} = the weight sets, e.g. "student-ema".


def tag(names: Sequence[str]) -> str:
  """The tag prefix of the rows for weight sets `names` (e.g. ["student", "ema"])."""
  return TAG.format("-".join(names))


def rows(examples: Sequence[Mapping[str, Any]], colors: np.ndarray) -> list[np.ndarray]:
  """One HxWx3 uint8 row of panels per example of `evaluate(..., keep_examples=N)["examples"]`:
  the image, each weight set's labels (in their order), the fine label."""
  out = []
  for example in examples:
    maps = [*example["labels"].values(), example["label"]]
    panels = [_fit(example["image"], nearest=False)]
    panels += [_fit(colorize(m, colors), nearest=True) for m in maps]
    out.append(_row(panels))
  return out


def write(writer: Any, step: int, ev: Mapping[str, Any], val_source: Any) -> None:
  """Adds the rows of `ev["examples"]` at `step` to the run's TensorBoard file (process 0).

  Args:
    writer: the run's `logs.MetricWriter` (inactive on other processes: nothing happens there).
    step: the training step.
    ev: `evaluate_state`'s result; without "examples" (tb_images 0) nothing is written.
    val_source: the validation source (ids and colours).
  """
  examples = ev.get("examples")
  if not examples or not writer.active:
    return
  prefix = tag(list(examples[0]["labels"]))
  ids = [val_source.ids[e["index"]] if "index" in e else str(k) for k, e in enumerate(examples)]
  writer.write_images(step, dict(zip(ids, rows(examples, val_source.info.colors))), prefix=prefix)


def _fit(panel: np.ndarray, *, nearest: bool) -> np.ndarray:
  """HxWx3 uint8 scaled down to at most MAX_SIDE on its longest side."""
  h, w = panel.shape[:2]
  scale = MAX_SIDE / max(h, w)
  if scale >= 1:
    return panel
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return np.asarray(Image.fromarray(panel).resize(
      size, Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR))


def _row(panels: list[np.ndarray]) -> np.ndarray:
  """Panels of one height side by side, GAP white pixels apart."""
  gap = np.full((panels[0].shape[0], GAP, 3), 255, np.uint8)
  parts = []
  for panel in panels:
    parts += [panel, gap]
  return np.concatenate(parts[:-1], axis=1)
