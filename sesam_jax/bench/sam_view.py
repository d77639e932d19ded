"""`sesam bench --what sam_view`: SAM refreshes of the weakly augmented view vs the full image.

`sam.view=weak_aug` (the paper, section 3.3) refines the step's crop; `sam.view=full` refines
the full image (its encoder state cached) and brings the label into the crop. For the first
`--images` CamVid images of `--split`, each with its coarse weak label and one random weak
augmentation (scale in `--scale`, a `--crop` square, a flip), this refines both ways with each
backend of `--backends` (no weights needed: `superpixel`, the SAM-free prior, and `oracle`, masks
cut from the fine labels) and reports, inside the crop:

  - `agree_labelled`: of the pixels both views label, the share with the same class;
  - `agree_union`: of the pixels either view labels, the share both label with the same class;
  - `labelled_full` / `labelled_crop`: the share of the crop each view labels;
  - `accuracy_full` / `accuracy_crop`: of the pixels a view labels, the share that is right
    (the fine label; ignore pixels not counted);
  - seconds per refresh (median over images): `crop_s` (the crop, encoded each time, as
    weak_aug does), `full_cold_s` (the full image, first visit) and `full_cached_s` (the full
    image again with its embedding cached: what view=full pays for every later refresh).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np

from sam_bridge.api import RefineRequest
from sam_bridge.cache import EmbeddingCache
from sam_bridge.refine import refine
from sam_bridge.refine_config import RefineConfig
from sesam_jax import data, report
from sesam_jax.bench.sam_backends import make_backend
from sesam_jax.data import augment, weak_labels
from sesam_jax.data.base import IGNORE_INDEX


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--data-dir", default="../shared/data/camvid", help="CamVid folder")
  parser.add_argument("--split", default="val", help="CamVid split")
  parser.add_argument("--images", type=int, default=8, help="images measured")
  parser.add_argument("--backends", default="superpixel,oracle",
                      help="backend specs, comma-separated")
  parser.add_argument("--weak", default="coarse", choices=("points", "scribbles", "coarse"))
  parser.add_argument("--crop", type=int, default=256, help="training crop (pixels)")
  parser.add_argument("--scale", type=float, nargs=2, default=(0.5, 2.0), metavar=("LO", "HI"),
                      help="weak augmentation's scale range (config.scale_range)")
  parser.add_argument("--seed", type=int, default=0, help="augmentation and prompt seed")
  parser.add_argument("--device", default="cpu", help="torch device of PyTorch SAM backends")
  parser.add_argument("--dtype", default="float32", help="SAM compute dtype")
  parser.add_argument("--decoder-dtype", default="", help="SAM prompt decoder dtype")


def _compare(full: np.ndarray, crop: np.ndarray, fine: np.ndarray, valid: np.ndarray) -> dict:
  """The two views' labels inside the crop (valid pixels only)."""
  lf, lc = (full != IGNORE_INDEX) & valid, (crop != IGNORE_INDEX) & valid
  both, either = lf & lc, lf | lc
  same = both & (full == crop)
  known = fine != IGNORE_INDEX

  def accuracy(label, labelled):
    n = (labelled & known).sum()
    return float(((label == fine) & labelled & known).sum() / n) if n else float("nan")

  return {"agree_labelled": float(same.sum() / max(both.sum(), 1)),
          "agree_union": float(same.sum() / max(either.sum(), 1)),
          "labelled_full": float(lf.sum() / max(valid.sum(), 1)),
          "labelled_crop": float(lc.sum() / max(valid.sum(), 1)),
          "accuracy_full": accuracy(full, lf), "accuracy_crop": accuracy(crop, lc)}


def _timed(backend, request, cfg, **kw):
  t0 = time.perf_counter()
  result = refine(backend, request, cfg, **kw)
  return result, time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict:
  source = data.get_source("camvid", data_dir=args.data_dir, split=args.split)
  rng = np.random.default_rng(args.seed)
  cases = []
  for i in range(min(args.images, len(source))):
    ex = source[i]
    weak = weak_labels.make_weak_label(ex["label"], args.weak, seed=args.seed, image_id=ex["id"],
                                       num_classes=source.info.num_classes)
    geom = augment.sample_geometry(rng, weak.shape, args.crop, scale_range=tuple(args.scale))
    cases.append((ex, weak, geom))
  cfg = RefineConfig(weak_kind=args.weak)
  cached = dataclasses.replace(cfg, cache_embeddings=True)  # view=full: encode once per image
  out: dict = {"images": len(cases), "split": args.split, "weak": args.weak, "crop": args.crop,
               "scale": list(args.scale)}
  for spec in (b.strip() for b in args.backends.split(",") if b.strip()):
    backend = make_backend(spec, args)
    rows, times = [], {"crop_s": [], "full_cold_s": [], "full_cached_s": []}
    for ex, weak, geom in cases:
      def crop(a, nearest=True, fill=IGNORE_INDEX):
        return augment.apply_geometry(a, geom, args.crop, nearest=nearest, fill=fill)

      cache = EmbeddingCache()
      full_request = RefineRequest(ex["id"], ex["image"], weak, fine=ex["label"], step=0)
      full, t = _timed(backend, full_request, cached, cache=cache)
      times["full_cold_s"].append(t)
      times["full_cached_s"].append(_timed(backend, full_request, cached, cache=cache)[1])
      crop_request = RefineRequest(ex["id"], crop(ex["image"], nearest=False, fill=0),
                                   crop(weak), fine=crop(ex["label"]), step=0)
      from_crop, t = _timed(backend, crop_request, cfg)
      times["crop_s"].append(t)
      valid = augment.valid_mask(weak.shape, geom, args.crop).astype(bool)
      rows.append(_compare(crop(full.label), from_crop.label, crop(ex["label"]), valid))
    entry = {k: round(float(np.nanmean([r[k] for r in rows])), 4) for k in rows[0]}
    entry.update({k: round(statistics.median(v), 4) for k, v in times.items()})
    entry["name"] = getattr(backend, "name", spec)
    out[spec] = entry
    report.log(f"sam_view {spec}: agree {entry['agree_labelled']:.3f} of pixels both label "
               f"({entry['agree_union']:.3f} of either's); accuracy full "
               f"{entry['accuracy_full']:.3f} crop {entry['accuracy_crop']:.3f}; s/refresh crop "
               f"{entry['crop_s']:.3f}, full cold {entry['full_cold_s']:.3f}, cached "
               f"{entry['full_cached_s']:.3f}")
  return out
