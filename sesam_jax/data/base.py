"""What every dataset source shares: `DatasetInfo`, decoding, and checks.

A source is random access (grain's `RandomAccessDataSource` protocol):
`len(source)` and `source[i] -> {"id": str, "image": HxWx3 uint8,
"label": HxW uint8}` where label values are class ids 0..C-1 and 255 means
ignore. Files are read lazily, one item at a time, so a source over 20k
images costs nothing until it is indexed.

Label files store dataset-specific ids (CamVid 11 = void, Cityscapes
labelIds, ADE20K 0 = "other"...). Each source gives a 256-entry lookup table
from stored id to class id; entries of `INVALID` mark values that must never
occur, so a wrong file is reported instead of silently trained on.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import os
import pathlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from sesam_jax.names import IGNORE_INDEX  # noqa: F401 (the package's one ignore value)


# Lookup-table entry for a stored label value outside the dataset's class set.
INVALID = -1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True, eq=False)  # eq would compare numpy arrays.
class DatasetInfo:
  """Static facts about a dataset.

  Attributes:
    name: dataset name as given to `get_source` ("camvid", ...).
    class_names: one name per class id, in id order.
    colors: Nx3 uint8 display colour per class id.
    num_classes: N, the number of classes (ignore not counted).
    ignore_index: label value meaning "not labeled / void".
  """
  name: str
  class_names: tuple[str, ...]
  colors: np.ndarray
  num_classes: int
  ignore_index: int = IGNORE_INDEX

  def __post_init__(self):
    colors = np.asarray(self.colors, np.uint8).reshape(-1, 3)
    object.__setattr__(self, "colors", colors)
    if len(self.class_names) != self.num_classes or len(colors) != self.num_classes:
      raise ValueError(f"{self.name}: {len(self.class_names)} names and {len(colors)} colours "
                       f"for {self.num_classes} classes.")



def stable_hash(text: str) -> int:
  """A 63-bit hash of `text`, the same in every process (Python's hash() is salted)."""
  return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def default_colors(num_classes: int) -> np.ndarray:
  """Nx3 uint8 distinct colours (the PASCAL VOC bit-interleaved palette)."""
  ids = np.arange(num_classes)
  colors = np.zeros((num_classes, 3), np.int64)
  for shift in range(8):
    for channel in range(3):
      colors[:, channel] |= ((ids >> (3 * shift + channel)) & 1) << (7 - shift)
  return colors.astype(np.uint8)


def palette(colors: np.ndarray) -> np.ndarray:
  """256x3 uint8: class colours, white for unlabeled (255) and any id past the classes."""
  full = np.full((256, 3), 255, np.uint8)
  full[:len(colors)] = np.asarray(colors, np.uint8)
  return full


def colorize(label: np.ndarray, colors: np.ndarray) -> np.ndarray:
  """HxW class ids -> HxWx3 uint8 (unlabeled white)."""
  return palette(colors)[label]


def identity_lut(num_classes: int, *, void_values: Sequence[int] = (IGNORE_INDEX,)) -> np.ndarray:
  """Lookup table keeping 0..N-1, mapping `void_values` to 255, rejecting the rest."""
  lut = np.full(256, INVALID, np.int16)
  lut[:num_classes] = np.arange(num_classes)
  for v in void_values:
    lut[v] = IGNORE_INDEX
  return lut


def require_dir(path: str | os.PathLike, what: str, fix: str) -> pathlib.Path:
  """Returns `path` as a Path, or raises FileNotFoundError naming it and the fix."""
  path = pathlib.Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"{what} not found: {path} does not exist or is not a directory. {fix}")
  return path


def list_images(directory: pathlib.Path, suffixes: Sequence[str] = IMAGE_SUFFIXES
                ) -> list[pathlib.Path]:
  """Image files directly in `directory`, sorted by name."""
  return sorted(p for p in directory.iterdir()
                if p.is_file() and p.suffix.lower() in suffixes)


class UnreadableFileError(ValueError):
  """An image or label file that cannot be decoded (corrupt, truncated, not an image).

  Also the base of `weak_sources.WeakLabelError` (a weak label that cannot be used).
  """


def read_image(path: str | os.PathLike) -> np.ndarray:
  """Decodes an image file with PIL.

  Returns:
    HxWx3 uint8 RGB (grey and palette images are converted, alpha dropped).
  """
  with image_errors(path), Image.open(path) as im:
    im.load()
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


@contextlib.contextmanager
def image_errors(path: str | os.PathLike) -> Iterator[None]:
  """Turns PIL's errors on image `path` into one line naming it and the fix.

  Raises:
    FileNotFoundError: the file is missing.
    UnreadableFileError: it cannot be decoded (corrupt, truncated, not an image).
  """
  try:
    yield
  except FileNotFoundError:
    raise FileNotFoundError(f"image file {path} is missing; restore it or remove it from the "
                            "split.") from None
  except (OSError, SyntaxError, ValueError) as e:
    raise UnreadableFileError(f"cannot decode image {path} ({e}); the file is corrupt or "
                              "truncated: re-extract it from the original archive or remove "
                              "it.") from None


def read_label_values(path: str | os.PathLike) -> np.ndarray:
  """Decodes a label PNG as stored values (palette indices for 'P' images).

  Returns:
    HxW array of stored ids (uint8, or wider for 16-bit PNGs).
  """
  try:
    with Image.open(path) as im:
      im.load()
      values = np.asarray(im)
  except FileNotFoundError:
    raise FileNotFoundError(f"label file {path} is missing; restore it or remove its image "
                            "from the split.") from None
  except (OSError, SyntaxError) as e:
    raise UnreadableFileError(f"cannot decode label {path} ({e}); the file is corrupt or "
                              "truncated: re-extract it from the original archive.") from None
  if values.ndim != 2:
    raise ValueError(f"label {path} is a multi-channel ({im.mode}) image, e.g. colour-coded; "
                     "labels must be single-channel class ids ('L' or palette 'P' PNG). "
                     "Convert the colour coding to ids first.")
  return values


def apply_lut(values: np.ndarray, lut: np.ndarray, path: str | os.PathLike,
              dataset: str) -> np.ndarray:
  """Maps stored label ids to class ids (255 = ignore), rejecting unknown ids.

  Args:
    values: HxW stored ids as read from `path`.
    lut: 256 int16 entries; `INVALID` marks ids outside the class set.
    path: the file the values came from (for the error message).
    dataset: dataset name (for the error message).

  Returns:
    HxW uint8 class ids.
  """
  if values.dtype != np.uint8:
    if values.size and (values.min() < 0 or values.max() > 255):
      raise ValueError(f"label {path} has values outside 0..255 "
                       f"({values.min()}..{values.max()}); {dataset} labels are 8-bit ids.")
    values = values.astype(np.uint8)
  mapped = lut[values]
  if (mapped == INVALID).any():
    bad = np.unique(values[mapped == INVALID])
    allowed = np.flatnonzero(lut != INVALID)
    raise ValueError(f"label {path} contains value(s) {bad.tolist()[:10]} outside the {dataset} "
                     f"class set (allowed stored ids: {_ranges(allowed)}); check that the file "
                     "belongs to this dataset/layout or fix the label.")
  return mapped.astype(np.uint8)


def _ranges(ids: np.ndarray) -> str:
  """[0,1,2,5,255] -> '0-2, 5, 255' for messages."""
  parts, start = [], None
  for i, v in enumerate(ids):
    if start is None:
      start = v
    if i + 1 == len(ids) or ids[i + 1] != v + 1:
      parts.append(f"{start}" if start == v else f"{start}-{v}")
      start = None
  return ", ".join(parts)


class SkipUnreadable:
  """A source whose unreadable examples (corrupt or missing files) read as None, counted.

  grain drops None elements, so training goes on without them; each skip is
  logged with the file's path and the running count (`skipped`, per process).
  """

  def __init__(self, source: Any):
    self.source = source
    self.info, self.ids = getattr(source, "info", None), source.ids
    self.skipped: dict[str, str] = {}

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict | None:
    try:
      return self.source[index]
    except (UnreadableFileError, FileNotFoundError) as e:
      self._skip(index, e)
      return None

  def guard(self, weak_fn: Callable[[int, dict], np.ndarray]
            ) -> Callable[[int, dict], np.ndarray | None]:
    """`weak_fn` (index, example) -> weak label, giving None where it cannot be read.

    Weak-label readers (`weak_sources`) raise the errors skipped here (their
    `WeakLabelError` is an `UnreadableFileError`); the example is logged and
    counted in `skipped` like an unreadable image.
    """
    return functools.partial(self._guarded, weak_fn)  # Picklable, for worker processes.

  def _guarded(self, weak_fn: Callable[[int, dict], np.ndarray], index: int,
               example: dict) -> np.ndarray | None:
    try:
      return weak_fn(index, example)
    except (UnreadableFileError, FileNotFoundError) as e:
      self._skip(index, e)
      return None

  def _skip(self, index: int, error: Exception) -> None:
    example_id = self.ids[int(index)]
    if example_id not in self.skipped:
      self.skipped[example_id] = str(error)
      print(f"skipping example {example_id!r} ({len(self.skipped)} skipped so far): {error}",
            file=sys.stderr, flush=True)


class IndexedSource:
  """What every source shares: `ids` (one per example), `len()`, and index checking."""
  ids: list[str]

  def __len__(self) -> int:
    return len(self.ids)

  def _check_index(self, index: int) -> int:
    """`index` as a position in 0..len-1 (negative counts from the end), or IndexError."""
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} items.")
    return index % len(self)


class SubsetSource(IndexedSource):
  """The examples of `source` at `indices`, in that order (same `info`; ids follow).

  Args:
    source: any source.
    indices: positions in `source` (e.g. `subset_indices`).
  """

  def __init__(self, source: Any, indices: Sequence[int]) -> None:
    self.source = source
    self.indices = [int(i) for i in indices]
    self.info = getattr(source, "info", None)
    self.ids = [source.ids[i] for i in self.indices]

  def __getitem__(self, index: int) -> Any:
    return self.source[self.indices[self._check_index(index)]]

  def __repr__(self) -> str:
    return f"SubsetSource({self.source!r}, {len(self)} of {len(self.source)})"


def subset_indices(count: int, size: int, seed: int) -> list[int]:
  """`size` distinct positions out of `count`, drawn by `seed`, sorted (all when size >= count)."""
  if size <= 0 or size >= count:
    return list(range(count))
  rng = np.random.default_rng([int(seed), 0x5EB5E7])
  return sorted(int(i) for i in rng.choice(count, size=size, replace=False))


class PairedFileSource(IndexedSource):
  """Random-access source over a list of (id, image file, label file) triples.

  The dataset readers (camvid, cityscapes, ade20k, voc, custom) only find the
  files; this class reads and checks them lazily, one item per `__getitem__`.
  """

  def __init__(self, info: DatasetInfo, ids: Sequence[str], image_paths: Sequence[pathlib.Path],
               label_paths: Sequence[pathlib.Path], lut: np.ndarray, *, where: str):
    """Args:
      info: the dataset's DatasetInfo.
      ids: one id per item (the image file stem).
      image_paths: image file per item.
      label_paths: label file per item.
      lut: 256-entry int16 table stored id -> class id (255 ignore, INVALID rejected).
      where: description of the split's location for the empty-split error.
    """
    if not ids:
      raise ValueError(f"{info.name}: no images found in {where}; check --data-dir and --split.")
    if not len(ids) == len(image_paths) == len(label_paths):
      raise ValueError("ids, image_paths and label_paths must have the same length.")
    if len(set(ids)) != len(ids):
      dup = sorted(i for i, n in collections.Counter(ids).items() if n > 1)[:5]
      raise ValueError(f"{info.name}: duplicate image ids {dup} in {where}; ids are file stems "
                       "and must be unique within a split.")
    self.info = info
    self.ids = list(ids)
    self.image_paths = list(image_paths)
    self.label_paths = list(label_paths)
    self._lut = np.asarray(lut, np.int16)

  def __getitem__(self, index: int) -> dict:
    index = self._check_index(index)
    image = read_image(self.image_paths[index])
    label = apply_lut(read_label_values(self.label_paths[index]), self._lut_for(index),
                      self.label_paths[index], self.info.name)
    if label.shape != image.shape[:2]:
      raise ValueError(
          f"size mismatch: image {self.image_paths[index]} is {image.shape[1]}x{image.shape[0]} "
          f"(WxH) but label {self.label_paths[index]} is {label.shape[1]}x{label.shape[0]}; "
          "the label must be the same size as its image (re-export it at the image's size).")
    return {"id": self.ids[index], "image": image, "label": label}

  def check_item(self, index: int) -> None:
    """Reads item `index` as far as a check needs, faster than `__getitem__`.

    The label is decoded whole (its values are checked); the image only as far as its header
    and, for PNG, its chunk checksums (`Image.verify`), which catches truncated and corrupt files
    without decompressing the pixels.

    Raises:
      what `__getitem__` raises for this item: FileNotFoundError, UnreadableFileError, ValueError.
    """
    index = self._check_index(index)
    path = self.image_paths[index]
    with image_errors(path), Image.open(path) as im:
      width, height = im.size
      im.verify()
    label = apply_lut(read_label_values(self.label_paths[index]), self._lut_for(index),
                      self.label_paths[index], self.info.name)
    if label.shape != (height, width):
      raise ValueError(
          f"size mismatch: image {path} is {width}x{height} (WxH) but label "
          f"{self.label_paths[index]} is {label.shape[1]}x{label.shape[0]}; the label must be the "
          "same size as its image (re-export it at the image's size).")

  def _lut_for(self, index: int) -> np.ndarray:
    """The stored-id -> class-id table for item `index` (one per dataset here)."""
    return self._lut

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.info.name}, {len(self)} images)"


def pair_by_stem(image_dir: pathlib.Path, label_dir: pathlib.Path, *, dataset: str,
                 image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
                 label_suffix: str = ".png") -> tuple[list[str], list[pathlib.Path],
                                                      list[pathlib.Path]]:
  """Pairs every image in `image_dir` with `label_dir/<stem><label_suffix>`.

  Raises:
    FileNotFoundError: an image has no label (names the first few).
  """
  images = list_images(image_dir, image_suffixes)
  labels = [label_dir / (p.stem + label_suffix) for p in images]
  missing = [str(l) for l in labels if not l.is_file()]
  if missing:
    raise FileNotFoundError(
        f"{dataset}: {len(missing)} image(s) in {image_dir} have no label, e.g. {missing[0]}"
        f"{' (and ' + str(len(missing) - 1) + ' more)' if len(missing) > 1 else ''}; "
        "add the label files or remove those images.")
  return [p.stem for p in images], images, labels
