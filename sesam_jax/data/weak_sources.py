"""The user's own weak labels: one reader per storage format, chosen by a spec string.

`weak_label_reader(spec, source, **options)` returns a reader that is a
`WeakFn`, `reader(index, example) -> HxW uint8` (class ids of `source`,
255 = unlabeled), the interface of `input_pipeline.weak_label_fn`, so training,
the SAM bank and `sesam refine --weak-source SPEC` use it alike. Specs:

  png:DIR               one `<image stem>.png` per image        (PngReader)
  cityscapes_coarse     Cityscapes' gtCoarse annotations        (weak_trees.CityscapesCoarseReader)
  scribble_png:ROOT     scribble PNGs in a dataset's own tree   (weak_trees.ScribblePngReader)
  scribblesup_xml:DIR   ScribbleSup's XML scribbles             (weak_vectors.ScribbleSupReader)
  clicks_csv:FILE       one CSV row per click                   (weak_vectors.ClicksCsvReader)

A weak label that cannot be used (wrong size, a class outside the dataset,
undecodable) raises `WeakLabelError`, a missing one FileNotFoundError; both name
the file and the fix, and both are what `base.SkipUnreadable` skips. `check`
reads a whole split and returns every problem instead of stopping at the first.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from sesam_jax import report
from sesam_jax.data import base


class WeakLabelError(base.UnreadableFileError):
  """A weak label that cannot be used: wrong size, unknown class, undecodable.

  A subclass of `base.UnreadableFileError` (itself a ValueError), so `sesam`
  reports it as one line with exit code 2 and `base.SkipUnreadable` skips it.
  """


# What a reader raises for one image's weak label (and what `check` collects).
SKIPPABLE = (base.UnreadableFileError, FileNotFoundError)


@dataclasses.dataclass(frozen=True)
class Problem:
  """One image whose weak label cannot be used: its position, id and the error's line."""
  index: int
  example_id: str
  message: str


def format_problems(problems: Sequence[Problem], what: str, *, shown: int = 20) -> str:
  """`problems` as one message: a count, then up to `shown` lines, then how many more."""
  lines = [f"{len(problems)} {what} cannot be used:"]
  lines += [f"  {p.message}" for p in problems[:shown]]
  if len(problems) > shown:
    lines.append(f"  ... and {len(problems) - shown} more.")
  return "\n".join(lines)


def read_ids_png(path: pathlib.Path, fix_missing: str) -> np.ndarray:
  """Stored values of a label PNG: 'L', 'P' (palette indices), 16-bit, or grey RGB(A).

  Three equal colour channels (what OpenCV writes for a grey label) read as one.

  Raises:
    FileNotFoundError: `path` is missing (message ends with `fix_missing`).
    WeakLabelError: undecodable, or colour-coded (channels differ).
  """
  try:
    with Image.open(path) as im:
      im.load()
      values = np.asarray(im)
  except FileNotFoundError:
    raise FileNotFoundError(f"weak label {path} not found; {fix_missing}") from None
  except (OSError, SyntaxError, ValueError) as e:
    raise WeakLabelError(f"cannot decode weak label {path} ({e}); the file is corrupt or "
                         "truncated: export it again.") from None
  if values.ndim == 3:
    rgb = values[..., :3]
    if not (rgb == rgb[..., :1]).all():
      raise WeakLabelError(f"weak label {path} is colour-coded (its RGB channels differ); "
                           "weak labels must hold class ids: convert the colours to ids.")
    values = rgb[..., 0]
  return values


def map_ids(values: np.ndarray, lut: np.ndarray, path: pathlib.Path,
            hw: tuple[int, int] | None) -> np.ndarray:
  """Stored ids -> class ids through `lut` (`base.apply_lut`), size-checked against `hw`.

  Raises:
    WeakLabelError: a value outside the lut, or a size other than `hw`.
  """
  try:
    weak = base.apply_lut(values, lut, path, "weak label")
  except ValueError as e:
    raise WeakLabelError(str(e)) from None
  if hw is not None and weak.shape != tuple(hw):
    raise WeakLabelError(f"weak label {path} is {weak.shape[1]}x{weak.shape[0]} (WxH) but its "
                         f"image is {hw[1]}x{hw[0]}; labels must have the image's size "
                         "(export it again at the image's size).")
  return weak


def read_weak_label(folder: str | os.PathLike, image_id: str, *, num_classes: int,
                    shape: tuple[int, int] | None = None) -> np.ndarray:
  """Reads `folder/<image_id>.png` (class ids, 255 = unlabeled).

  Args:
    folder: folder of weak-label PNGs ('L' or palette 'P').
    image_id: the image stem.
    num_classes: values must be < num_classes or 255.
    shape: (H, W) the label must have (its image's size), if given.

  Returns:
    HxW uint8 weak label.
  """
  path = pathlib.Path(folder) / f"{image_id}.png"
  values = read_ids_png(path, f"every image of the split needs <image stem>.png in {folder} "
                              "(generate them with `sesam weak-labels` or export yours there).")
  return map_ids(values, base.identity_lut(num_classes), path, shape)


class WeakLabelDir:
  """A folder of user-provided (or `sesam weak-labels`) weak labels, `<id>.png` each."""

  def __init__(self, folder: str | os.PathLike, *, num_classes: int,
               ids: Sequence[str] | None = None):
    """Args:
      folder: the folder; must exist.
      num_classes: values must be < num_classes or 255.
      ids: if given, every `<id>.png` must exist (checked now, not mid-training).
    """
    self.folder = base.require_dir(folder, "weak label folder",
                                   "pass the folder holding <image stem>.png weak labels.")
    self.num_classes = num_classes
    missing = [i for i in ids or () if not (self.folder / f"{i}.png").is_file()]
    if missing:
      raise FileNotFoundError(f"{len(missing)} image(s) have no weak label in {self.folder}, "
                              f"e.g. {self.folder / (missing[0] + '.png')}; add them or choose "
                              "another folder.")

  def read(self, image_id: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """HxW uint8 weak label of `image_id` (see `read_weak_label`)."""
    return read_weak_label(self.folder, image_id, num_classes=self.num_classes, shape=shape)


# ---------------------------------------------------------------- readers


def _image_paths(source: Any) -> dict[str, pathlib.Path]:
  """id -> image file of `source` or of a source it wraps (`.source`); {} if unknown."""
  for _ in range(4):
    paths = getattr(source, "image_paths", None)
    if paths is not None:
      return dict(zip(source.ids, (pathlib.Path(p) for p in paths)))
    source = getattr(source, "source", None)
    if source is None:
      break
  return {}


def int_tuple(value: int | str | Sequence[int], name: str) -> tuple[int, ...]:
  """An option given as 255, "0,255" or (0, 255) -> a tuple of ints."""
  try:
    parts = value.split(",") if isinstance(value, str) else np.atleast_1d(value).tolist()
    return tuple(int(v) for v in parts)
  except (TypeError, ValueError):
    raise ValueError(f"weak-label option {name}={value!r}: give integers, e.g. {name}=0,255."
                     ) from None


class WeakLabelReader:
  """Base of the readers: a `WeakFn` keyed by image id, sized by the example's image.

  Subclasses implement `read(example_id, hw)`; `kind` is the weak-label kind
  their labels are ("points", "scribbles", "coarse"; None when not known).
  """
  kind: str | None = None

  def __init__(self, source: Any):
    self.info = source.info
    self.num_classes = source.info.num_classes
    self.image_paths = _image_paths(source)

  def __call__(self, index: int, example: dict[str, Any]) -> np.ndarray:
    """HxW uint8 weak label of `example` (its "id"; sized like its "image")."""
    return self.read(example["id"], example["image"].shape[:2])

  def read(self, example_id: str, hw: tuple[int, int] | None) -> np.ndarray:
    """HxW uint8 weak label of image `example_id`, checked to be `hw` (H, W) if given."""
    raise NotImplementedError

  def check(self, source: Any, *, limit: int | None = None) -> list[Problem]:
    """Reads the weak label of every image of `source` (the first `limit`).

    Image sizes come from the image files' headers where the source has them.

    Returns:
      One `Problem` per image whose weak label is missing or unusable, in order.
    """
    count = len(source) if limit is None else min(limit, len(source))
    problems = []
    for i in report.progress(range(count), desc="checking weak labels", unit="img"):
      example_id = source.ids[i]
      try:
        self.read(example_id, self._image_hw(source, i, example_id))
      except SKIPPABLE as e:
        problems.append(Problem(i, example_id, str(e)))
    return problems

  def _image_hw(self, source: Any, index: int, example_id: str) -> tuple[int, int] | None:
    """(H, W) of an image, None if it cannot be read (the source reports that)."""
    try:
      if example_id in self.image_paths:
        with Image.open(self.image_paths[example_id]) as im:
          return im.size[::-1]
      example = source[index]
      return None if example is None else example["image"].shape[:2]
    except SKIPPABLE + (OSError,):
      return None


class PngReader(WeakLabelReader):
  """`png:DIR`: `DIR/<image stem>.png` per image, as `sesam weak-labels` writes them.

  Layout: one single-channel PNG ('L' or palette 'P') per image of the split,
  named by the image id (its file stem), the image's size, holding the
  dataset's class ids 0..C-1 and 255 for unlabeled pixels.
  """

  def __init__(self, source: Any, location: str, *, kind: str | None = None):
    """Args:
      source: the dataset source.
      location: DIR.
      kind: the kind of these labels ("points", "scribbles", "coarse"), if known.
    """
    super().__init__(source)
    if kind not in (None, "points", "scribbles", "coarse"):
      raise ValueError(f"png: kind={kind!r}; choose points, scribbles or coarse.")
    self.dir = WeakLabelDir(location, num_classes=self.num_classes)
    self.kind = kind

  def read(self, example_id: str, hw: tuple[int, int] | None) -> np.ndarray:
    return self.dir.read(example_id, hw)


# spec name -> "module:Class"; each class's docstring spells out its layout.
READERS = {
    "png": "sesam_jax.data.weak_sources:PngReader",
    "cityscapes_coarse": "sesam_jax.data.weak_trees:CityscapesCoarseReader",
    "scribble_png": "sesam_jax.data.weak_trees:ScribblePngReader",
    "scribblesup_xml": "sesam_jax.data.weak_vectors:ScribbleSupReader",
    "clicks_csv": "sesam_jax.data.weak_vectors:ClicksCsvReader",
}


def reader_class(name: str) -> type[WeakLabelReader]:
  """The reader class of spec name `name` (a key of READERS)."""
  if name not in READERS:
    specs = (n if n == "cityscapes_coarse" else f"{n}:PATH" for n in READERS)
    raise ValueError(f"unknown weak-label source {name!r}; choose one of: {', '.join(specs)}.")
  module, cls = READERS[name].split(":")
  return getattr(importlib.import_module(module), cls)


def parse_options(pairs: Sequence[str] | None, flag: str = "--weak-option") -> dict[str, str]:
  """["key=value", ...] (the command line's --weak-option) -> {key: value}."""
  options = {}
  for pair in pairs or ():
    key, sep, value = pair.partition("=")
    if not sep or not key:
      raise ValueError(f"{flag} {pair!r}: write KEY=VALUE, e.g. width=3.")
    options[key.strip()] = value.strip()
  return options


def parse_option_string(text: str, flag: str = "--config.weak_options") -> dict[str, str]:
  """"key=value,key=value" (a training config's `weak_options`) -> {key: value}.

  A part without "=" continues the value before it, so "unlabeled=0,255,width=3" is
  {"unlabeled": "0,255", "width": "3"}.
  """
  pairs: list[str] = []
  for part in (text or "").split(","):
    if "=" in part or not pairs:
      pairs.append(part)
    else:
      pairs[-1] += "," + part
  return parse_options([p for p in pairs if p.strip()], flag=f"{flag}=")


def weak_label_reader(spec: str, source: Any, **options: Any) -> WeakLabelReader:
  """The reader for `spec` over `source`: a `WeakFn` with `check` and `kind`.

  Args:
    spec: "png:DIR", "cityscapes_coarse[:ROOT]", "scribble_png:ROOT",
      "scribblesup_xml:DIR" or "clicks_csv:FILE".
    source: the dataset source whose images the weak labels belong to.
    **options: the reader's options (see its class), typed or as strings.

  Returns:
    `reader(index, example) -> HxW uint8` (255 = unlabeled).
  """
  name, _, location = spec.partition(":")
  cls = reader_class(name)
  params = inspect.signature(cls.__init__).parameters
  if "location" in params and params["location"].default is inspect.Parameter.empty \
      and not location:
    raise ValueError(f"weak-label source {spec!r} needs a path: {name}:PATH.")
  allowed = [p for p in params if p not in ("self", "source", "location")]
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(f"weak-label source {name} has no option {unknown[0]!r}; its options: "
                     f"{', '.join(allowed) or 'none'}.")
  return cls(source, location, **options)


def training_reader(spec: str, source: Any, weak: str, options: str | dict[str, Any] = ""
                    ) -> WeakLabelReader:
  """The reader of a training config's `weak_source` (errors name the training flags).

  Args:
    spec: `config.weak_source`, e.g. "clicks_csv:/data/clicks.csv".
    source: the training source.
    weak: `config.weak`, the kind of the labels; it must match a reader that knows its kind
      (png labels take it as their kind).
    options: `config.weak_options` ("key=value,...") or a dict.

  Returns:
    The reader (a `WeakFn` with `check`).
  """
  where = f"--config.weak_source={spec}"
  options = parse_option_string(options) if isinstance(options, str) else dict(options)
  if options:
    where += f" --config.weak_options={','.join(f'{k}={v}' for k, v in options.items())}"
  try:
    params = inspect.signature(reader_class(spec.partition(":")[0]).__init__).parameters
    if "kind" in params and weak != "fine":
      options.setdefault("kind", weak)  # png: the labels are of the configured kind.
    reader = weak_label_reader(spec, source, **options)
  except (ValueError, FileNotFoundError) as e:
    raise type(e)(f"{where}: {e} (reader options go in --config.weak_options=KEY=VALUE,...)"
                  ) from None
  if reader.kind is None:
    raise ValueError(f"{where}: set --config.weak=points|scribbles|coarse to the kind of "
                     "these labels (it decides how SAM is prompted).")
  if reader.kind != weak:
    raise ValueError(f"{where} holds {reader.kind} labels but --config.weak={weak}: set "
                     f"--config.weak={reader.kind}.")
  return reader
