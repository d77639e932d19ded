"""`sesam bench --what train-step`: seconds per supervised training step.

One step = forward, bilinear upsampling of the stride-4 logits to the crop,
cross-entropy with ignore index 255 (mean over labelled pixels), backward and
an AdamW update (lr 1e-4, weight decay 0.01), jitted with donated state. The
same SegFormer-B0 step runs in PyTorch (`transformers`'
SegformerForSemanticSegmentation, torch.optim.AdamW, same batch, crop,
precision, drop path and dropout) in the same process. After warm-up the JAX
and torch steps alternate, so that load from other jobs on a shared machine
hits both alike; each figure is the median over the repetitions and the ratio
is `torch_seconds / jax_seconds` (> 1: JAX is faster).

Memory: on GPU the device's peak bytes in use; on CPU XLA's own estimate for
the compiled step (arguments + outputs + temporaries, `memory_analysis`) and
the process's peak resident set size after each model's warm-up.

On a GPU host the torch step runs on CUDA (`--torch-device`, default: cuda when
jax runs on a GPU and torch sees one; bf16 = torch.autocast on that device) and
each torch step ends with `torch.cuda.synchronize()`, as each JAX step ends with
`block_until_ready`. Run it with `XLA_PYTHON_CLIENT_PREALLOCATE=false` there, or
JAX's default 75% preallocation leaves torch too little of the card.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sesam_jax import report
from sesam_jax.data.base import IGNORE_INDEX
from sesam_jax.models import attention as attention_lib
from sesam_jax.models import create_model

LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.01  # torch.optim.AdamW's default, also used for optax.
JAX_MODELS = ("segformer_b0", "deeplabv3plus_r101", "segformer_tiny", "deeplabv3plus_tiny")


def _batch(batch: int, crop: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Random BxHxWx3 float32 images and BxHxW int32 labels with ~10% ignored pixels."""
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch, crop, crop, 3)).astype(np.float32)
  labels = rng.integers(0, num_classes, (batch, crop, crop)).astype(np.int32)
  labels[rng.random(labels.shape) < 0.1] = IGNORE_INDEX
  return images, labels


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB.


def make_jax_step(name: str, num_classes: int, crop: int, batch: int, dtype: Any,
                  dwconv_impl: str | None,
                  attention: str = "auto") -> tuple[Callable[[], None], dict]:
  """Builds a jitted train step for a registered student (`attention`: SegFormer's).

  Returns:
    (run_one_step, info): run_one_step() performs one step and blocks until
    it is done; info holds parameter count and XLA's memory estimate.
  """

  overrides = {"dwconv_impl": dwconv_impl} if dwconv_impl and name.startswith("segformer") else {}
  model = create_model(name, num_classes, dtype=dtype, attention=attention, **overrides)
  images_np, labels_np = _batch(batch, crop, num_classes, seed=0)
  images, labels = jnp.asarray(images_np), jnp.asarray(labels_np)
  variables = jax.jit(model.init)(jax.random.key(0), images[:1])
  tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
  state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
           "opt": tx.init(variables["params"]), "rng": jax.random.key(1)}

  def loss_fn(params, batch_stats, rng, images, labels):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                  train=True, mutable=["batch_stats"], rngs={"dropout": rng})
    logits = jax.image.resize(logits, (batch, crop, crop, num_classes), "linear",
                              antialias=False)
    valid = labels != IGNORE_INDEX
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    loss = jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    return loss, updates["batch_stats"]

  # The batch is an argument (not a closed-over constant that XLA would fold).
  def step(state, images, labels):
    rng, drop_rng = jax.random.split(state["rng"])
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["batch_stats"], drop_rng, images, labels)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "batch_stats": batch_stats, "opt": opt, "rng": rng}, loss

  compiled = jax.jit(step, donate_argnums=0).lower(state, images, labels).compile()
  info = {"params": int(sum(p.size for p in jax.tree.leaves(variables["params"])))}
  analysis = compiled.memory_analysis()
  if analysis is not None:
    info["xla_memory_mb"] = round((analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                                   + analysis.temp_size_in_bytes) / 2**20, 1)
  holder = {"state": state}

  def run_one_step():
    holder["state"], loss = compiled(holder["state"], images, labels)
    loss.block_until_ready()
    holder["loss"] = float(loss)

  info["holder"] = holder
  return run_one_step, info


def make_torch_step(num_classes: int, crop: int, batch: int, bf16: bool,
                    threads: int | None, device: str = "cpu") -> tuple[Callable[[], None], dict]:
  """The same SegFormer-B0 step in PyTorch (`transformers`, torch.optim.AdamW) on `device`."""
  import torch
  import transformers
  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(0)
  dev = torch.device(device)
  model = transformers.SegformerForSemanticSegmentation(
      transformers.SegformerConfig(num_labels=num_classes)).to(dev)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
  images_np, labels_np = _batch(batch, crop, num_classes, seed=0)
  images = torch.from_numpy(images_np.transpose(0, 3, 1, 2).copy()).to(dev)
  labels = torch.from_numpy(labels_np.astype(np.int64)).to(dev)
  loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
  holder: dict = {}
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

  def run_one_step():
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
      logits = model(images).logits
      logits = torch.nn.functional.interpolate(logits, size=(crop, crop), mode="bilinear",
                                               align_corners=False)
      loss = loss_fn(logits.float(), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sync()
    holder["loss"] = float(loss.detach())

  return run_one_step, {"params": int(sum(p.numel() for p in model.parameters())),
                        "holder": holder}


def _torch_device(requested: str | None) -> str:
  """--torch-device, or cuda when jax runs on a GPU and torch sees one, else cpu."""
  if requested:
    return requested
  if jax.default_backend() != "gpu":
    return "cpu"
  import torch
  return "cuda" if torch.cuda.is_available() else "cpu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--models", default="segformer_b0,deeplabv3plus_r101",
                      help="comma-separated JAX students to time (of: " + ", ".join(JAX_MODELS)
                      + "); DeepLabV3+-R101 at batch 8, crop 512 takes minutes per step on CPU")
  parser.add_argument("--torch", default=True, action=argparse.BooleanOptionalAction,
                      help="also time the PyTorch SegFormer-B0 step (default: on)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--crop", type=int, default=256, help="square crop side, pixels")
  parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
  parser.add_argument("--num-classes", type=int, default=19)
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  parser.add_argument("--reps", type=int, default=3, help="timed steps per model (median)")
  parser.add_argument("--dwconv", default=None, choices=("shift", "lax"),
                      help="SegFormer depthwise conv (default: shift on CPU, lax elsewhere)")
  parser.add_argument("--attention", default="auto",
                      help="SegFormer attention implementations to time, comma-separated, each "
                           "as its own step in the same run (of: auto, chunked, full, "
                           "dot_product, cudnn; auto = chunked on CPU, cudnn/dot_product on GPU)")
  parser.add_argument("--torch-threads", type=int, default=None,
                      help="torch.set_num_threads (default: torch's own choice)")
  parser.add_argument("--torch-device", default=None,
                      help="torch device of the PyTorch step (default: cuda when jax runs on a "
                           "GPU and torch sees one, else cpu)")


def run(args: argparse.Namespace) -> dict:
  models = [m.strip() for m in args.models.split(",") if m.strip()]
  unknown = [m for m in models if m not in JAX_MODELS]
  if unknown:
    raise ValueError(f"unknown --models {unknown}; choose from {', '.join(JAX_MODELS)}.")
  dtype = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
  attentions = [attention_lib.resolve_attention(a.strip(), dtype=dtype, field="--attention")
                for a in args.attention.split(",") if a.strip()] or ["chunked"]
  # One step per (student, attention); a single attention keeps the plain names.
  jobs = [(name, attn, name if len(attentions) == 1 or not name.startswith("segformer")
           else f"{name}_{attn}") for name in models for attn in attentions]
  jobs = list({label: (name, attn, label) for name, attn, label in jobs}.values())
  device = jax.devices()[0]
  result: dict[str, Any] = {
      "batch": args.batch, "crop": args.crop, "dtype": args.dtype, "num_classes": args.num_classes,
      "reps": args.reps, "device": f"{device.platform}:{device.device_kind}",
      "dwconv": args.dwconv or ("shift" if jax.default_backend() == "cpu" else "lax"),
      "attention": ",".join(attentions)}
  steps: dict[str, Callable[[], None]] = {}
  for model_name, attention, name in jobs:
    report.log(f"compiling {name} (batch {args.batch}, crop {args.crop}, {args.dtype}, "
               f"attention {attention})")
    start = time.perf_counter()
    steps[name], info = make_jax_step(model_name, args.num_classes, args.crop, args.batch, dtype,
                                      args.dwconv, attention)
    for _ in range(args.warmup):
      steps[name]()
    result[f"{name}_compile_and_warmup_seconds"] = round(time.perf_counter() - start, 1)
    result[f"{name}_params"] = info["params"]
    if "xla_memory_mb" in info:
      result[f"{name}_xla_memory_mb"] = info["xla_memory_mb"]
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      result[f"{name}_device_peak_mb"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    result[f"{name}_peak_rss_mb_after_warmup"] = round(_peak_rss_mb(), 1)
    result[f"{name}_loss_after_warmup"] = round(info["holder"].get("loss", float("nan")), 4)
  if args.torch:
    torch_device = _torch_device(args.torch_device)
    report.log(f"building the PyTorch SegFormer-B0 step on {torch_device}")
    steps["torch_segformer_b0"], info = make_torch_step(
        args.num_classes, args.crop, args.batch, args.dtype == "bf16", args.torch_threads,
        device=torch_device)
    for _ in range(args.warmup):
      steps["torch_segformer_b0"]()
    result["torch_segformer_b0_params"] = info["params"]
    result["torch_segformer_b0_peak_rss_mb_after_warmup"] = round(_peak_rss_mb(), 1)
    import torch
    result["torch_threads"] = torch.get_num_threads()
    result["torch_device"] = torch_device
    if torch_device.startswith("cuda"):
      result["torch_segformer_b0_device_peak_mb"] = round(
          torch.cuda.max_memory_allocated() / 2**20, 1)
  # Alternate the steps so that load from other jobs hits every model alike.
  times: dict[str, list[float]] = {name: [] for name in steps}
  for rep in report.progress(range(args.reps), desc="timed steps", total=args.reps, unit="rep"):
    for name, run_one in steps.items():
      start = time.perf_counter()
      run_one()
      times[name].append(time.perf_counter() - start)
  for name, values in times.items():
    result[f"{name}_seconds"] = round(statistics.median(values), 4)
    result[f"{name}_seconds_all"] = [round(v, 4) for v in values]
  if "torch_segformer_b0" in times and "segformer_b0" in times:
    result["torch_seconds_over_jax_seconds"] = round(
        result["torch_segformer_b0_seconds"] / result["segformer_b0_seconds"], 3)
  return result
