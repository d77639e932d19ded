"""`sesam bench --what input`: host pipeline throughput (images/s).

Two settings, measured in one run: CamVid (real PNG decode, 480x360) at crop
320, and `synthetic` scenes generated at Cityscapes size (1024x2048) at crop
1024. Each is timed after a warm-up batch, over `--batches` batches, with the
weak label kind of `--weak` generated on the fly (its memo fills during the
first epoch, so short runs include generation cost - that is the honest
first-epoch figure).
"""

from __future__ import annotations

import argparse
import time

from sesam_jax import report
from sesam_jax.data import get_source, input_pipeline


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--camvid-dir", default="../shared/data/camvid",
                      help="CamVid folder (SegNet layout)")
  parser.add_argument("--batch", type=int, default=8, help="examples per batch")
  parser.add_argument("--batches", type=int, default=5, help="timed batches per setting")
  parser.add_argument("--workers", type=int, default=0, help="grain worker processes")
  parser.add_argument("--weak", default="fine", help="weak label kind carried in the batch")
  parser.add_argument("--settings", default="camvid,synthetic",
                      help="comma-separated subset of camvid,synthetic")


def _images_per_second(source, *, crop: int, args: argparse.Namespace, desc: str) -> float:
  ds = input_pipeline.make_train_dataset(source, crop=crop, batch_size=args.batch, seed=0,
                                         weak=args.weak, num_workers=args.workers)
  it = iter(ds)
  try:
    next(it)  # Warm-up: worker start, imports, first decode.
    start = time.perf_counter()
    for _ in report.progress(range(args.batches), desc=desc, unit="batch"):
      next(it)
    seconds = time.perf_counter() - start
  finally:
    if hasattr(it, "close"):
      it.close()
  return args.batches * args.batch / seconds


def run(args: argparse.Namespace) -> dict:
  result: dict = {"batch": args.batch, "workers": args.workers, "weak": args.weak}
  settings = [s.strip() for s in args.settings.split(",") if s.strip()]
  for setting in settings:
    if setting == "camvid":
      source = get_source("camvid", data_dir=args.camvid_dir, split="train")
      ips = _images_per_second(source, crop=320, args=args, desc="camvid crop 320")
      result["camvid_crop320_images_per_second"] = round(ips, 2)
    elif setting == "synthetic":
      n = args.batch * (args.batches + 1)
      source = get_source("synthetic", split="train", num_images=n, size=(1024, 2048), seed=0)
      ips = _images_per_second(source, crop=1024, args=args, desc="synthetic 1024x2048 crop 1024")
      result["synthetic_1024x2048_crop1024_images_per_second"] = round(ips, 2)
    else:
      raise ValueError(f"unknown setting {setting!r}; choose from camvid, synthetic.")
    report.log(f"{setting}: {list(result.values())[-1]} images/s")
  return result
