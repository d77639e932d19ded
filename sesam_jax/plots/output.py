"""Writing a figure and the data it drew; colours and run-length codes for label maps.

`save(fig, path, data)` writes `path` (a 256-colour PNG) and `path` with a `.json` suffix, each
under a temporary name first, so a figure never exists without its data. Label maps and masks go
into the JSON run-length coded (`rle_encode`: row-major runs of equal values), which keeps a
480x360 label map to a few kilobytes and decodes exactly.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.ndimage as ndi
from PIL import Image

from sesam_jax.atomic import write_atomic
from sesam_jax.data.base import IGNORE_INDEX, colorize, palette  # noqa: F401 (re-exported for plots)
from sesam_jax.evaluate import metrics



def pyplot() -> Any:
  """matplotlib.pyplot on the non-interactive Agg backend; a clear error when not installed."""
  try:
    import matplotlib
  except ImportError:
    raise ValueError("figures need matplotlib: pip install 'sesam-jax[plots]' (or "
                     "pip install matplotlib).") from None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def json_path(path: str | os.PathLike) -> pathlib.Path:
  """Where the data of the figure `path` goes: `FILE.png` -> `FILE.json`."""
  return pathlib.Path(path).with_suffix(".json")


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return _jsonable(value.tolist())
  if isinstance(value, np.generic):
    return _jsonable(value.item())
  if isinstance(value, float) and not np.isfinite(value):
    return None
  if isinstance(value, pathlib.PurePath):
    return str(value)
  return value


def save(fig: Any, path: str | os.PathLike, data: Mapping[str, Any], *, dpi: int = 100) -> dict:
  """Writes the figure as PNG and `data` as JSON beside it (both atomically), closes the figure.

  Returns:
    {"figure": PNG path, "data": JSON path}.
  """
  plt = pyplot()
  path = pathlib.Path(path)
  if path.suffix.lower() != ".png":
    raise ValueError(f"--out {path}: figures are written as PNG; give a FILE.png path.")
  path.parent.mkdir(parents=True, exist_ok=True)
  data_path = json_path(path)
  try:
    write_atomic(data_path, json.dumps(_jsonable(data)))
    write_atomic(path, lambda f: _save_png(fig, f, dpi))
  finally:
    plt.close(fig)
  return {"figure": str(path), "data": str(data_path)}


def _save_png(fig: Any, file: Any, dpi: int) -> None:
  """The figure as a 256-colour palette PNG: a third of the size of matplotlib's RGBA PNG (the
  photos in the panels are the bulk) and no visible difference at figure scale."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
  buffer.seek(0)
  with Image.open(buffer) as image:
    image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
        file, format="PNG", optimize=True)


def rle_encode(array: np.ndarray) -> dict:
  """Row-major runs of equal values: {"shape", "dtype", "values", "lengths"} (JSON-ready)."""
  flat = np.asarray(array).ravel()
  if flat.size == 0:
    return {"shape": list(np.shape(array)), "dtype": str(flat.dtype), "values": [], "lengths": []}
  starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
  lengths = np.diff(np.concatenate([starts, [flat.size]]))
  return {"shape": list(np.shape(array)), "dtype": str(flat.dtype),
          "values": flat[starts].tolist(), "lengths": lengths.tolist()}


def rle_decode(code: Mapping[str, Any]) -> np.ndarray:
  """The array `rle_encode` coded."""
  values = np.asarray(code["values"], dtype=code["dtype"])
  return np.repeat(values, code["lengths"]).reshape(code["shape"])


def thicken(label: np.ndarray, radius: int = 2) -> np.ndarray:
  """For display: every unlabeled pixel within `radius` of a labeled one takes its class, so
  that point labels (single pixels) are visible."""
  unlabeled = label == IGNORE_INDEX
  if unlabeled.all() or not unlabeled.any():
    return label
  distance, (iy, ix) = ndi.distance_transform_edt(unlabeled, return_indices=True)
  return np.where(distance <= radius, label[iy, ix], label)


def per_image_miou(label: np.ndarray, fine: np.ndarray, num_classes: int) -> float | None:
  """mIoU of one label map against the fine label (255 in `label` is a miss), None if empty."""
  keep = fine < num_classes
  pred = np.where(label < num_classes, label, num_classes).astype(np.int64)[keep]
  index = fine[keep].astype(np.int64) * (num_classes + 1) + pred
  confusion = np.bincount(index, minlength=num_classes * (num_classes + 1))
  value = metrics.miou(confusion.reshape(num_classes, num_classes + 1))
  return None if np.isnan(value) else round(value, 4)


def legend(where: Any, class_names: Sequence[str], colors: np.ndarray, present: Sequence[int],
           **kw: Any) -> None:
  """A legend of the classes in `present` on an Axes or a Figure (colour patches, names)."""
  from matplotlib.patches import Patch
  handles = [Patch(facecolor=np.asarray(colors[c]) / 255.0, edgecolor="black", linewidth=0.3,
                   label=class_names[c]) for c in present if c < len(class_names)]
  if handles:
    where.legend(handles=handles, fontsize=6, frameon=False, **kw)
