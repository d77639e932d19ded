"""`sesam bench --what weak_labels`: milliseconds per image for each weak-label kind,
and for generating `synthetic` scenes, measured side by side in one run."""

from __future__ import annotations

import argparse
import time

import numpy as np

from sesam_jax import data, report
from sesam_jax.data import weak_labels


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--dataset", default="synthetic", help="dataset of the fine labels")
  parser.add_argument("--data-dir", default=None, help="dataset root (not for synthetic)")
  parser.add_argument("--split", default="val")
  parser.add_argument("--images", type=int, default=20, help="images to time")
  parser.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"),
                      help="synthetic scene size")


def run(args: argparse.Namespace) -> dict:
  kw = {"num_images": args.images, "size": tuple(args.size)} if args.dataset == "synthetic" else {}
  source = data.get_source(args.dataset, data_dir=args.data_dir, split=args.split, **kw)
  count = min(args.images, len(source))
  read_ms, items = [], []
  for i in report.progress(range(count), desc="reading", unit="img"):
    start = time.perf_counter()
    items.append(source[i])
    read_ms.append(1000 * (time.perf_counter() - start))
  result = {"dataset": args.dataset, "images": count,
            "image_size": list(items[0]["label"].shape),
            "read_ms_median": round(float(np.median(read_ms)), 2)}
  for kind in weak_labels.KINDS:
    weak_labels.make_weak_label(items[0]["label"], kind, seed=0, image_id="warm-up",
                                num_classes=source.info.num_classes)
    ms = []
    for item in items:
      start = time.perf_counter()
      weak_labels.make_weak_label(item["label"], kind, seed=0, image_id=item["id"],
                                  num_classes=source.info.num_classes)
      ms.append(1000 * (time.perf_counter() - start))
    result[f"{kind}_ms_median"] = round(float(np.median(ms)), 2)
    result[f"{kind}_ms_max"] = round(float(np.max(ms)), 2)
    report.log(f"{kind:>9}: median {np.median(ms):7.1f} ms, max {np.max(ms):7.1f} ms per image")
  return result
