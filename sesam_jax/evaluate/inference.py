"""Whole-image and sliding-window inference, and the evaluation pass over a val split.

Evaluation is on device, summing on host (scenic / mmseg): each batch's confusion matrix is
computed under jit on the sharded batch, then summed in int64 on the host. Padding never drops an
example: padded pixels carry label 255 and padded examples (`valid` False, also the host-side
padding that makes a batch divisible by the device count) have every label set to 255, so they
add nothing to the confusion matrix.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sesam_jax import report
from sesam_jax.data.base import IGNORE_INDEX
from sesam_jax.evaluate import metrics
from sesam_jax.models import normalize_images
from sesam_jax.run import compile_cache


def _windows(size: int, window: int, stride: int) -> list[int]:
  """Start offsets covering [0, size) with `window`-long windows `stride` apart (last flush)."""
  if size <= window:
    return [0]
  starts = list(range(0, size - window, stride))
  return starts + [size - window]


def _resize(x_BHWK: jax.Array, size: Sequence[int]) -> jax.Array:
  b, _, _, k = x_BHWK.shape
  return jax.image.resize(x_BHWK, (b, size[0], size[1], k), method="bilinear",
                          antialias=False)


def predict_logits(model: nn.Module, variables: Mapping[str, Any], images_BHWC: jax.Array, *,
                   mode: str = "whole", window: int = 512, stride: int = 341,
                   image_scale: float = 1.0) -> jax.Array:
  """Logits at the input resolution, B x H x W x K float32 (traceable; call under jit).

  Args:
    model: the student; `model.apply(variables, x, train=False)` returns H/4 x W/4 logits.
    variables: {"params", "batch_stats"}.
    images_BHWC: uint8 images (padded to a common size).
    mode: "whole" (one forward per image) or "slide" (overlapping `window` crops, logits averaged
      where they overlap; images smaller than a window are padded and the pad cut off).
    window: slide: square window side in pixels (after `image_scale`).
    stride: slide: step between windows.
    image_scale: resize images by this factor before the model (e.g. 0.5 for half-resolution
      training); logits are resized back to the input size.

  Returns:
    float32 logits B x H x W x K.
  """
  b, h, w, _ = images_BHWC.shape
  x = normalize_images(images_BHWC)
  sh, sw = max(int(round(h * image_scale)), 1), max(int(round(w * image_scale)), 1)
  if (sh, sw) != (h, w):
    x = jax.image.resize(x, (b, sh, sw, x.shape[-1]), method="bilinear", antialias=True)
  apply = lambda xx: model.apply(variables, xx, train=False).astype(jnp.float32)
  if mode == "whole":
    return _resize(apply(x), (h, w))
  if mode != "slide":
    raise ValueError(f"eval.mode={mode!r}: choose whole or slide.")
  ph, pw = max(sh, window), max(sw, window)
  x = jnp.pad(x, ((0, 0), (0, ph - sh), (0, pw - sw), (0, 0)))
  total, count = None, jnp.zeros((1, ph, pw, 1), jnp.float32)
  for y0 in _windows(ph, window, stride):
    for x0 in _windows(pw, window, stride):
      logits = _resize(apply(x[:, y0:y0 + window, x0:x0 + window]), (window, window))
      if total is None:
        total = jnp.zeros((b, ph, pw, logits.shape[-1]), jnp.float32)
      total = total.at[:, y0:y0 + window, x0:x0 + window].add(logits)
      count = count.at[:, y0:y0 + window, x0:x0 + window].add(1.0)
  return _resize((total / count)[:, :sh, :sw], (h, w))


def _eval_batch(variables: Mapping[str, Any], batch: Mapping[str, jax.Array], *,
                model: nn.Module, num_classes: int, mode: str, window: int, stride: int,
                image_scale: float, with_labels: bool) -> Any:
  logits = predict_logits(model, variables, batch["image"], mode=mode, window=window,
                          stride=stride, image_scale=image_scale)
  pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  gt = jnp.where(batch["valid"][:, None, None], batch["label"].astype(jnp.int32), IGNORE_INDEX)
  confusion = metrics.confusion_matrix(gt, pred, num_classes)
  return (confusion, pred.astype(jnp.uint8)) if with_labels else confusion


@functools.lru_cache(maxsize=8)
def make_eval_fn(model: nn.Module, mesh: Mesh, *, num_classes: int, mode: str = "whole",
                 window: int = 512, stride: int = 341, image_scale: float = 1.0,
                 with_labels: bool = False) -> Callable:
  """Jitted (variables, batch) -> C x C confusion, batch split over "data", variables replicated.

  With `with_labels`, (confusion, B x H x W uint8 predicted class ids split over "data"). Cached:
  the evaluations of a training run (every `eval_every` steps and the final one) compile once.
  """
  fn = functools.partial(_eval_batch, model=model, num_classes=num_classes, mode=mode,
                         window=window, stride=stride, image_scale=image_scale,
                         with_labels=with_labels)
  out = NamedSharding(mesh, P())
  if with_labels:
    out = (out, NamedSharding(mesh, P("data")))
  return jax.jit(fn, in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))),
                 out_shardings=out)


def pad_batch(batch: Mapping[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
  """Pads the example axis to a multiple of `multiple` (label 255, valid False)."""
  n = len(batch["image"])
  extra = -n % multiple
  out = {k: np.asarray(v) for k, v in batch.items() if k in ("image", "label", "valid")}
  if "valid" not in out:
    out["valid"] = np.ones((n,), bool)
  if extra:
    fill = {"label": IGNORE_INDEX, "valid": False}
    out = {k: np.concatenate([v, np.full((extra, *v.shape[1:]), fill.get(k, 0), v.dtype)])
           for k, v in out.items()}
  return out


def evaluate(model: nn.Module, weights: Mapping[str, Mapping[str, Any]],
             batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh, *, num_classes: int,
             class_names: Sequence[str] | None = None, mode: str = "whole", window: int = 512,
             stride: int = 341, image_scale: float = 1.0, total: int | None = None,
             log: bool = True, keep_examples: int = 0) -> dict[str, Any]:
  """Evaluates several weight sets (e.g. student and EMA teacher) in one pass over the data.

  Args:
    model: the student module.
    weights: name -> variables {"params", "batch_stats"} (replicated jax arrays or numpy).
    batches: host batches {"image" BxHxWx3 uint8, "label" BxHxW uint8 (255 = ignore/pad),
      "valid" B bool} as `make_eval_dataset` yields them.
    mesh: the data mesh; batches are padded to a multiple of its size.
    num_classes: K.
    class_names: names printed beside per-class IoU (default: class ids).
    mode, window, stride, image_scale: see `predict_logits`.
    total: number of batches, for the progress bar.
    log: print the per-class table to stderr.
    keep_examples: also return the first N examples this process evaluates with each weight
      set's predicted labels (the same forward pass; e.g. for TensorBoard images).

  Returns:
    {"<name>_miou": float, "<name>_per_class_iou": list, "<name>_confusion": CxC int64,
     "num_images": int, "eval_seconds": float, "compile_seconds": float (the first batch's
     compile, or its load from the compilation cache; near 0 when this process compiled it
     before)}; with `keep_examples`, "examples": [{"index"
     (position in the split, when batches carry "index"), "image" HxWx3 uint8, "label" HxW
     uint8, "labels" {name: HxW uint8 predicted class ids}}], cropped to each image's size.
  """
  start = time.time()
  eval_fn = make_eval_fn(model, mesh, num_classes=num_classes, mode=mode, window=window,
                         stride=stride, image_scale=image_scale, with_labels=keep_examples > 0)
  sums = {name: np.zeros((num_classes, num_classes), np.int64) for name in weights}
  pending: list[tuple[str, jax.Array]] = []
  kept: list[dict[str, Any]] = []
  num_images = 0
  compile_s = None
  sharding = NamedSharding(mesh, P("data"))
  for batch in report.progress(batches, desc="eval", total=total, unit="batch"):
    host = pad_batch(batch, mesh.devices.size)
    num_images += int(host["valid"].sum())
    offset = 0
    if jax.process_count() > 1:
      # Every host reads the same batches; each contributes its slice of the global batch.
      n = len(host["valid"]) // jax.process_count()
      offset = jax.process_index() * n
      host = {k: v[offset:offset + n] for k, v in host.items()}
    device = {k: jax.make_array_from_process_local_data(sharding, v) for k, v in host.items()}
    if compile_s is None:  # The first batch's shapes, compiled apart (every weight set's alike).
      compile_s = compile_cache.compile_seconds(eval_fn, next(iter(weights.values())), device)
    # Dispatch every weight set before reading back the previous batch's counts.
    new = [(name, eval_fn(variables, device)) for name, variables in weights.items()]
    if keep_examples:
      if len(kept) < keep_examples:  # Waits for this batch: only the first few batches.
        _keep(kept, keep_examples, batch, host, offset, {name: out[1] for name, out in new})
      new = [(name, out[0]) for name, out in new]
    for name, conf in pending:
      sums[name] += np.asarray(jax.device_get(conf), np.int64)
    pending = new
  for name, conf in pending:
    sums[name] += np.asarray(jax.device_get(conf), np.int64)
  names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
  result: dict[str, Any] = {}
  for name, conf in sums.items():
    iou = metrics.per_class_iou(conf)
    result[f"{name}_miou"] = metrics.miou(conf)
    result[f"{name}_per_class_iou"] = [None if np.isnan(v) else round(float(v), 4) for v in iou]
    result[f"{name}_confusion"] = conf
    if log and jax.process_index() == 0:  # One table for a multi-host run.
      report.log(f"{name} weights, {num_images} images:\n{metrics.format_iou_table(conf, names)}")
  result["num_images"] = num_images
  result["eval_seconds"] = time.time() - start
  result["compile_seconds"] = compile_s or 0.0
  if keep_examples:
    result["examples"] = kept
  return result


def _keep(kept: list[dict[str, Any]], limit: int, batch: Mapping[str, np.ndarray],
          host: Mapping[str, np.ndarray], offset: int, labels: Mapping[str, jax.Array]) -> None:
  """Appends this process's valid examples of the batch to `kept` (up to `limit` in all), each
  with every weight set's predicted labels, cropped to the image's true size (`batch["hw"]`).

  Args:
    kept: the list to extend.
    limit: how many examples to keep in all.
    batch: the batch as the dataset yielded it (global rows; "hw" and "index" when present).
    host: this process's rows of the padded batch; row j is row `offset + j` of `batch`.
    offset: see `host`.
    labels: weight-set name -> B x H x W uint8 labels of the global batch (device).
  """
  local = {name: _local_rows(array) for name, array in labels.items()}
  for j in np.flatnonzero(host["valid"])[:limit - len(kept)]:
    h, w = batch["hw"][offset + j] if "hw" in batch else host["label"][j].shape
    example = {"image": host["image"][j, :h, :w], "label": host["label"][j, :h, :w],
               "labels": {name: rows[j, :h, :w] for name, rows in local.items()}}
    if "index" in batch:
      example["index"] = int(batch["index"][offset + j])
    kept.append(example)


def _local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch split over "data", in order (all of it on one host)."""
  if array.is_fully_addressable:
    return np.asarray(array)
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards])
