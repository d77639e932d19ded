"""`sesam predict`: a trained run's student (or EMA teacher) on new images.

A run's workdir holds everything needed: its config (the model, the dataset whose classes and
colours the labels use, and the evaluation settings) and its checkpoints, opened with
`sesam_jax.run.runs.open_run`. Only the weights are restored (`params` and `batch_stats`, or their
EMA copies, `Run.restore_weights`), read straight from the checkpoint's tree metadata: no
optimizer, no data iterator, no training code.

Inference is `inference.predict_logits` (the function `sesam eval` uses) with the run's own
settings (whole image or sliding window, `image_scale`), jitted once per image size and batched
over the `("data",)` mesh of this host's devices, the weights replicated. Images are batched
with neighbours of the same size only, so an image's labels never depend on which images share
its batch; a short batch is filled with blank images, as evaluation fills its last batch. On a
dataset split (or a folder of its images), the fine labels give the mIoU, scored exactly as
`sesam eval` scores it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import pathlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from sesam_jax import data, outputs, report
from sesam_jax.atomic import write_atomic, write_png_atomic
from sesam_jax.data import base
from sesam_jax.evaluate import inference, metrics
from sesam_jax.models import create_model
from sesam_jax.run import runs
from sesam_jax.run.layout import CONFIG, Layout

OVERLAY_ALPHA = 0.5  # Weight of the label colours in the overlay JPEG.


@dataclasses.dataclass
class LoadedRun:
  """A run's model and weights, ready for inference.

  Attributes:
    workdir: the run directory.
    config: its `config.json` as an ml_collections ConfigDict.
    info: the dataset's class names and colours.
    model: the student module (built from `config.model`).
    variables: {"params", "batch_stats"} as numpy arrays (student or EMA teacher).
    step: the checkpoint's step.
    weights: "student" or "ema".
  """
  workdir: pathlib.Path
  config: Any
  info: base.DatasetInfo
  model: Any
  variables: dict[str, Any]
  step: int
  weights: str


@dataclasses.dataclass(frozen=True)
class Settings:
  """How images go through the model (`inference.predict_logits`) and how many at once."""
  mode: str = "whole"  # "whole" or "slide".
  window: int = 512  # slide: square window side, pixels (after image_scale).
  stride: int = 341  # slide: step between windows, pixels.
  image_scale: float = 1.0  # Resize factor before the model; logits go back to full size.
  batch_size: int = 8  # Images per batch (rounded up to a multiple of the devices).

  def validate(self) -> "Settings":
    if self.mode not in ("whole", "slide"):
      raise ValueError(f"--mode {self.mode!r}: choose whole or slide.")
    if not self.image_scale > 0:
      raise ValueError(f"--image-scale {self.image_scale}: must be positive.")
    if self.batch_size < 1 or self.window < 1 or self.stride < 1:
      raise ValueError("--batch-size, --window and --stride must be positive.")
    return self


def dataset_info(config: Any) -> base.DatasetInfo:
  """Class names and colours of the run's dataset (from its module; the files if it has none)."""
  name = config.dataset.name
  if name not in data.SOURCES:
    raise ValueError(f"the run's dataset {name!r} is unknown here; choose one of "
                     f"{', '.join(data.SOURCES)}.")
  module = importlib.import_module(data.SOURCES[name])
  if hasattr(module, "info"):
    return module.info()
  return runs.dataset_source(config).info  # custom: the class list lives with the data.


def load_run(workdir: str | os.PathLike, *, ema: bool = False) -> LoadedRun:
  """The run's model and the latest checkpoint's weights (student, or the EMA teacher).

  Raises:
    FileNotFoundError: no config.json or no checkpoint in `workdir`.
    ValueError: the checkpoint does not fit the model the config names.
  """
  run = runs.open_run(workdir)
  info = dataset_info(run.config)
  variables, step = run.restore_weights(ema=ema)
  model = create_model(run.config.model, info.num_classes, dtype=jnp.dtype(run.config.dtype),
                       attention=run.config.get("attention", "auto"))
  _check_fits(model, variables, run.layout)
  return LoadedRun(run.workdir, run.config, info, model, variables, step,
                   "ema" if ema else "student")


def _check_fits(model: Any, variables: Mapping[str, Any], layout: Layout) -> None:
  """Fails with the first mismatching weight when the checkpoint is not of this model."""
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  want = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  want = {"params": want["params"], "batch_stats": want.get("batch_stats", {})}
  got_leaves = dict(jax.tree_util.tree_flatten_with_path(variables)[0])
  for path, leaf in jax.tree_util.tree_flatten_with_path(want)[0]:
    have = got_leaves.get(path)
    if have is None or tuple(have.shape) != tuple(leaf.shape):
      name = jax.tree_util.keystr(path)
      raise ValueError(f"checkpoint in {layout.checkpoints} does not fit the model of its "
                       f"{CONFIG} at {name} (expected {tuple(leaf.shape)}, found "
                       f"{None if have is None else tuple(have.shape)}); was {CONFIG} edited?")


def settings_from_config(config: Any, **overrides: Any) -> Settings:
  """The run's evaluation settings (`config.eval`), with non-None `overrides` on top."""
  e = config.eval
  values = dict(mode=e.mode, window=int(e.window), stride=int(e.stride),
                image_scale=float(e.image_scale), batch_size=int(e.batch_size))
  values.update({k: v for k, v in overrides.items() if v is not None})
  return Settings(**values).validate()


def local_mesh() -> Mesh:
  """A `("data",)` mesh over this host's devices (prediction never needs other hosts)."""
  return Mesh(np.array(jax.local_devices()), ("data",))


def _labels(variables: Mapping[str, Any], images_BHWC: jax.Array, *, model: Any,
            settings: Settings) -> jax.Array:
  logits = inference.predict_logits(model, variables, images_BHWC, mode=settings.mode,
                                    window=settings.window, stride=settings.stride,
                                    image_scale=settings.image_scale)
  return jnp.argmax(logits, axis=-1).astype(jnp.uint8)


def label_function(model: Any, settings: Settings) -> Callable[[Any, jax.Array], jax.Array]:
  """(variables, images BxHxWx3 uint8) -> BxHxW uint8 class ids; traceable, not jitted."""
  return functools.partial(_labels, model=model, settings=settings)


@functools.lru_cache(maxsize=8)
def make_label_fn(model: Any, settings: Settings, mesh: Mesh) -> Callable:
  """`label_function` jitted with the batch split over "data" and the weights replicated.

  Cached: runs of one model and settings (student and EMA, several workdirs) share one
  compiled function per image size.
  """
  return jax.jit(label_function(model, settings),
                 in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))),
                 out_shardings=NamedSharding(mesh, P("data")))


def _size_batches(examples: Iterable[dict], batch_size: int) -> Iterator[list[dict]]:
  """Runs of consecutive examples of one image size, at most `batch_size` long."""
  batch: list[dict] = []
  for example in examples:
    if batch and (len(batch) == batch_size
                  or example["image"].shape != batch[0]["image"].shape):
      yield batch
      batch = []
    batch.append(example)
  if batch:
    yield batch


def predict_examples(run: LoadedRun, examples: Iterable[dict], settings: Settings,
                     mesh: Mesh | None = None) -> Iterator[tuple[dict, np.ndarray]]:
  """Labels for each example, in order: (example, HxW uint8 class ids).

  Args:
    run: the loaded run.
    examples: dicts with "image" HxWx3 uint8 (and anything else, passed through).
    settings: inference settings.
    mesh: the data mesh; default this host's devices.

  Yields:
    (example, label) pairs; batch t+1 is dispatched before batch t is read back.
  """
  mesh = mesh or local_mesh()
  label_fn = make_label_fn(run.model, settings, mesh)
  variables = jax.device_put(run.variables, NamedSharding(mesh, P()))
  sharding = NamedSharding(mesh, P("data"))
  size = -(-settings.batch_size // mesh.size) * mesh.size  # A device multiple.
  pending: tuple[list[dict], jax.Array] | None = None
  for batch in _size_batches(examples, size):
    images = np.zeros((size, *batch[0]["image"].shape), np.uint8)  # Blank fill, as eval pads.
    for k, example in enumerate(batch):
      images[k] = example["image"]
    labels = label_fn(variables, jax.device_put(images, sharding))
    if pending is not None:
      yield from zip(pending[0], np.asarray(pending[1]))
    pending = (batch, labels)
  if pending is not None:
    yield from zip(pending[0], np.asarray(pending[1]))


def overlay(image: np.ndarray, label: np.ndarray, colors: np.ndarray,
            alpha: float = OVERLAY_ALPHA) -> np.ndarray:
  """HxWx3 uint8: the image blended with the label's colours (unlabeled pixels untouched)."""
  palette = np.zeros((256, 3), np.float32)
  palette[:len(colors)] = colors
  mixed = (1 - alpha) * image.astype(np.float32) + alpha * palette[label]
  keep = (label == base.IGNORE_INDEX)[..., None]
  return np.where(keep, image, np.clip(np.round(mixed), 0, 255)).astype(np.uint8)


def write_jpeg_atomic(path: pathlib.Path, image: np.ndarray, quality: int = 90) -> None:
  """Writes HxWx3 uint8 as JPEG (temporary name, then rename: `sesam_jax.atomic`)."""
  write_atomic(path, lambda f: Image.fromarray(image).save(f, format="JPEG", quality=quality))


def list_input_images(path: str | os.PathLike) -> list[pathlib.Path]:
  """The image files `--input` names: one file, or the images directly in a folder."""
  path = pathlib.Path(path)
  if path.is_file():
    return [path]
  if not path.is_dir():
    raise FileNotFoundError(f"--input {path} does not exist; give an image file or a folder of "
                            "images.")
  images = base.list_images(path)
  if not images:
    raise ValueError(f"--input {path} holds no images ({', '.join(base.IMAGE_SUFFIXES)}); "
                     "point it at a folder of image files.")
  stems: dict[str, pathlib.Path] = {}
  for p in images:
    if p.stem in stems:
      raise ValueError(f"--input {path}: {stems[p.stem].name} and {p.name} would both write "
                       f"{p.stem}.png; rename one of them.")
    stems[p.stem] = p
  return images


def _label_size_error(path: pathlib.Path, image_hw: tuple[int, int],
                      label_hw: tuple[int, int]) -> str | None:
  """The message for an image whose dataset fine label has another size, else None."""
  if tuple(label_hw) == tuple(image_hw):
    return None
  return (f"image {path} is {image_hw[1]}x{image_hw[0]} but the fine label of {path.stem!r} in "
          f"the dataset is {label_hw[1]}x{label_hw[0]}; pass --dataset only for images of that "
          "dataset.")


def input_errors(paths: list[pathlib.Path], source: Any | None) -> list[str]:
  """Checks every input image before any work: one message per image that cannot be used.

  Reads each file's header and checks its data (PIL's `verify`: chunk checksums for PNG) without
  decoding the pixels; with `source`, also compares the image size with the size of the fine
  label of the same id. A file that passes but still fails to decode is reported by `predict`
  after the run, with the others.

  Args:
    paths: the input image files.
    source: the dataset whose fine labels score the images it holds (matched by file stem), or
      None.

  Returns:
    One line per bad image (naming the file and the fix); empty when all can be used.
  """
  positions = {i: k for k, i in enumerate(source.ids)} if source is not None else {}
  errors = []
  for p in paths:
    try:
      with base.image_errors(p), Image.open(p) as im:
        width, height = im.size
        im.verify()
    except (FileNotFoundError, base.UnreadableFileError) as e:
      errors.append(str(e))
      continue
    if p.stem in positions:
      try:
        label = source[positions[p.stem]]["label"]
      except (FileNotFoundError, ValueError) as e:
        errors.append(f"{p}: {e}")
        continue
      message = _label_size_error(p, (height, width), label.shape)
      if message:
        errors.append(message)
  return errors


def bad_images_error(errors: list[str], total: int) -> report.UserError:
  """One error listing every bad image, one line each, and what to do."""
  return report.UserError(
      f"{len(errors)} of {total} input images cannot be used; fix or remove each and rerun "
      "(nothing was written):\n" + "\n".join(f"  {e}" for e in errors))


def _file_examples(paths: list[pathlib.Path], source: Any | None,
                   errors: list[str]) -> Iterator[dict]:
  """Examples read from image files; with `source`, fine labels of the ids it holds.

  An image that cannot be read, or whose fine label has another size, is skipped and its
  message appended to `errors`.
  """
  positions = {i: k for k, i in enumerate(source.ids)} if source is not None else {}
  for p in paths:
    try:
      example = {"id": p.stem, "image": base.read_image(p), "path": str(p)}
    except (FileNotFoundError, base.UnreadableFileError) as e:
      errors.append(str(e))
      continue
    if p.stem in positions:
      label = source[positions[p.stem]]["label"]
      message = _label_size_error(p, example["image"].shape[:2], label.shape)
      if message:
        errors.append(message)
        continue
      example["label"] = label
    yield example


def _source_examples(source: Any, count: int) -> Iterator[dict]:
  for i in range(count):
    item = source[i]
    yield {"id": item["id"], "image": item["image"], "label": item["label"]}


def predict(workdir: str | os.PathLike, *, out_dir: str | os.PathLike,
            input_path: str | os.PathLike | None = None, dataset: str | None = None,
            data_dir: str | None = None, split: str | None = None, limit: int | None = None,
            ema: bool = False, write_overlay: bool = False, **overrides: Any) -> dict:
  """Runs a trained run on images and writes label PNGs (and overlays): `sesam predict`.

  Args:
    workdir: the run directory (config.json, checkpoints/).
    out_dir: folder for `<stem>.png` labels (palette PNG, values = class ids) and, with
      `write_overlay`, `<stem>_overlay.jpg`.
    input_path: an image file or a folder of images; None = the dataset split.
    dataset, data_dir, split: a dataset split to predict on (no `input_path`), or whose fine
      labels score the `input_path` images that it holds (matched by file stem).
    limit: only the first N images.
    ema: the EMA teacher's weights instead of the student's.
    write_overlay: also write the colour overlay JPEGs.
    **overrides: Settings fields (mode, window, stride, image_scale, batch_size); None keeps
      the run's own.

  Returns:
    {"images", "seconds", "seconds_per_image", "out", "weights", "step", settings...,
     and with fine labels "miou", "per_class_iou" {class: IoU}, "labeled_images"}.
  """
  start = time.perf_counter()
  run = load_run(workdir, ema=ema)
  settings = settings_from_config(run.config, **overrides)
  source = None
  if dataset is not None or input_path is None:
    source = runs.dataset_source(run.config, dataset=dataset, data_dir=data_dir, split=split)
    if source.info.num_classes != run.info.num_classes:
      raise ValueError(f"--dataset {source.info.name} has {source.info.num_classes} classes, "
                       f"the run {run.info.num_classes}; score with the run's own dataset.")
  errors: list[str] = []
  if input_path is not None:
    paths = list_input_images(input_path)[:limit]
    errors = input_errors(paths, source)
    if errors:
      raise bad_images_error(errors, len(paths))
    count, examples = len(paths), _file_examples(paths, source, errors)
  else:
    count = len(source) if limit is None else min(limit, len(source))
    examples = _source_examples(source, count)
  out = pathlib.Path(out_dir)
  mesh = local_mesh()
  num_classes = run.info.num_classes
  confusion = np.zeros((num_classes, num_classes), np.int64)
  labeled = 0
  report.log(f"predict: {run.weights} weights of {run.workdir} (step {run.step}), "
             f"{settings.mode} at scale {settings.image_scale}, {count} images -> {out}")
  # Files land in `out` only when every image is done: a failed run leaves no folder it made.
  with outputs.staged_folder(out) as stage:
    results = predict_examples(run, examples, settings, mesh)
    for example, label in report.progress(results, desc="predict", total=count, unit="img"):
      write_png_atomic(stage / f"{example['id']}.png", label, palette=run.info.colors)
      if write_overlay:
        write_jpeg_atomic(stage / f"{example['id']}_overlay.jpg",
                          overlay(example["image"], label, run.info.colors))
      if "label" in example:
        confusion += _confusion(example["label"], label, num_classes)
        labeled += 1
    if errors:  # Files that passed the check but failed to decode.
      raise bad_images_error(errors, count)
  seconds = time.perf_counter() - start
  result: dict[str, Any] = {
      "workdir": str(run.workdir), "weights": run.weights, "step": run.step, "images": count,
      "seconds": round(seconds, 3), "seconds_per_image": round(seconds / max(count, 1), 4),
      "out": str(out), **dataclasses.asdict(settings), "devices": mesh.size}
  if labeled:
    iou = metrics.per_class_iou(confusion)
    result.update(miou=metrics.miou(confusion), labeled_images=labeled,
                  per_class_iou={n: None if np.isnan(v) else round(float(v), 4)
                                 for n, v in zip(run.info.class_names, iou)})
    report.log(f"{run.weights} weights, {labeled} images with fine labels:\n"
               f"{metrics.format_iou_table(confusion, run.info.class_names)}")
  elif source is not None:
    report.log(f"predict: none of the images is in {source.info.name}'s split; no mIoU.")
  return result


def _confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
  """CxC counts of (true, predicted) over pixels whose true class is known (host, exact)."""
  keep = gt < num_classes
  index = gt[keep].astype(np.int64) * num_classes + pred[keep]
  return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
