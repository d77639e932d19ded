"""`sesam bench --what sam`: SAM-bridge speed per backend and the geometry time.

For each backend, on a CamVid-sized (360x480) and a Cityscapes-sized (1024x2048)
scene: seconds to encode the image (`set_image`, once per image) and seconds per
prompt set in the decoder (batched `predict`), plus the geometry time of one
refinement (instances, sampling, selection, merging, resizing: everything in
`refine` except the backend calls) at the working resolution (longest side
`--work-long-side`, default 1024, so Cityscapes runs at 512x1024). The scenes are
synthetic (bands + ~50 objects, coarse = objects shrunk) so that the instance count
is controlled. Random-weight SAMs are timed, never scored. `--parity` also runs the
official-vs-converted check on a full random ViT-B.

`--scenes camvid` (the default) times what training pays on a real CamVid image with
its coarse weak label (`--data-dir`, `--split`, `--image-index`): one cold refinement
(encoder seconds, decoder seconds per prompt set, geometry seconds) and one cached
refresh (the same image again with the embedding cache warm: what every later
visit of a training image costs). torch runs with `--torch-threads` (default 1, as
in the bridge service, which shares the CPU with the trainer).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--backends", default="oracle,superpixel,random:vit_b",
                      help="comma-separated backend specs (random:vit_b = random weights, timing only)")
  parser.add_argument("--objects", type=int, default=50, help="objects in the synthetic scenes")
  parser.add_argument("--prompts", type=int, default=16, help="prompt sets per decoder timing")
  parser.add_argument("--repeats", type=int, default=3, help="median over this many geometry runs")
  parser.add_argument("--work-long-side", type=int, default=1024, help="working resolution (pixels)")
  parser.add_argument("--device", default="cpu")
  parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 (torch backends)")
  parser.add_argument("--scenes", default="camvid",
                      help="comma-separated: camvid (a real image + coarse label), synthetic (two sizes)")
  parser.add_argument("--data-dir", default="../shared/data/camvid", help="CamVid root (--scenes camvid)")
  parser.add_argument("--split", default="train")
  parser.add_argument("--image-index", type=int, default=0, help="CamVid image to time")
  parser.add_argument("--refreshes", type=int, default=3,
                      help="cached refreshes timed per backend (median reported)")
  parser.add_argument("--decoder-dtype", default=None,
                      help="SAM prompt decoder dtype if not --dtype (bfloat16: ~2x faster on CPU)")
  parser.add_argument("--torch-threads", type=int, default=1,
                      help="torch intra-op threads (the service's default is 1)")
  parser.add_argument("--reps", type=int, default=1,
                      help="--scenes synthetic: timed encoder and decoder calls per backend and "
                           "scene (median); above 1, one untimed warm-up call of each comes first "
                           "(CUDA kernels, allocator). 1 = one cold call, as before")
  parser.add_argument("--parity", action="store_true",
                      help="also check official-vs-converted masks on a full random ViT-B")


def synthetic_scene(h: int, w: int, objects: int, seed: int = 0):
  """(image HxWx3 uint8, fine HxW uint8, coarse HxW uint8) with `objects` blobs on bands."""
  import scipy.ndimage as ndi
  rng = np.random.default_rng(seed)
  fine = np.zeros((h, w), np.uint8)  # Road.
  fine[: h // 3] = 10  # Sky.
  fine[h // 3: h // 2] = 2  # Buildings.
  yy, xx = np.mgrid[:h, :w]
  for _ in range(objects):
    cy, cx = rng.uniform(h * 0.3, h * 0.95), rng.uniform(0, w)
    ry, rx = rng.uniform(0.02, 0.08) * h, rng.uniform(0.01, 0.05) * w
    fine[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = rng.choice([11, 12, 13, 5, 7])
  palette = rng.integers(0, 255, (256, 3), dtype=np.uint8)
  image = palette[fine]
  coarse = np.full((h, w), 255, np.uint8)
  shrink = max(1, h // 128)
  for c in np.unique(fine):
    lab, n = ndi.label(fine == c)
    eroded = ndi.binary_erosion(lab > 0, iterations=shrink)
    coarse[eroded] = c
  return image, fine, coarse


def run(args: argparse.Namespace) -> dict:
  from sam_bridge.api import PromptSet, RefineRequest
  from sam_bridge.backends import create_backend
  from sam_bridge.refine import RefineConfig, refine
  from sesam_jax import report

  if args.torch_threads and any(b.split(":")[0] in ("random", "transformers") for b in args.backends.split(",")):
    import torch
    torch.set_num_threads(args.torch_threads)
  scene_names = [s.strip() for s in args.scenes.split(",") if s.strip()]
  unknown = set(scene_names) - {"camvid", "synthetic"}
  if unknown:
    raise ValueError(f"--scenes {sorted(unknown)}: choose camvid and/or synthetic")
  cfg = RefineConfig(work_long_side=args.work_long_side)
  out: dict = {"work_long_side": args.work_long_side, "torch_threads": args.torch_threads, "sizes": {}}
  if "camvid" in scene_names:
    out["camvid"] = camvid_refresh(args, cfg)
  if "synthetic" not in scene_names:
    if args.parity:
      out["parity_vit_b"] = vit_b_parity()
    return out
  scenes = {"camvid_360x480": synthetic_scene(360, 480, args.objects),
            "cityscapes_1024x2048": synthetic_scene(1024, 2048, args.objects)}
  for size_name, (image, fine, coarse) in scenes.items():
    entry: dict = {}
    # Geometry: refine with the oracle, minus its backend calls.
    oracle = create_backend("oracle")
    geo, geo_cpu, insts = [], [], 0
    for r in range(args.repeats + 1):
      res = refine(oracle, RefineRequest(size_name, image, coarse, fine=fine), cfg)
      if r:  # The first run warms caches.
        geo.append(res.info["seconds"]["geometry"])
        geo_cpu.append(res.info["seconds"]["geometry_cpu"])
      insts = res.info["instances"]
    entry["instances"] = insts
    entry["working_hw"] = list(res.info["working_hw"])
    entry["geometry_s"] = statistics.median(geo)
    entry["geometry_cpu_s"] = statistics.median(geo_cpu)
    report.log(f"{size_name}: geometry {entry['geometry_s'] * 1e3:.1f} ms wall, "
               f"{entry['geometry_cpu_s'] * 1e3:.1f} ms CPU for {insts} instances "
               f"at {res.info['working_hw']}")
    # Backends: encoder once per image, decoder per prompt set, at the working resolution.
    scale = min(1.0, args.work_long_side / max(image.shape[:2]))
    hw = (round(image.shape[0] * scale), round(image.shape[1] * scale))
    from PIL import Image
    img_w = np.asarray(Image.fromarray(image).resize(hw[::-1], Image.BILINEAR))
    fine_w = np.asarray(Image.fromarray(fine).resize(hw[::-1], Image.NEAREST))
    rng = np.random.default_rng(0)
    prompts = [PromptSet.from_points(rng.uniform(0, [hw[1] - 1, hw[0] - 1], (5, 2)))
               for _ in range(args.prompts)]
    for spec in args.backends.split(","):
      kw = {} if spec in ("oracle", "superpixel") else {"device": args.device, "dtype": args.dtype}
      backend = create_backend(spec, **kw)
      fine_arg = fine_w if backend.is_oracle else None
      if args.reps > 1:  # Warm-up: first CUDA launches and allocations are not the speed.
        backend.set_image(img_w, fine_label=fine_arg)
        backend.predict(prompts)
      reps = max(1, args.reps)
      # Encoder calls may return before the device is done (CUDA, JAX): time them together
      # and end with reading the embedding back, which waits for all of them.
      t0 = time.perf_counter()
      for _ in range(reps):
        backend.set_image(img_w, fine_label=fine_arg)
      if hasattr(backend, "image_state"):
        backend.image_state()
      enc = (time.perf_counter() - t0) / reps
      decs = []
      for _ in range(reps):  # predict returns host arrays: each call has finished.
        t0 = time.perf_counter()
        backend.predict(prompts)
        decs.append((time.perf_counter() - t0) / len(prompts))
      dec = statistics.median(decs)
      entry[spec] = {"name": backend.name, "encode_s": enc, "decode_s_per_prompt": dec,
                     "encode_images_per_s": 1.0 / enc if enc > 0 else None}
      if hasattr(backend, "predict_lowres"):
        # What refine does now: low-res candidates, then one chosen mask per prompt set upsampled.
        t0 = time.perf_counter()
        low = backend.predict_lowres(prompts)
        backend.upsample(np.stack([p.logits[0] for p in low]))
        entry[spec]["decode_lowres_s_per_prompt"] = (time.perf_counter() - t0) / len(prompts)
        report.log(f"{size_name}: {backend.name}: low-res decode + chosen upsample "
                   f"{entry[spec]['decode_lowres_s_per_prompt'] * 1e3:.1f} ms/prompt")
      report.log(f"{size_name}: {backend.name}: encode {enc:.3f} s, decode {dec * 1e3:.1f} ms/prompt")
    out["sizes"][size_name] = entry
  if args.parity:
    out["parity_vit_b"] = vit_b_parity()
  return out


def camvid_refresh(args: argparse.Namespace, cfg) -> dict:
  """Cold refinement and cached refresh of one CamVid image (coarse weak label) per backend."""
  from sam_bridge.api import RefineRequest
  from sam_bridge.backends import create_backend
  from sam_bridge.refine import refine
  from sesam_jax import data, report
  from sesam_jax.data import weak_labels
  source = data.get_source("camvid", data_dir=args.data_dir, split=args.split)
  example = source[args.image_index]
  weak = weak_labels.make_weak_label(example["label"], "coarse", seed=0, image_id=example["id"],
                                     num_classes=source.info.num_classes)
  request = RefineRequest(example["id"], example["image"], weak, fine=example["label"])
  out: dict = {"image": example["id"], "hw": list(weak.shape)}
  try:
    from sam_bridge.cache import EmbeddingCache
  except ImportError:  # A bridge without the embedding cache: the refresh re-encodes.
    EmbeddingCache = None
  for spec in args.backends.split(","):
    kw = {} if spec in ("oracle", "superpixel") else {"device": args.device, "dtype": args.dtype}
    if args.decoder_dtype and "dtype" in kw:
      kw["decoder_dtype"] = args.decoder_dtype
    backend = CpuTimed(create_backend(spec, **kw))
    cache_kw = {}
    if EmbeddingCache is not None:
      cache_kw = {"cache": EmbeddingCache()}
      cfg_run = dataclasses_replace(cfg, cache_embeddings=True)
    else:
      cfg_run = cfg
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
  import dataclasses
  return dataclasses.replace(cfg, **kw)


def vit_b_parity() -> dict:
  """Full-size random ViT-B: official modeling code vs the converted transformers model."""
  import torch
  from transformers import SamModel
  from sam_bridge.api import PromptSet
  from sam_bridge.backends.official_loader import build_official_sam
  from sam_bridge.backends.sam_convert import convert_official_sam, sam_config_from_official
  from sam_bridge.backends.transformers_sam import TransformersSamBackend, resize_longest
  torch.manual_seed(0)
  official = build_official_sam("vit_b")
  sd = official.state_dict()
  model = SamModel(sam_config_from_official(sd))
  model.load_state_dict(convert_official_sam(sd))
  backend = TransformersSamBackend(model, name="converted vit_b (random weights)")
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)
  backend.set_image(image)
  prompts = [PromptSet.from_points(rng.uniform(0, [479, 359], (5, 2))) for _ in range(4)]
  ours = backend.predict(prompts)
  resized = resize_longest(image, 1024)
  scale = np.float32([resized.shape[1] / 480, resized.shape[0] / 360])
  with torch.inference_mode():
    ref = official([{"image": torch.from_numpy(resized.transpose(2, 0, 1).astype(np.float32)),
                     "original_size": (360, 480),
                     "point_coords": torch.from_numpy(np.stack([p.points * scale for p in prompts])),
                     "point_labels": torch.from_numpy(np.stack([p.point_labels for p in prompts]))}],
                   multimask_output=True)[0]
  score_diff = float(np.abs(np.stack([p.scores for p in ours]) - ref["iou_predictions"].numpy()).max())
  agree = float(np.mean(np.stack([p.masks for p in ours]) == ref["masks"].numpy()))
  return {"max_score_diff": score_diff, "mask_agreement": agree,
          "mask_fraction": float(ref["masks"].numpy().mean())}
