"""A user's own dataset: a folder of images, a folder of label PNGs, a class-list file.

Labels are single-channel PNGs named `<image stem>.png` holding class ids
0..N-1 (255 = ignore). The class list has one class per line, in id order,
either `name` or `name R G B`; blank lines and `#` comments are skipped.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from sesam_jax.data import base


def read_class_list(path: str | os.PathLike) -> tuple[tuple[str, ...], np.ndarray]:
  """Reads a class-list file.

  Returns:
    (class names, Nx3 uint8 colours; default palette where a line gives none).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"class list {path} not found; write one class name per line "
                            "(optionally `name R G B`), in id order.")
  names, colors = [], []
  for n, line in enumerate(path.read_text().splitlines(), 1):
    line = line.split("#", 1)[0].strip()
    if not line:
      continue
    parts = line.split()
    if len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):
      names.append(" ".join(parts[:-3]))
      colors.append([int(p) for p in parts[-3:]])
      if max(colors[-1]) > 255:
        raise ValueError(f"{path}:{n}: colour values must be 0..255, got {parts[-3:]}.")
    else:
      names.append(line)
      colors.append(None)
  if not names:
    raise ValueError(f"class list {path} names no classes; write one class name per line.")
  if len(names) > 255:
    raise ValueError(f"class list {path} has {len(names)} classes; at most 255 fit in uint8 "
                     "labels with 255 = ignore.")
  palette = base.default_colors(len(names))
  rgb = np.array([c if c is not None else palette[i] for i, c in enumerate(colors)], np.uint8)
  return tuple(names), rgb


NEEDS_DATA_DIR = False  # image_dir / label_dir may stand alone.


def make_source(data_dir: str | os.PathLike | None = None, split: str = "train", *,
                image_dir: str | os.PathLike | None = None,
                label_dir: str | os.PathLike | None = None,
                classes: str | os.PathLike | None = None,
                name: str = "custom") -> base.PairedFileSource:
  """A folder dataset.

  Args:
    data_dir: root; defaults below are relative to it.
    split: used in the default folders.
    image_dir: images; default `data_dir/images/<split>` if present, else `data_dir/images`.
    label_dir: labels; default `data_dir/labels/<split>` if present, else `data_dir/labels`.
    classes: class-list file; default `data_dir/classes.txt`.
    name: the dataset name reported in DatasetInfo.

  Returns:
    A PairedFileSource whose label values must be class ids 0..N-1 or 255.
  """
  def pick(explicit, sub):
    if explicit is not None:
      return pathlib.Path(explicit)
    if data_dir is None:
      raise ValueError(f"custom dataset: pass data_dir or {sub}_dir.")
    root = pathlib.Path(data_dir)
    return root / f"{sub}s" / split if (root / f"{sub}s" / split).is_dir() else root / f"{sub}s"

  fix = "pass --data-dir with images/ and labels/ folders (or image_dir/label_dir explicitly)."
  images_path = base.require_dir(pick(image_dir, "image"), "custom image folder", fix)
  labels_path = base.require_dir(pick(label_dir, "label"), "custom label folder", fix)
  if classes is None:
    if data_dir is None:
      raise ValueError("custom dataset: pass classes=<class list file> or data_dir.")
    classes = pathlib.Path(data_dir) / "classes.txt"
  names, colors = read_class_list(classes)
  ids, images, labels = base.pair_by_stem(images_path, labels_path, dataset=name)
  info = base.DatasetInfo(name, names, colors, len(names))
  return base.PairedFileSource(info, ids, images, labels, base.identity_lut(len(names)),
                               where=str(images_path))
