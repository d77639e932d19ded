"""`sesam bench --what iteration`: seconds per training iteration, FixMatch vs SeSAM (and AGMM).

Both methods run through the training loop's own code path (`sesam_jax.loop.train`: steps
dispatched asynchronously, host work for the next step while the device computes, metrics read
one step late), one after the other in this process, on the same images: SegFormer-B0, batch 8,
crop 512, CamVid train coarse labels, K = 5, M = 4 and the SAM bridge `random:vit_b` by default.
The training set is cut (`dataset.max_train_images`) to the images the timed steps visit, and
SeSAM's own pre-warm gives every one of them a SAM label before step 0, as training does; its
encoder cost is reported apart (`--cache-dir` keeps the embeddings for the next run).

`--refresh` and `--view` set `sam.refresh` (strict, the paper's default, or async) and
`sam.view` (weak_aug or full); `--refresh strict,async` times both, one after the other beside
the same FixMatch run (`by_refresh`). Strict refreshes load every M-th step only, so the mean
seconds per step (`sesam_mean_seconds`) shows their cost where the median may not.

Reported: `fixmatch_seconds` and `sesam_seconds` (median seconds between two dispatches after
`--warmup` steps), `ratio` = sesam / fixmatch, each method's host seconds between dispatches
(work the host does per step, waits for the device excluded; `host_fraction` of the FixMatch
step), the SAM labels received / stale / missing and the refreshes due / done / skipped over
the timed steps, and the bridge's encoder, decoder and geometry seconds per step (worker
side). `--dataset synthetic` runs on generated scenes (no files needed, e.g. on a GPU host).

`--methods fixmatch,agmm,sesam` times each method in the same run (FixMatch always, first) and
reports each one's seconds and ratio to FixMatch side by side (`methods`). `--setting table6` is
Table 6's setting instead of CamVid's: DeepLabV3+-R101, batch 4, crop 1024, bf16, Cityscapes
coarse labels (`--data-dir` the Cityscapes root; `--dataset synthetic` for 1024x2048 scenes);
flags given explicitly win over the setting.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

import jax
import numpy as np

from sesam_jax import configs_common, report
from sesam_jax import loop
from sesam_jax.run import logs

# Settings of the timed runs; flags left at None take these values.
SETTINGS = {
    "camvid": dict(dataset="camvid", data_dir="../shared/data/camvid", image_size=(360, 480),
                   student="segformer", model="segformer_b0", dtype="float32", batch=8, crop=512,
                   weak="coarse"),
    "table6": dict(dataset="cityscapes", data_dir="", image_size=(1024, 2048),
                   student="deeplabv3plus", model="deeplabv3plus_r101", dtype="bfloat16",
                   batch=4, crop=1024, weak="coarse"),
}
METHODS = ("fixmatch", "sesam", "agmm", "supervised")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--setting", default="camvid", choices=tuple(SETTINGS),
                      help="camvid: SegFormer-B0, batch 8, crop 512 on CamVid (default); "
                           "table6: Table 6's DeepLabV3+-R101, batch 4, crop 1024, bf16")
  parser.add_argument("--methods", default="fixmatch,sesam",
                      help=f"methods timed, comma-separated ({', '.join(METHODS)}); FixMatch is "
                           "always timed first (the ratios' reference)")
  parser.add_argument("--dataset", default=None, choices=("camvid", "cityscapes", "synthetic"),
                      help="the setting's dataset (--data-dir), or generated synthetic scenes")
  parser.add_argument("--data-dir", default=None, help="dataset folder (default: the setting's)")
  parser.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                      help="synthetic scene size (default: the setting's)")
  parser.add_argument("--model", default=None, help="student (default: the setting's)")
  parser.add_argument("--dtype", default=None, help="student compute dtype")
  parser.add_argument("--batch", type=int, default=None, help="global batch")
  parser.add_argument("--crop", type=int, default=None, help="training crop")
  parser.add_argument("--iterations", type=int, default=3, help="timed iterations per method")
  parser.add_argument("--warmup", type=int, default=1, help="untimed iterations (compile)")
  parser.add_argument("--backend", default="random:vit_b",
                      help="SAM backend spec; several, comma-separated, time SeSAM with each "
                           "beside one FixMatch run (e.g. jax-random:vit_b,random:vit_b)")
  parser.add_argument("--device", default="auto",
                      help="sam.device of PyTorch SAM backends (auto: where the trainer runs)")
  parser.add_argument("--weak", default=None, choices=("points", "scribbles", "coarse"))
  parser.add_argument("--refresh-every", type=int, default=4, help="M")
  parser.add_argument("--refresh", default="strict",
                      help="sam.refresh: strict (the paper: the whole batch every M-th step, "
                           "waited for) or async (1/M of each batch per step, no wait); "
                           "strict,async times both side by side in this process")
  parser.add_argument("--view", default="weak_aug", choices=("weak_aug", "full"),
                      help="sam.view: the step's crop (the paper) or the full image (cached "
                           "encoder)")
  parser.add_argument("--k", type=int, default=5, help="K prompt points per instance")
  parser.add_argument("--decoder-dtype", default="auto",
                      help="SAM prompt decoder dtype: auto (bf16 only where native), float32, "
                           "bfloat16")
  parser.add_argument("--cache-dir", default=None,
                      help="keep the SAM embedding cache here and reuse it on the next run "
                           "(default: a fresh temporary folder, so the pre-warm encodes every image)")


def resolve(args: argparse.Namespace) -> argparse.Namespace:
  """`args` with every flag left at None taken from `--setting`."""
  out = argparse.Namespace(**vars(args))
  for key, value in SETTINGS[args.setting].items():
    if getattr(out, key, None) is None:
      setattr(out, key, value)
  return out


def parse_methods(text: str) -> list[str]:
  """"agmm,sesam" -> ["fixmatch", "agmm", "sesam"] (FixMatch first, always)."""
  names = [m.strip() for m in text.split(",") if m.strip()]
  bad = [m for m in names if m not in METHODS]
  if bad:
    raise ValueError(f"--methods {text!r}: choose from {', '.join(METHODS)}.")
  return ["fixmatch"] + [m for m in dict.fromkeys(names) if m != "fixmatch"]


def _config(args: argparse.Namespace, method: str, cache_dir: str):
  config, _ = configs_common.student_dataset_config(args.student, args.dataset,
                                                f"weak={args.weak},method={method}")
  if args.dataset != "synthetic":
    config.data_dir = args.data_dir
  else:
    config.dataset.image_size = tuple(args.image_size)
  steps = args.warmup + args.iterations
  config.model, config.dtype = args.model, args.dtype
  config.batch_size, config.crop, config.num_steps = args.batch, args.crop, steps
  # The examples of the timed steps (and the one read ahead) are the whole training set.
  config.dataset.max_train_images = args.batch * (steps + 2)
  if args.dataset == "synthetic":
    config.dataset.num_train_images = config.dataset.max_train_images
  config.log_every, config.checkpoint_every, config.eval_every = 1, steps, 0
  config.sam.backend, config.sam.device, config.sam.k = args.backend, args.device, args.k
  config.sam.refresh_every, config.sam.decoder_dtype = args.refresh_every, args.decoder_dtype
  config.sam.refresh = args.refresh.split(",")[0].strip()
  config.sam.view, config.sam.prewarm = args.view, True
  config.sam.cache_dir, config.sam.wait_s, config.sam.timeout_s = cache_dir, 0.0, 3600.0
  return config


def _timed_totals(workdir: str, warmup: int) -> dict[str, float]:
  """The SAM feed's counters summed over the timed steps (differences in metrics.jsonl)."""
  rows = [r for r in logs.read_metrics(workdir) if "train/sam/sent" in r]
  first = next((r for r in rows if r["step"] == warmup), {})
  last = rows[-1] if rows else {}
  names = ("received", "stale", "missing", "refresh_due", "refresh_done", "refresh_skipped",
           "bridge_encode", "bridge_decode", "bridge_geometry")
  return {name: last.get(f"train/sam/{name}", 0) - first.get(f"train/sam/{name}", 0)
          for name in names}


def _sesam_figures(outcome: Any, workdir: str, fixmatch: float, args: argparse.Namespace) -> dict:
  """One SeSAM run's figures beside the FixMatch step time."""
  timing, info = outcome.timing, outcome.info
  sesam = timing.seconds_per_step(args.warmup)
  timed = _timed_totals(workdir, args.warmup)
  host = timing.median_host(args.warmup)
  # Strict refreshes load every M-th step only: the mean, beside the median, shows their cost.
  gaps = np.diff(timing.dispatch[args.warmup:] + [timing.end])
  return {
      "backend": info.get("sam/backend", ""), "sesam_seconds": round(sesam, 4),
      "sesam_mean_seconds": round(float(np.mean(gaps)), 4),
      "ratio": round(sesam / fixmatch, 3), "sesam_host_seconds": round(host, 4),
      "host_fraction": round(host / fixmatch, 4),
      "sam_received": int(timed["received"]), "sam_stale": int(timed["stale"]),
      "sam_missing": int(timed["missing"]),
      "sam_refresh_due": int(timed["refresh_due"]),
      "sam_refresh_done": int(timed["refresh_done"]),
      "sam_refresh_skipped": int(timed["refresh_skipped"]),
      "sam_encode_seconds_per_step": round(timed["bridge_encode"] / args.iterations, 3),
      "prewarm_seconds": info.get("prewarm_seconds", 0.0),
      "prewarmed_images": info.get("prewarmed", 0),
      "sam_decode_seconds_per_step": round(timed["bridge_decode"] / args.iterations, 3),
      "sam_geometry_seconds_per_step": round(timed["bridge_geometry"] / args.iterations, 3)}


def run(args: argparse.Namespace) -> dict:
  args = resolve(args)
  names = parse_methods(args.methods)
  cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="sesam_bench_iteration_cache_")
  root = tempfile.mkdtemp(prefix="sesam_bench_iteration_")
  specs = [b.strip() for b in args.backend.split(",") if b.strip()]
  modes = [m.strip() for m in args.refresh.split(",") if m.strip()]
  if not modes or set(modes) - {"strict", "async"}:
    raise ValueError(f"--refresh={args.refresh!r}: strict, async or strict,async.")
  report.log(f"iteration bench: fixmatch, {args.warmup} + {args.iterations} steps")
  fix = loop.train(_config(args, "fixmatch", cache_dir), os.path.join(root, "fixmatch")).timing
  fixmatch = fix.seconds_per_step(args.warmup)
  side = {"fixmatch": {"seconds": round(fixmatch, 4), "ratio": 1.0,
                       "host_seconds": round(fix.median_host(args.warmup), 4)}}
  for name in (n for n in names if n not in ("fixmatch", "sesam")):  # Methods without SAM.
    report.log(f"iteration bench: {name}, {args.warmup} + {args.iterations} steps")
    timing = loop.train(_config(args, name, cache_dir), os.path.join(root, name)).timing
    seconds = timing.seconds_per_step(args.warmup)
    side[name] = {"seconds": round(seconds, 4), "ratio": round(seconds / fixmatch, 3),
                  "host_seconds": round(timing.median_host(args.warmup), 4)}
  by_backend, by_refresh = {}, {}
  # SeSAM once per SAM backend (and refresh mode), beside the same FixMatch.
  for i, spec in enumerate(specs if "sesam" in names else []):
    for mode in modes:
      report.log(f"iteration bench: sesam with {spec}, sam.refresh={mode}, {args.warmup} + "
                 f"{args.iterations} steps")
      config = _config(args, "sesam", cache_dir)
      config.sam.backend, config.sam.refresh = spec, mode
      workdir = os.path.join(root, f"sesam{i}_{mode}")
      figures = _sesam_figures(loop.train(config, workdir), workdir, fixmatch, args)
      by_refresh.setdefault(mode, {})[spec] = figures
      by_backend.setdefault(spec, figures)
      report.log(f"fixmatch {fixmatch:.3f} s/it, sesam ({spec}, {mode}) "
                 f"{figures['sesam_seconds']:.3f} s/it (mean {figures['sesam_mean_seconds']:.3f}),"
                 f" ratio {figures['ratio']:.3f}; host seconds between dispatches: fixmatch "
                 f"{fix.median_host(args.warmup):.4f}, sesam {figures['sesam_host_seconds']:.4f}")
  if by_backend:
    first = by_backend[specs[0]]
    side["sesam"] = {"seconds": first["sesam_seconds"], "ratio": first["ratio"],
                     "host_seconds": first["sesam_host_seconds"]}
  side = {name: side[name] for name in names}
  report.log("s/iteration (ratio to FixMatch): " + ", ".join(
      f"{name} {v['seconds']:.3f} ({v['ratio']:.2f}x)" for name, v in side.items()))
  result = {
      "setting": args.setting, "dataset": args.dataset, "model": args.model, "dtype": args.dtype,
      "batch": args.batch, "crop": args.crop, "weak": args.weak, "k": args.k,
      "refresh_every": args.refresh_every, "refresh": args.refresh, "view": args.view,
      "iterations": args.iterations, "devices": jax.device_count(),
      "platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
      "methods": side,
      "fixmatch_seconds": round(fixmatch, 4),
      "fixmatch_host_seconds": round(fix.median_host(args.warmup), 4),
      **{f"{name}_seconds": v["seconds"] for name, v in side.items()},
      **{f"{name}_ratio": v["ratio"] for name, v in side.items() if name not in ("fixmatch",
                                                                                 "sesam")},
      **(by_backend[specs[0]] if by_backend else {}), "cache_dir": cache_dir}
  if len(specs) > 1:
    result["by_backend"] = by_backend
  if len(modes) > 1:
    result["by_refresh"] = by_refresh
  return result
