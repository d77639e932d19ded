"""`sesam bench --what bank`: host memory of SeSAM training at Cityscapes scale.

Fills, for a generated Cityscapes-sized training split (2,975 images of 1024x2048 by default),
what a SeSAM run keeps on the host: the SAM label bank (one SAM label and one teacher extension
per image, `sesam_jax.sam.label_store.PackedLabels`), the weak-label cache and the decoded-example
cache (`sesam_jax.data.memo`, bounded by `--weak-cache-mb` / `--image-cache-mb` as in training).
No SAM runs: the maps are generated directly, street-scene-like (sky over a wavy horizon,
buildings, vegetation with ragged edges, road, sidewalks, cars, people, poles and signs; 19
classes), the SAM label being the scene's label and the extension that label where a smooth
random confidence field is high and away from class boundaries (where a teacher is unsure).

Prints bytes per image of labels and extensions (packed vs raw), the caches' bytes, the
process's RSS before filling (imports and the generator's own scenes), after, and at its peak
(`resource.getrusage`, which includes writing and reading the checkpoint item), the checkpoint
item's size and its get_state / set_state seconds, and the bank's per-step host costs at crop
1024, batch 8 (SAM labels into the crops, teacher extensions back to full resolution), with the
maps packed and, side by side, held raw as before.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import scipy.ndimage as ndi
from PIL import Image

from sesam_jax import report
from sesam_jax.data import augment, cityscapes, memo
from sesam_jax.sam.bank import SamLabelBank, SamLabelConfig

# Cityscapes train ids used by the generator.
ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, PERSON, CAR = 0, 1, 2, 5, 7, 8, 10, 11, 13


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--images", type=int, default=2975,
                      help="training images (Cityscapes: 2,975)")
  parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"),
                      help="image size")
  parser.add_argument("--weak-cache-mb", type=int, default=512,
                      help="weak-label cache bound, MiB (config.dataset.weak_cache_mb)")
  parser.add_argument("--image-cache-mb", type=int, default=512,
                      help="decoded-example cache bound, MiB (config.dataset.image_cache_mb)")
  parser.add_argument("--crop", type=int, default=1024, help="training crop of the step costs")
  parser.add_argument("--batch", type=int, default=8, help="batch of the step costs")
  parser.add_argument("--seed", type=int, default=0, help="scene seed")
  parser.add_argument("--distinct", type=int, default=50,
                      help="scenes generated; the others are these shifted and mirrored")


def _smooth_field(rng: np.random.Generator, hw: tuple[int, int], cell: int) -> np.ndarray:
  """HxW float32 in [0, 1): random values on a `cell`-pixel grid, bilinearly upsampled."""
  h, w = hw
  coarse = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
  return np.asarray(Image.fromarray(coarse).resize((w + 2 * cell, h + 2 * cell),
                                                   Image.BILINEAR))[cell:cell + h, cell:cell + w]


def street_label(index: int, hw: tuple[int, int], seed: int = 0) -> np.ndarray:
  """A Cityscapes-like HxW uint8 label map (train ids, 255 = void), deterministic in index."""
  rng = np.random.default_rng([seed, index])
  h, w = hw
  cols = np.arange(w)
  horizon = (h * rng.uniform(0.35, 0.45) + h * 0.02 * np.sin(cols / w * rng.uniform(3, 9) * np.pi
                                                              + rng.uniform(0, 6))).astype(int)
  rows = np.arange(h)[:, None]
  label = np.where(rows < horizon[None, :], SKY, ROAD).astype(np.uint8)
  x = 0
  while x < w:  # Buildings along the horizon.
    bw = int(rng.integers(w // 20, w // 6))
    top = int(horizon[min(x, w - 1)] - rng.uniform(0.1, 0.3) * h)
    label[max(top, 0):horizon[min(x, w - 1)] + 10, x:x + bw] = BUILDING
    x += bw + int(rng.integers(0, w // 30))
  # Vegetation: ragged blobs where a smooth field is high, above the road.
  trees = (_smooth_field(rng, hw, 48) > 0.72) & (rows < horizon[None, :] + h // 20)
  label[trees] = VEGETATION
  road_edge = horizon + h // 10
  for side in (0, 1):  # Sidewalks as wedges on both sides.
    width = (rows - road_edge[None, :]).clip(0) * rng.uniform(0.6, 1.2)
    near = cols[None, :] < width if side == 0 else cols[None, :] > w - width
    label[near & (rows > horizon[None, :])] = SIDEWALK
  for _ in range(int(rng.integers(5, 16))):  # Cars: ellipses on the road.
    cy, cx = int(rng.integers(horizon.min() + h // 20, h)), int(rng.integers(0, w))
    ry, rx = int(rng.integers(h // 40, h // 10)), int(rng.integers(w // 40, w // 12))
    y0, y1, x0, x1 = max(cy - ry, 0), min(cy + ry, h), max(cx - rx, 0), min(cx + rx, w)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    label[y0:y1, x0:x1][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = CAR
  for cls, count, size in ((PERSON, 8, (h // 12, w // 120)), (POLE, 10, (h // 4, w // 300)),
                           (SIGN, 5, (h // 40, w // 80))):
    for _ in range(int(rng.integers(1, count))):
      y = int(rng.integers(horizon.min() - size[0], h - size[0]))
      x = int(rng.integers(0, w - size[1]))
      label[max(y, 0):y + size[0], x:x + size[1] + 1] = cls
  label[h - h // 12:, :] = np.where(rng.random() < 0.5, 255, label[h - h // 12:, :])  # Ego car.
  return label


def _boundary(label: np.ndarray, width: int) -> np.ndarray:
  """HxW bool: within `width` pixels (a square) of a class boundary."""
  edge = np.zeros(label.shape, np.uint8)
  edge[1:] |= label[1:] != label[:-1]
  edge[:, 1:] |= label[:, 1:] != label[:, :-1]
  return ndi.maximum_filter(edge, size=2 * width + 1).astype(bool)


def extension_of(label: np.ndarray, index: int, seed: int = 0) -> np.ndarray:
  """A teacher extension: the label where confident (smooth field high, away from boundaries)."""
  rng = np.random.default_rng([seed, index, 1])
  sure = (_smooth_field(rng, label.shape, 64) > 0.35) & ~_boundary(label, 4)
  return np.where(sure, label, 255).astype(np.uint8)


class StreetSource:
  """`len` / `[i] -> {"id", "image", "label"}` over generated street scenes (image = colours).

  `distinct` scenes are generated (with their extension and weak label); image i is scene
  i % distinct shifted sideways and mirrored by i // distinct, so content statistics (and how
  well the maps pack) are those of the generated scenes at a fraction of the generation time.
  """

  def __init__(self, n: int, hw: tuple[int, int], seed: int = 0, distinct: int = 50):
    self.ids = [f"street_{i:05d}" for i in range(n)]
    self.hw, self.seed, self.distinct = tuple(hw), seed, max(1, min(distinct, n))
    self.palette = np.zeros((256, 3), np.uint8)
    self.palette[:19] = cityscapes.info().colors
    self._scenes: dict[int, dict[str, np.ndarray]] = {}

  def __len__(self) -> int:
    return len(self.ids)

  def maps(self, i: int) -> dict[str, np.ndarray]:
    """{"label", "extension", "weak"} of image i (HxW uint8 each)."""
    base, turn = i % self.distinct, i // self.distinct
    if base not in self._scenes:
      label = street_label(base, self.hw, self.seed)
      self._scenes[base] = {
          "label": label, "extension": extension_of(label, base, self.seed),
          # A coarse-like weak label: the regions, 8 px away from their boundaries.
          "weak": np.where(_boundary(label, 8), 255, label).astype(np.uint8)}
    shift = (turn * 977) % self.hw[1]
    return {k: np.ascontiguousarray(np.roll(v, shift, axis=1)[:, ::(-1 if turn % 2 else 1)])
            for k, v in self._scenes[base].items()}

  def __getitem__(self, i: int) -> dict:
    label = self.maps(i)["label"]
    return {"id": self.ids[i], "image": self.palette[label], "label": label}


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB.


def run(args: argparse.Namespace) -> dict:
  hw = tuple(args.size)
  source = StreetSource(args.images, hw, args.seed, args.distinct)
  examples = memo.MemoSource(source, args.image_cache_mb << 20)
  weak_fn = memo.memoize_weak_fn(lambda i, e: source.maps(i)["weak"], args.weak_cache_mb << 20)
  bank = SamLabelBank(examples, weak_fn, service=None, cfg=SamLabelConfig(), crop=args.crop)
  for i in report.progress(range(source.distinct), desc="generating scenes", unit="scene"):
    source.maps(i)  # The generator's own maps, held before the baseline RSS is taken.
  rss_start = _rss_mb()
  pack_s = 0.0
  start = time.perf_counter()
  for i in report.progress(range(len(source)), desc="filling the bank", unit="img"):
    example = examples[i]
    weak_fn(i, example)
    extension = source.maps(i)["extension"]
    t0 = time.perf_counter()
    bank.labels[i] = example["label"]  # What `_store` keeps of a full-resolution SAM result.
    bank.extension[i] = extension      # What `update_extension` keeps.
    pack_s += time.perf_counter() - t0
  fill_s = time.perf_counter() - start
  rss_filled = _rss_mb()

  # The bank's host work of one step (median of 3): SAM labels into the batch's crops, teacher
  # extensions back to full resolution; the same with the maps held raw, side by side.
  rng = np.random.default_rng(args.seed)
  geoms = [augment.sample_geometry(rng, hw, args.crop) for _ in range(args.batch)]
  batch = {"index": np.arange(args.batch, dtype=np.int32) % len(source),
           "aug": np.stack([g.as_array() for g in geoms])}
  raw = SamLabelBank(source, weak_fn, None, SamLabelConfig(), crop=args.crop)
  raw.labels = {int(i): bank.labels[i] for i in batch["index"]}
  raw.extension = {int(i): bank.extension[i] for i in batch["index"]}
  step_ms = {}
  for name, b in (("packed", bank), ("raw", raw)):
    timings = []
    for _ in range(3):
      t0 = time.perf_counter()
      crops = b.batch_labels(batch)
      t1 = time.perf_counter()
      b.update_extension(batch, crops)
      timings.append((t1 - t0, time.perf_counter() - t1))
    step_ms[name] = [round(1000 * float(np.median(t)), 1) for t in zip(*timings)]
  t0 = time.perf_counter()
  state = bank.get_state()
  get_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  SamLabelBank(source, weak_fn, None, SamLabelConfig(), crop=args.crop).set_state(state)
  set_s = time.perf_counter() - t0

  n = len(source)
  raw = hw[0] * hw[1]
  label_b, ext_b = bank.labels.nbytes / n, bank.extension.nbytes / n
  result = {
      "images": n, "size": list(hw),
      "label_bytes_per_image": round(label_b), "extension_bytes_per_image": round(ext_b),
      "bank_bytes_per_image": round(label_b + ext_b), "raw_bytes_per_image": 2 * raw,
      "bank_mb": round((bank.labels.nbytes + bank.extension.nbytes) / 2**20, 1),
      "packing_ms_per_map": round(1000 * pack_s / (2 * n), 2),
      "weak_cache_mb": round(weak_fn.memo.nbytes / 2**20, 1),
      "image_cache_mb": round(examples.memo.nbytes / 2**20, 1),
      "rss_before_fill_mb": round(rss_start, 1), "rss_after_fill_mb": round(rss_filled, 1),
      "training_host_mb": round(rss_filled - rss_start, 1),  # Bank and caches, filled.
      "peak_rss_mb": round(_rss_mb(), 1),  # Also the checkpoint item written and read back.
      "checkpoint_item_mb": round(len(state) / 2**20, 2),
      "get_state_seconds": round(get_s, 3), "set_state_seconds": round(set_s, 3),
      "step_batch": args.batch, "step_crop": args.crop,
      "step_sam_labels_ms": step_ms["packed"][0], "step_extensions_ms": step_ms["packed"][1],
      "step_sam_labels_ms_raw": step_ms["raw"][0], "step_extensions_ms_raw": step_ms["raw"][1],
      "fill_seconds": round(fill_s, 1),
  }
  report.log(f"bank: {result['bank_bytes_per_image']} bytes/image (labels {round(label_b)}, "
             f"extensions {round(ext_b)}; raw {2 * raw}), {result['bank_mb']} MB for {n} images; "
             f"peak RSS {result['peak_rss_mb']} MB")
  return result
