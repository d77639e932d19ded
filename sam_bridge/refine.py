"""One image + weak label -> SeSAM label (paper section 3.2). Pure orchestration, no threads.

Pipeline (mode "sesam"):
  points/scribbles: stage 1, sparse to coarse: every weak stroke/point prompts the
    backend with its own pixels (a point as is, a stroke as up to `stroke_k` evenly
    spaced points) and the smallest non-empty candidate is kept; the weak pixels
    plus these masks form the coarse label of stage 2.
  stage 2 (all kinds): the coarse label, extended by the optional confident
    pseudo-labels where it is unlabeled, is split into instances (connected
    components per class, eq. 1); each instance prompts the backend with K points
    (eq. 2 sampling), its box or its mask; one candidate per instance is chosen by
    coverage/compatibility; the chosen masks are merged (higher compatibility wins
    a conflict) and the coarse label's own pixels keep their class.
Mode "naive" (the paper's SAM baseline): the weak label prompts SAM directly, one
prompt per class: coarse masks as mask prompts, points as points, scribbles as
point sets; the best-scoring candidate is kept.

Everything runs at a working resolution whose longest side is at most
`work_long_side` (default 1024, SAM's own input size; SAM's masks are 256x256 before
upsampling), and the result is resized back (nearest) with the full-resolution weak
pixels restored on top.

Speed (what a training refresh costs): with a `cache` (sam_bridge.cache) and
`cache_embeddings` (or a request's `cache_key`), an image is encoded once and later
refreshes only decode prompts. All prompt sets of a stage go to the backend in one
call (the backend batches them). For SAM backends (`predict_lowres`), candidates are
compared with the weak instance at the decoder's 256x256 resolution and only the
chosen mask of each prompt set is upsampled to full size (`lowres_selection`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time

import numpy as np
from PIL import Image

from sam_bridge import geometry
from sam_bridge.api import (Backend, InstanceRecord, PromptSet, RefineRequest,
                            RefineResult, RefineTrace)
from sam_bridge.cache import EmbeddingCache, cache_key, image_digest
from sam_bridge.candidates import Candidates, Timer, has_lowres, trace_instance
# The schema of refine()'s settings lives in its own light module; these names stay importable
# from here.
from sam_bridge.refine_config import (MODES, PROMPT_TYPES, WEAK_KINDS,  # noqa: F401
                                      RefineConfig)

def _resize(a: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
  if a.shape[:2] == hw:
    return a
  fy, fx = a.shape[0] / hw[0], a.shape[1] / hw[1]
  if not nearest and fy == fx and fy == int(fy):
    return np.asarray(Image.fromarray(a).reduce(int(fy)))  # Box filter: fast, exact for 2x, 4x.
  return np.asarray(Image.fromarray(a).resize((hw[1], hw[0]), Image.NEAREST if nearest else Image.BILINEAR))


def refine(backend: Backend, request: RefineRequest, config: RefineConfig = RefineConfig(), *,
           seed: int = 0, confidence: np.ndarray | None = None,
           cache: EmbeddingCache | None = None) -> RefineResult:
  """Refines one weak label with `backend`.

  Args:
    backend: any Backend; an oracle needs `request.fine`.
    request: image HxWx3 uint8, weak HxW uint8 (255 = unlabeled), optional extension
      HxW uint8 (theta2 pseudo-labels, 255 = none), optional fine HxW uint8.
    config: RefineConfig.
    seed: randomness of point sampling / random selection, with the example id and the
      request's `step` (each training refresh draws fresh prompts).
    confidence: optional HxW float32 teacher confidence in [0, 1], for sampling
      "confidence"; default: the request's own (uint8, value / 255).
    cache: optional sam_bridge.cache.EmbeddingCache; used when `request.cache_key` is
      set or `config.cache_embeddings` (key: the example id), for backends with
      `image_state` / `load_image_state`. A hit skips the encoder.

  Returns:
    RefineResult: label HxW uint8; coarse (stage 1, points/scribbles) or None; one
    InstanceRecord per prompt; info with the backend name, instance counts and
    seconds for "encode", "decode" (the backend's prompt decoder), "upsample" (chosen
    low-res masks to full size), "geometry" and "total" (wall), and
    "geometry_cpu" (process CPU seconds outside the backend); with a cache, info["cache"]
    says hit/miss ("source": memory/disk/None), the encoder seconds this hit saved
    ("encode_s_saved") and the cache's running totals (hits, misses, bytes, ...).
  """
  if request.sampling is not None:
    config = dataclasses.replace(config, sampling=request.sampling)
  config.validate()
  timer = Timer()
  t_start = timer.start()
  image, weak = np.asarray(request.image), np.asarray(request.weak)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f"{request.example_id}: image must be HxWx3 uint8, got {image.shape} {image.dtype}")
  full_hw = image.shape[:2]
  if confidence is None and request.confidence is not None:
    confidence = np.asarray(request.confidence, np.float32) / 255.0
  for name, arr in (("weak", weak), ("extension", request.extension), ("fine", request.fine),
                    ("confidence", confidence)):
    if arr is not None and arr.shape != full_hw:
      raise ValueError(f"{request.example_id}: {name} label {arr.shape} does not match image {full_hw}")
  if backend.is_oracle and request.fine is None:
    raise ValueError(f"{request.example_id}: backend {backend.name} is an oracle and needs the fine label")
  hw = working_size(full_hw, config)
  image_w = _resize(image, hw, nearest=False)
  weak_w = _resize(weak, hw, nearest=True)
  ext_w = None if request.extension is None else _resize(np.asarray(request.extension), hw, nearest=True)
  fine_w = None if request.fine is None else _resize(np.asarray(request.fine), hw, nearest=True)
  rng = np.random.default_rng(sampling_seed(seed, request))
  conf_w = None
  if confidence is not None:
    conf_w = np.asarray(Image.fromarray(confidence.astype(np.float32)).resize((hw[1], hw[0]), Image.BILINEAR))

  t0 = timer.start()
  cache_info = _set_image(backend, request, image_w, fine_w if backend.is_oracle else None,
                          hw, config, cache)
  timer.add("encode", t0)

  records: list[InstanceRecord] = []
  trace = RefineTrace(hw, image_w, weak_w) if config.trace else None
  coarse_w = None
  if config.mode == "naive":
    label_w = _naive(backend, weak_w, config, records, timer, trace)
  else:
    base = weak_w
    if config.weak_kind in ("points", "scribbles"):
      coarse_w = _sparse_to_coarse(backend, weak_w, config, records, timer, trace)
      base = coarse_w
    ext_stage = ext_w if config.refined_sampling else None
    label_w = _instances_stage(backend, base, ext_stage, config, rng, conf_w, records, timer,
                               trace)

  label = _restore(label_w, weak, full_hw, config.ignore_index)
  coarse = None if coarse_w is None else _restore(coarse_w, weak, full_hw, config.ignore_index)
  timer.add("total", t_start)
  t = timer.t
  info = {"backend": backend.name, "oracle": bool(backend.is_oracle), "working_hw": hw,
          "instances": sum(r.stage == "instances" for r in records),
          "sparse_prompts": sum(r.stage == "sparse" for r in records),
          "lowres_selection": bool(config.lowres_selection and has_lowres(backend)),
          "seconds": {"encode": t["encode"], "decode": t["decode"], "upsample": t["upsample"],
                      "total": t["total"],
                      "geometry": t["total"] - t["encode"] - t["decode"] - t["upsample"],
                      "geometry_cpu": (timer.cpu["total"] - timer.cpu["encode"]
                                       - timer.cpu["decode"] - timer.cpu["upsample"])}}
  if cache_info is not None:
    info["cache"] = cache_info
  return RefineResult(request.example_id, label, coarse, records, info=info, trace=trace)


def working_size(full_hw: tuple[int, int], config: RefineConfig) -> tuple[int, int]:
  """(H, W) refinement works at: the longest side at most `config.work_long_side`."""
  scale = min(1.0, config.work_long_side / max(full_hw))
  return (max(1, round(full_hw[0] * scale)), max(1, round(full_hw[1] * scale)))


def _cache_key_base(request: RefineRequest, config: RefineConfig) -> str | None:
  return request.cache_key if request.cache_key is not None else (
      request.example_id if config.cache_embeddings else None)


def encode_ahead(backend: Backend, requests: list[RefineRequest], config: RefineConfig,
                 cache: EmbeddingCache | None) -> int:
  """Encodes in batched calls the images of `requests` whose state `cache` lacks.

  For backends that encode many images per call (`encode_images`, e.g. the JAX SAM on an
  accelerator): `refine()` then finds every state in the cache, as if it had encoded it.
  Oracles (their state depends on the fine label) and backends without `encode_images` are
  left to `refine()`.

  Returns:
    The number of images encoded.
  """
  if cache is None or backend.is_oracle or not hasattr(backend, "encode_images"):
    return 0
  encoder_name = getattr(backend, "encoder_name", backend.name)
  keys, images = [], []
  for request in requests:
    base = _cache_key_base(request, config)
    image = np.asarray(request.image)
    if base is None or image.ndim != 3:
      continue
    hw = working_size(image.shape[:2], config)
    image_w = _resize(image, hw, nearest=False)
    key = cache_key(base, encoder_name, hw, image_digest(image_w, None))
    if key not in cache and key not in keys:
      keys.append(key)
      images.append(image_w)
  if not images:
    return 0
  t0 = time.perf_counter()
  states = backend.encode_images(images)
  seconds = (time.perf_counter() - t0) / len(images)
  for key, state in zip(keys, states):
    cache.put(key, state, encode_s=seconds)
  return len(images)


def _set_image(backend: Backend, request: RefineRequest, image_w: np.ndarray,
               fine_w: np.ndarray | None, hw: tuple[int, int], config: RefineConfig,
               cache) -> dict | None:
  """backend.set_image, or a cached state of the same image; returns info["cache"] or None."""
  key_base = _cache_key_base(request, config)
  use = (cache is not None and key_base is not None and hasattr(backend, "image_state")
         and hasattr(backend, "load_image_state"))
  if not use:
    backend.set_image(image_w, fine_label=fine_w)
    if cache is not None and key_base is not None:
      return {"hit": False, "source": None, "unsupported": True}
    return None
  # Backends whose decoder settings do not change the encoder state say so with
  # `encoder_name` (e.g. a bf16 decoder over fp32 embeddings shares the fp32 cache).
  encoder_name = getattr(backend, "encoder_name", backend.name)
  key = cache_key(key_base, encoder_name, hw, image_digest(image_w, fine_w))
  saved_before = cache.stats["encode_s_saved"]
  found = cache.get(key)
  if found is not None:
    backend.load_image_state(found[0])
    return {"hit": True, "source": found[1], "key": key,
            "encode_s_saved": cache.stats["encode_s_saved"] - saved_before, **_totals(cache)}
  t0 = time.perf_counter()
  backend.set_image(image_w, fine_label=fine_w)
  cache.put(key, backend.image_state(), encode_s=time.perf_counter() - t0)
  return {"hit": False, "source": None, "key": key, "encode_s_saved": 0.0, **_totals(cache)}


def _totals(cache) -> dict:
  s = cache.summary()
  return {"hits": s["hits"], "misses": s["misses"], "disk_hits": s["disk_hits"],
          "entries": s["entries"], "bytes": s["bytes"], "evictions": s["evictions"],
          "total_encode_s_saved": s["encode_s_saved"]}


def sampling_seed(seed: int, request: RefineRequest) -> list[int]:
  """The entropy of a request's prompt sampling: (seed, example id[, step + 1]).

  Seeded per example so that a result does not depend on processing order, and per
  training step (`request.step`, -1 for the pre-warm) so that each refresh of an image
  draws fresh prompts while a run with the same seed repeats its draws.
  """
  entropy = [int(seed), hash_id(request.example_id)]
  if request.step is not None:
    if request.step < -1:
      raise ValueError(f"{request.example_id}: request step {request.step} < -1")
    entropy.append(int(request.step) + 1)
  return entropy


def hash_id(example_id: str) -> int:
  """A process-independent 63-bit hash of an example id (Python's hash() is salted)."""
  return int.from_bytes(hashlib.blake2b(example_id.encode(), digest_size=8).digest(), "little") >> 1


def _restore(label_w: np.ndarray, weak: np.ndarray, full_hw: tuple[int, int], ignore: int) -> np.ndarray:
  out = _resize(label_w, full_hw, nearest=True).copy()
  keep = weak != ignore
  out[keep] = weak[keep]
  return out


def _sparse_to_coarse(backend, weak, config, records, timer, trace=None) -> np.ndarray:
  """Stage 1 for points/scribbles: each stroke's smallest candidate (see module docstring)."""
  strokes = geometry.find_instances(weak, min_area=1, ignore_index=config.ignore_index)
  prompts = []
  for s in strokes:
    pts = geometry.stroke_points(s.mask, k=config.stroke_k, point_extent=config.point_extent)
    prompts.append(PromptSet.from_points(pts + np.float32([s.bbox[1], s.bbox[0]])))
  cands = Candidates(backend, prompts, timer, weak.shape, config.lowres_selection)
  picks, classes, prios = [], [], []
  for i, (s, prompt) in enumerate(zip(strokes, prompts)):
    r, p, areas = cands.stats(i, s.mask, s.bbox)
    idx, _ = geometry.select_mask(r, p, cands.scores(i), areas, strategy="smallest")
    used = areas[idx] > 0
    if trace is not None:
      trace_instance(trace, cands, i, "sparse", s.class_id, s.bbox, s.mask, prompt,
                      r, p, idx if used else -1, False)
    records.append(InstanceRecord(s.class_id, s.area, s.bbox, prompt.points, idx if used else -1,
                                  float(r[idx]), float(p[idx]), False, stage="sparse"))
    if used:
      picks.append((i, idx))
      classes.append(s.class_id)
      prios.append(-float(areas[idx]))  # Smaller masks win conflicts: they are the precise ones.
  masks = cands.chosen_masks(picks)
  return geometry.merge_masks(weak, masks, classes, prios, ignore_index=config.ignore_index)


def _instances_stage(backend, base, ext, config, rng, conf, records, timer,
                     trace=None) -> np.ndarray:
  """Stage 2: instances of the (extended) coarse label -> prompts -> selection -> merge."""
  region = base
  if ext is not None:
    region = np.where(base != config.ignore_index, base, ext).astype(np.uint8)
  find = geometry.find_instances if config.instances else geometry.class_instances
  insts = find(region, min_area=config.min_area, ignore_index=config.ignore_index)
  prompts = []
  sampled = [{} for _ in insts] if trace is not None else [None] * len(insts)
  if trace is not None:
    trace.region = region
  for inst, drawn in zip(insts, sampled):
    y0, x0, y1, x1 = inst.bbox
    if config.prompt == "points":
      crop_conf = None if conf is None else conf[y0:y1, x0:x1]
      pts = geometry.sample_points(inst.mask, k=config.k, strategy=config.sampling, rng=rng,
                                   confidence=crop_conf, trace=drawn)
      prompts.append(PromptSet.from_points(pts + np.float32([x0, y0])))
    elif config.prompt == "box":
      prompts.append(PromptSet(np.zeros((0, 2), np.float32), np.zeros(0, np.int32),
                               box=np.float32([x0, y0, x1 - 1, y1 - 1])))
    else:
      prompts.append(PromptSet(np.zeros((0, 2), np.float32), np.zeros(0, np.int32),
                               mask=inst.full_mask(region.shape)))
  cands = Candidates(backend, prompts, timer, region.shape, config.lowres_selection)
  chosen, classes, prios = [], [], []
  for i, (inst, prompt) in enumerate(zip(insts, prompts)):
    r, p, areas = cands.stats(i, inst.mask, inst.bbox)
    idx, ok = geometry.select_mask(r, p, cands.scores(i), areas, strategy=config.selection,
                                   tau1=config.tau1, tau2=config.tau2, rng=rng)
    if trace is not None:
      trace_instance(trace, cands, i, "instances", inst.class_id, inst.bbox, inst.mask, prompt,
                      r, p, idx, ok, sampled[i])
    records.append(InstanceRecord(inst.class_id, inst.area, inst.bbox, prompt.points, idx,
                                  float(r[idx]), float(p[idx]), ok))
    chosen.append(idx)
    classes.append(inst.class_id)
    prios.append(float(p[idx]))
  masks = cands.chosen_masks(list(enumerate(chosen)))
  mask_areas = [int(np.count_nonzero(m)) for m in masks]
  return geometry.merge_masks(base, masks, classes, prios, ignore_index=config.ignore_index,
                              areas=mask_areas)


def _naive(backend, weak, config, records, timer, trace=None) -> np.ndarray:
  """The SAM baseline: one prompt per class straight from the weak label, best score kept."""
  classes = [int(c) for c in np.unique(weak) if c != config.ignore_index]
  prompts, kept = [], []
  for c in classes:
    m = weak == c
    if config.weak_kind == "coarse":
      prompts.append(PromptSet(np.zeros((0, 2), np.float32), np.zeros(0, np.int32), mask=m))
    else:
      pts = []
      for s in geometry.find_instances(m.astype(np.uint8), min_area=1, ignore_index=0):
        pts.append(geometry.stroke_points(s.mask, k=config.stroke_k, point_extent=config.point_extent)
                   + np.float32([s.bbox[1], s.bbox[0]]))
      prompts.append(PromptSet.from_points(np.concatenate(pts)))
    kept.append(c)
  cands = Candidates(backend, prompts, timer, weak.shape, config.lowres_selection)
  chosen, prios = [], []
  for i, (c, prompt) in enumerate(zip(kept, prompts)):
    idx = int(np.argmax(cands.scores(i)))
    m = weak == c
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    bbox = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    r, p, _ = cands.stats(i, m[bbox[0]:bbox[2], bbox[1]:bbox[3]], bbox)
    if trace is not None:
      trace_instance(trace, cands, i, "naive", c, bbox, m[bbox[0]:bbox[2], bbox[1]:bbox[3]],
                      prompt, r, p, idx, False)
    records.append(InstanceRecord(c, int(m.sum()), bbox, prompt.points, idx, float(r[idx]),
                                  float(p[idx]), False, stage="naive"))
    chosen.append(idx)
    prios.append(float(cands.scores(i)[idx]))
  masks = cands.chosen_masks(list(enumerate(chosen)))
  return geometry.merge_masks(weak, masks, kept, prios, ignore_index=config.ignore_index)
