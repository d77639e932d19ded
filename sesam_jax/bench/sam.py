"""`sesam bench --what sam`: SAM-bridge speed per backend and the geometry time.

For each backend, on a CamVid-sized (360x480) and a Cityscapes-sized (1024x2048)
scene: seconds to encode the image (`set_image`, once per image) and seconds per
prompt set in the decoder (batched `predict`), plus the geometry time of one
refinement (instances, sampling, selection, merging, resizing: everything in
`refine` except the backend calls) at the working resolution (longest side
`--work-long-side`, default 1024, so Cityscapes runs at 512x1024). The scenes are
synthetic (bands + ~50 objects, coarse = objects shrunk) so that the instance count
is controlled. Random-weight SAMs are timed, never scored. `--parity` also runs the
official-vs-converted check on a full random ViT-B, and the Flax SAM against
`transformers`' SamModel on the same random ViT-B (fp32 differences, bf16 errors beside).

Flax SAM (`jax:PATH`, `jax-random:VARIANT`) beside torch SAM: with a jax backend listed
(e.g. `--backends jax-random:vit_b,random:vit_b`), the side-by-side timing runs instead of
the default scene: every backend encodes the same CamVid image and decodes the same
`--prompts` prompt sets (K=5 points each; low-res decode + one chosen mask upsampled, as
refine does), in alternating rounds (`--rounds`, medians), wall and process-CPU seconds,
with Flax/torch ratios. Threads: torch runs `--torch-threads`; with 1, XLA:CPU is made
single-threaded too (XLA_FLAGS, set before jax starts); torch flushes subnormals
(`torch.set_flush_denormal(True)`, else SAM's zero padding slows its encoder ~10x here).
`--encode-batch N` also times N images per encoder call (images/s; the GPU figure).
`--attention chunked,dot_product` times the Flax encoder with each attention implementation
(`sesam_jax.models.attention`) as its own backend, `<spec>[<attention>]`, in the same rounds.
On a GPU, jax picks it up by itself; give torch `--device cuda`.

`--scenes camvid` (the default) times what training pays on a real CamVid image with
its coarse weak label (`--data-dir`, `--split`, `--image-index`): one cold refinement
(encoder seconds, decoder seconds per prompt set, geometry seconds) and one cached
refresh (the same image again with the embedding cache warm: what every later
visit of a training image costs). torch runs with `--torch-threads` (default 1, as
in the bridge service, which shares the CPU with the trainer).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import numpy as np
import scipy.ndimage as ndi
from jax._src import xla_bridge
from PIL import Image

from sam_bridge.api import PromptSet, RefineRequest
from sam_bridge.backends.official_loader import build_official_sam
from sam_bridge.backends.sam_convert import convert_official_sam, sam_config_from_official
from sam_bridge.backends.transformers_sam import TransformersSamBackend, resize_longest
from sam_bridge.refine import RefineConfig, refine
from sesam_jax import data, report
from sesam_jax.bench import sam_camvid
from sesam_jax.bench.sam_backends import make_backend
from sesam_jax.bench.sam_parity import sam_parity
from sesam_jax.sam import resolver


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--backends", default="oracle,superpixel,random:vit_b",
                      help="comma-separated backend specs (random:vit_b = random weights, timing only)")
  parser.add_argument("--objects", type=int, default=50, help="objects in the synthetic scenes")
  parser.add_argument("--prompts", type=int, default=16, help="prompt sets per decoder timing")
  parser.add_argument("--repeats", type=int, default=3, help="median over this many geometry runs")
  parser.add_argument("--work-long-side", type=int, default=1024, help="working resolution (pixels)")
  parser.add_argument("--device", default="cpu")
  parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 (torch backends)")
  parser.add_argument("--scenes", default=None,
                      help="comma-separated: camvid (a real image + coarse label), synthetic (two "
                           "sizes), none; default: camvid, or none when a jax backend is listed")
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
  parser.add_argument("--denormals", default="on", choices=("on", "both"),
                      help="torch on CPU computes subnormal floats as zero (on); `both` also "
                           "times the CamVid encode with subnormals kept (~10x slower on x86)")
  parser.add_argument("--parity", action="store_true",
                      help="also check official-vs-converted masks and Flax-vs-transformers "
                           "outputs on a full random ViT-B")
  parser.add_argument("--rounds", type=int, default=3,
                      help="side-by-side rounds (backends alternate; medians reported)")
  parser.add_argument("--attention", default="auto",
                      help="Flax SAM encoder attention implementations, comma-separated, each "
                           "timed as its own backend in the same run (of: auto, chunked, full, "
                           "dot_product, cudnn; auto = chunked on CPU, cudnn/dot_product on GPU)")
  parser.add_argument("--encode-batch", type=int, default=0,
                      help="side by side: also time this many images per encoder call (images/s)")


def synthetic_scene(h: int, w: int, objects: int, seed: int = 0):
  """(image HxWx3 uint8, fine HxW uint8, coarse HxW uint8) with `objects` blobs on bands."""
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

  specs = [b.strip() for b in args.backends.split(",") if b.strip()]
  if any(_is_jax(s) for s in specs):
    _single_thread_xla(args.torch_threads)
  if any(resolver.runs_on(s) == "torch" for s in specs):
    import torch
    if args.torch_threads:
      torch.set_num_threads(args.torch_threads)
    torch.set_flush_denormal(True)  # Subnormals from SAM's zero padding: ~10x slower encoder.
  if args.scenes is None:
    args.scenes = "none" if any(_is_jax(s) for s in specs) else "camvid"
  scene_names = [s.strip() for s in args.scenes.split(",") if s.strip() and s.strip() != "none"]
  unknown = set(scene_names) - {"camvid", "synthetic"}
  if unknown:
    raise ValueError(f"--scenes {sorted(unknown)}: choose camvid, synthetic or none")
  cfg = RefineConfig(work_long_side=args.work_long_side)
  out: dict = {"work_long_side": args.work_long_side, "torch_threads": args.torch_threads, "sizes": {}}
  if any(_is_jax(s) for s in specs):
    out["side_by_side"] = side_by_side(args, specs)
  if "camvid" in scene_names:
    out["camvid"] = sam_camvid.camvid_refresh(args, cfg)
  if "synthetic" not in scene_names:
    if args.parity:
      out.update(_parity())
    return out
  scenes = {"camvid_360x480": synthetic_scene(360, 480, args.objects),
            "cityscapes_1024x2048": synthetic_scene(1024, 2048, args.objects)}
  for size_name, (image, fine, coarse) in scenes.items():
    entry: dict = {}
    # Geometry: refine with the oracle, minus its backend calls.
    oracle = make_backend("oracle", args)
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
    img_w = np.asarray(Image.fromarray(image).resize(hw[::-1], Image.BILINEAR))
    fine_w = np.asarray(Image.fromarray(fine).resize(hw[::-1], Image.NEAREST))
    rng = np.random.default_rng(0)
    prompts = [PromptSet.from_points(rng.uniform(0, [hw[1] - 1, hw[0] - 1], (5, 2)))
               for _ in range(args.prompts)]
    for spec in specs:
      backend = make_backend(spec, args)
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
    out.update(_parity())
  return out


def _is_jax(spec: str) -> bool:
  return resolver.runs_on(spec) == "jax"


def _single_thread_xla(threads: int) -> None:
  """With 1 torch thread, makes XLA:CPU single-threaded too (before jax's backend starts)."""
  if threads != 1:
    report.log(f"torch runs {threads} threads; XLA:CPU uses its default thread pool")
    return
  flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  if "xla_cpu_multi_thread_eigen" in os.environ.get("XLA_FLAGS", ""):
    return
  if "jax" in sys.modules:
    if getattr(xla_bridge, "_backends", None):
      report.log("jax already started: XLA:CPU keeps its thread pool (thread counts may differ)")
      return
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()


def _sync(backend) -> None:
  """Waits for a backend's asynchronous device work (jax arrays, CUDA kernels)."""
  if hasattr(backend, "block_until_ready"):
    backend.block_until_ready()
  elif getattr(getattr(backend, "device", None), "type", "") == "cuda":
    import torch
    torch.cuda.synchronize()


def _bench_image(args: argparse.Namespace) -> tuple[np.ndarray, str]:
  """The CamVid image (`--data-dir`, `--image-index`) at the working resolution, or a scene."""
  if pathlib.Path(args.data_dir).is_dir():
    example = data.get_source("camvid", data_dir=args.data_dir, split=args.split)[args.image_index]
    image, name = example["image"], f"camvid {example['id']}"
  else:
    image, name = synthetic_scene(360, 480, args.objects)[0], "synthetic 360x480"
  scale = min(1.0, args.work_long_side / max(image.shape[:2]))
  hw = (round(image.shape[0] * scale), round(image.shape[1] * scale))
  if hw != image.shape[:2]:
    image = np.asarray(Image.fromarray(image).resize(hw[::-1], Image.BILINEAR))
  return image, name


def side_by_side(args: argparse.Namespace, specs: list[str]) -> dict:
  """Encoder seconds per image and decoder seconds per prompt set, backends alternating.

  Returns:
    {"image", "hw", "prompt_sets", "rounds", "<spec>": {"name", "encode_s", "encode_cpu_s",
    "decode_s_per_prompt_set", "decode_cpu_s_per_prompt_set", ...}, "ratios": {"<jax spec> /
    <torch spec>": {"encode", "decode", "encode_cpu", "decode_cpu"}}}.
  """
  image, name = _bench_image(args)
  h, w = image.shape[:2]
  rng = np.random.default_rng(0)
  prompts = [PromptSet.from_points(rng.uniform(0, [w - 1, h - 1], (5, 2)))
             for _ in range(args.prompts)]
  attentions = [a.strip() for a in args.attention.split(",") if a.strip()] or ["auto"]
  # label -> (spec, attention): a jax spec once per attention implementation.
  labels = {(f"{s}[{a}]" if _is_jax(s) and len(attentions) > 1 else s): (s, a)
            for s in specs if s not in ("oracle", "superpixel")
            for a in (attentions if _is_jax(s) else [None])}
  sam_specs = list(labels)
  backends = {}
  for spec in sam_specs:
    t0 = time.perf_counter()
    backends[spec] = make_backend(labels[spec][0], args, attention=labels[spec][1])
    backends[spec].set_image(image)  # First call: jit compilation (jax) / allocator warm-up.
    backends[spec].upsample(np.stack([p.logits[0] for p in backends[spec].predict_lowres(prompts)]))
    _sync(backends[spec])
    report.log(f"{backends[spec].name}: built and warmed up in {time.perf_counter() - t0:.1f} s")
  times = {s: {k: [] for k in ("enc", "enc_cpu", "dec", "dec_cpu", "up")} for s in sam_specs}
  for r in range(args.rounds):
    for spec, backend in backends.items():
      t0, c0 = time.perf_counter(), time.process_time()
      backend.set_image(image)
      _sync(backend)
      times[spec]["enc"].append(time.perf_counter() - t0)
      times[spec]["enc_cpu"].append(time.process_time() - c0)
      t0, c0 = time.perf_counter(), time.process_time()
      low = backend.predict_lowres(prompts)
      t1 = time.perf_counter()
      backend.upsample(np.stack([p.logits[0] for p in low]))  # One chosen mask per set.
      times[spec]["dec"].append((time.perf_counter() - t0) / len(prompts))
      times[spec]["dec_cpu"].append((time.process_time() - c0) / len(prompts))
      times[spec]["up"].append((time.perf_counter() - t1) / len(prompts))
      report.log(f"round {r + 1}: {backend.name}: encode {times[spec]['enc'][-1]:.2f} s "
                 f"({times[spec]['enc_cpu'][-1]:.2f} s CPU), decode "
                 f"{times[spec]['dec'][-1] * 1e3:.1f} ms/prompt set "
                 f"({times[spec]['dec_cpu'][-1] * 1e3:.1f} ms CPU)")
  med = statistics.median
  out: dict = {"image": name, "hw": [h, w], "prompt_sets": len(prompts), "rounds": args.rounds,
               "dtype": args.dtype, "decoder_dtype": args.decoder_dtype}
  for spec, backend in backends.items():
    t = times[spec]
    out[spec] = {"name": backend.name, "encode_s": med(t["enc"]), "encode_cpu_s": med(t["enc_cpu"]),
                 "decode_s_per_prompt_set": med(t["dec"]),
                 "decode_cpu_s_per_prompt_set": med(t["dec_cpu"]),
                 "upsample_s_per_prompt_set": med(t["up"])}
    if hasattr(backend, "compiled_shapes"):
      out[spec]["compiled_shapes"] = backend.compiled_shapes()
      out[spec]["attention"] = backend.attention
    if args.encode_batch:
      out[spec].update(_encode_throughput(backend, image, args.encode_batch, args.rounds))
  ratios = {}
  for a in (s for s in sam_specs if _is_jax(labels[s][0])):
    for b in (s for s in sam_specs if not _is_jax(labels[s][0])):
      x, y = out[a], out[b]
      ratios[f"{a} / {b}"] = {
          "encode": x["encode_s"] / y["encode_s"],
          "encode_cpu": x["encode_cpu_s"] / y["encode_cpu_s"],
          "decode": x["decode_s_per_prompt_set"] / y["decode_s_per_prompt_set"],
          "decode_cpu": x["decode_cpu_s_per_prompt_set"] / y["decode_cpu_s_per_prompt_set"]}
      report.log(f"{a} / {b}: encoder {ratios[f'{a} / {b}']['encode']:.2f}x wall "
                 f"({ratios[f'{a} / {b}']['encode_cpu']:.2f}x CPU), decoder "
                 f"{ratios[f'{a} / {b}']['decode']:.2f}x wall "
                 f"({ratios[f'{a} / {b}']['decode_cpu']:.2f}x CPU)")
  out["ratios"] = ratios
  return out


def _encode_throughput(backend, image: np.ndarray, batch: int, rounds: int) -> dict:
  """Images per second with `batch` images per encoder call (median of `rounds`)."""
  images = [image] * batch
  if hasattr(backend, "encode_images"):
    backend.encode_batch = batch  # One encoder call of `batch` images (compiled on first use).
    run_batch = lambda: backend.encode_images(images)
  else:  # torch: the model's own batched encoder on the preprocessed pixels.
    import torch
    pixels = torch.cat([backend.preprocess(image)[0]] * batch).to(backend.device, backend.dtype)

    def run_batch():
      with torch.inference_mode():
        backend.model.get_image_embeddings(pixels)
      _sync(backend)
  run_batch()
  secs = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    run_batch()
    secs.append(time.perf_counter() - t0)
  return {"encode_batch": batch, "images_per_s": batch / statistics.median(secs)}


def _parity() -> dict:
  """Both ViT-B parity checks (official vs converted torch; Flax vs transformers)."""
  out = {"parity_vit_b": vit_b_parity()}
  flax = sam_parity("vit_b", image_hw=(360, 480), bf16=True, attention="chunked")  # As on CPU.
  report.log(f"Flax vs transformers ViT-B (fp32): embeddings {flax['embedding_max_abs_diff']:.2e}, "
             f"IoU {flax['iou_max_abs_diff']:.2e}, "
             f"low-res logits {flax['logits_max_abs_diff']:.2e}, "
             f"masks {100 * flax['mask_agreement']:.4f}% | bf16: embeddings "
             f"{flax['embedding_bf16_err']:.2e}, IoU {flax['iou_bf16_err']:.2e}, logits "
             f"{flax['logits_bf16_err']:.2e}, masks {100 * flax['mask_agreement_bf16']:.3f}%")
  out["flax_parity_vit_b"] = flax
  return out


def vit_b_parity() -> dict:
  """Full-size random ViT-B: official modeling code vs the converted transformers model."""
  import torch
  from transformers import SamModel
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
