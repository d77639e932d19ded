"""`sesam bench --what sam --scenes camvid`: what a training refresh of a real CamVid image costs.

One cold refinement (encoder, decoder per prompt set, geometry) and cached refreshes (the same
image again with the embedding cache warm: every later visit of a training image) per backend,
with process CPU seconds beside wall seconds; `--denormals both` also times the torch encoder
with subnormal floats kept, the x86 trap the bridge avoids with `torch.set_flush_denormal`.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
from PIL import Image

from sam_bridge.api import RefineRequest
from sam_bridge.cache import EmbeddingCache
from sam_bridge.refine import refine
from sesam_jax import data, report
from sesam_jax.bench.sam_backends import make_backend
from sesam_jax.data import weak_labels


def _encode_with_subnormals(backend, request, cfg, spec: str, args: argparse.Namespace):
  """Seconds of one encode of `request`'s image with subnormals kept (torch on CPU), or None."""
  if args.denormals != "both" or spec.split(":")[0] not in ("random", "transformers"):
    return None
  if not str(args.device).startswith("cpu"):
    return None
  import torch
  scale = min(1.0, cfg.work_long_side / max(request.image.shape[:2]))
  hw = (round(request.image.shape[0] * scale), round(request.image.shape[1] * scale))
  image = np.asarray(Image.fromarray(request.image).resize(hw[::-1], Image.BILINEAR))
  torch.set_flush_denormal(False)
  try:
    t0 = time.perf_counter()
    backend.set_image(image)
    return time.perf_counter() - t0
  finally:
    torch.set_flush_denormal(True)


def camvid_refresh(args: argparse.Namespace, cfg) -> dict:
  """Cold refinement and cached refresh of one CamVid image (coarse weak label) per backend."""
  source = data.get_source("camvid", data_dir=args.data_dir, split=args.split)
  example = source[args.image_index]
  weak = weak_labels.make_weak_label(example["label"], "coarse", seed=0, image_id=example["id"],
                                     num_classes=source.info.num_classes)
  request = RefineRequest(example["id"], example["image"], weak, fine=example["label"])
  out: dict = {"image": example["id"], "hw": list(weak.shape)}
  for spec in (b.strip() for b in args.backends.split(",") if b.strip()):
    backend = CpuTimed(make_backend(spec, args))
    subnormals = _encode_with_subnormals(backend, request, cfg, spec, args)
    backend.cpu = {"encode": 0.0, "decode": 0.0}  # The cold refinement's own seconds only.
    cache_kw = {"cache": EmbeddingCache()}
    cfg_run = dataclasses_replace(cfg, cache_embeddings=True)
    cold = refine(backend, request, cfg_run, **cache_kw)
    cold_cpu = dict(backend.cpu)
    refreshes, decodes, decodes_cpu = [], [], []
    n = max(cold.info["instances"] + cold.info["sparse_prompts"], 1)
    for _ in range(max(1, args.refreshes)):
      t0, c0 = time.perf_counter(), backend.cpu["decode"]
      warm = refine(backend, request, cfg_run, **cache_kw)
      refreshes.append(time.perf_counter() - t0)
      decodes_cpu.append((backend.cpu["decode"] - c0) / n)
      ws = warm.info["seconds"]
      decodes.append((ws["decode"] + ws.get("upsample", 0.0)) / n)
    refresh = statistics.median(refreshes)
    sec = cold.info["seconds"]
    entry = {"name": backend.name, "instances": cold.info["instances"],
             "encode_s": sec["encode"], "decode_s_per_prompt_set": sec["decode"] / n,
             "geometry_s": sec["geometry"], "cold_refine_s": sec["total"],
             "cached_refresh_s_per_image": refresh,
             "refresh_decode_s_per_prompt_set": statistics.median(decodes),
             "encode_cpu_s": cold_cpu["encode"],
             "refresh_decode_cpu_s_per_prompt_set": statistics.median(decodes_cpu),
             "refresh_geometry_s": warm.info["seconds"]["geometry"],
             "refresh_encode_s": warm.info["seconds"]["encode"],
             "same_label": bool((cold.label == warm.label).all())}
    if "upsample" in sec:
      entry["decode_only_s_per_prompt_set"] = (sec["decode"] - 0.0) / n
      entry["upsample_s"] = sec["upsample"]
      entry["decode_s_per_prompt_set"] = (sec["decode"] + sec["upsample"]) / n
    if "cache" in warm.info:
      entry["cache"] = {k: v for k, v in warm.info["cache"].items() if k != "key"}
    if warm.info.get("lowres_selection"):
      # The same refresh with full-resolution selection (the bridge before): time and agreement.
      cfg_full = dataclasses_replace(cfg_run, lowres_selection=False)
      fulls, full_cpu = [], []
      for _ in range(max(1, args.refreshes)):
        c0 = backend.cpu["decode"]
        fulls.append(refine(backend, request, cfg_full, **cache_kw))
        full_cpu.append((backend.cpu["decode"] - c0) / n)
      full = fulls[-1]
      entry["full_res_selection"] = {
          "decode_s_per_prompt_set": statistics.median(
              (f.info["seconds"]["decode"] + f.info["seconds"]["upsample"]) / n for f in fulls),
          "refresh_s": statistics.median(f.info["seconds"]["total"] for f in fulls),
          "decode_cpu_s_per_prompt_set": statistics.median(full_cpu),
          "label_agreement": float((full.label == warm.label).mean()),
          "same_choice": float(np.mean([a.chosen == b.chosen for a, b in zip(full.records, warm.records)]))}
    if subnormals is not None:
      entry["encode_s_subnormals_kept"] = subnormals
      entry["subnormal_slowdown"] = round(subnormals / max(entry["encode_s"], 1e-9), 2)
      report.log(f"camvid {example['id']}: {backend.name}: encode {subnormals:.1f} s with "
                 f"subnormals kept vs {entry['encode_s']:.1f} s flushed to zero")
    out[spec] = entry
    report.log(f"camvid {example['id']}: {backend.name}: encode {entry['encode_s']:.2f} s, decode "
               f"{entry['decode_s_per_prompt_set'] * 1e3:.0f} ms/prompt set x {n}, geometry "
               f"{entry['geometry_s'] * 1e3:.0f} ms; cold {entry['cold_refine_s']:.2f} s, "
               f"cached refresh {refresh:.2f} s/image (decode "
               f"{entry['refresh_decode_s_per_prompt_set'] * 1e3:.0f} ms/prompt set wall, "
               f"{entry['refresh_decode_cpu_s_per_prompt_set'] * 1e3:.0f} ms CPU)")
  return out


class CpuTimed:
  """Wraps a backend; adds up process CPU seconds of its encoder and decoder calls.

  With torch on one thread, CPU seconds are the work itself and hardly move when
  other jobs share the machine, unlike wall seconds.
  """

  def __init__(self, inner):
    self._inner = inner
    self.cpu = {"encode": 0.0, "decode": 0.0}

  def __getattr__(self, name):
    attr = getattr(self._inner, name)
    kind = {"set_image": "encode", "predict": "decode", "predict_lowres": "decode",
            "upsample": "decode"}.get(name)
    if kind is None:
      return attr

    def timed(*a, **kw):
      t0 = time.process_time()
      try:
        return attr(*a, **kw)
      finally:
        self.cpu[kind] += time.process_time() - t0
    return timed


def dataclasses_replace(cfg, **kw):
  return dataclasses.replace(cfg, **kw)
