"""`sesam bench --what parity`: Flax students vs the `transformers` references.

Both sides get the same random weights: a `transformers` model is built from
a config, its parameters perturbed (so biases and norm affines are not the
trivial 0/1 of a fresh init) and its batch-norm running statistics calibrated
on random images (so activations stay near unit scale through ResNet-50); the
state dict is converted with `models.conversion` and both run in eval mode. The
last BN scale of each ResNet residual branch is damped (RESIDUAL_BN_GAIN) so
that the random network is not chaotic (see the constant's comment).

Figures: `segformer_fp32_max_abs_diff` (SegFormer logits at H/4, where
`transformers`' decode head emits them, over a square and a non-square input),
`resnet_fp32_max_abs_diff` (the four stage outputs of ResNetModel), and bf16
compute errors under `*_bf16_max_abs_err` (bf16 is expected to differ more,
so those keys do not end in `_diff`).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sesam_jax import report
from sesam_jax.models import conversion, resnet, segformer

# Flax variant -> transformers config fields.
SEGFORMER_HF_CONFIGS: dict[str, dict[str, Any]] = {
    "B0": dict(),  # SegformerConfig's defaults are MiT-B0.
    "tiny": dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                 num_attention_heads=[1, 2, 3, 4], decoder_hidden_size=16),
}
RESNET_HF_CONFIGS: dict[str, dict[str, Any]] = {
    "50": dict(),  # ResNetConfig's defaults are ResNet-50.
    "tiny": dict(embedding_size=8, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1]),
}


# A residual branch's last BN scale: damped (as zero_init_residual does, but not to
# zero, so that every conv is still compared). With scale 1 a random ResNet-50 is
# chaotic: fp32 rounding differences (1e-6) grow ~2.5x per stage to ~1e-3.
RESIDUAL_BN_SUFFIX = "layer.2.normalization.weight"
RESIDUAL_BN_GAIN = 0.25


def _randomize_and_calibrate(model: Any, image_size: tuple[int, int], seed: int) -> None:
  """Perturbs every parameter and sets BN running stats from one random batch."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.add_(0.02 * torch.randn(p.shape, generator=gen))
      if name.endswith(RESIDUAL_BN_SUFFIX):
        p.mul_(RESIDUAL_BN_GAIN)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
      bn.momentum = 1.0  # Running stats := this batch's statistics.
    model.train()
    model(torch.randn((4, 3) + tuple(image_size), generator=gen))
    for bn in bns:
      bn.momentum = 0.1
  model.eval()


def _state_dict_numpy(model: Any) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def segformer_parity(variant: str = "B0", *, num_classes: int = 19,
                     sizes: tuple[tuple[int, int], ...] = ((128, 128), (96, 160)),
                     seed: int = 0, bf16: bool = True, **model_kwargs: Any) -> dict[str, float]:
  """Max abs logit differences of the Flax SegFormer vs SegformerForSemanticSegmentation.

  Args:
    variant: "B0" or "tiny" (key of SEGFORMER_HF_CONFIGS).
    num_classes: classifier width.
    sizes: (H, W) inputs to compare on (batch 2 each).
    seed: seed of the random weights and images.
    bf16: also measure the Flax model under bf16 compute.
    **model_kwargs: SegFormer attributes (e.g. attention="chunked", query_chunk=64,
      fold_decoder=False).

  Returns:
    {"segformer_fp32_max_abs_diff", "segformer_bf16_max_abs_err" (if bf16),
     "segformer_logits_max_abs"} over all sizes.
  """
  import torch
  import transformers

  torch.manual_seed(seed)
  config = transformers.SegformerConfig(num_labels=num_classes, **SEGFORMER_HF_CONFIGS[variant])
  reference = transformers.SegformerForSemanticSegmentation(config)
  _randomize_and_calibrate(reference, sizes[0], seed)
  result = {"segformer_fp32_max_abs_diff": 0.0, "segformer_logits_max_abs": 0.0}
  if bf16:
    result["segformer_bf16_max_abs_err"] = 0.0
  rng = np.random.default_rng(seed)
  for dtype in ([jnp.float32, jnp.bfloat16] if bf16 else [jnp.float32]):
    model = segformer.SegFormer(num_classes, variant, dtype=dtype, **model_kwargs)
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    variables = conversion.convert_variables(
        _state_dict_numpy(reference), conversion.rename_segformer_hf, expected).variables
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    for height, width in sizes:
      images = rng.standard_normal((2, height, width, 3)).astype(np.float32)
      with torch.no_grad():
        want = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).logits.numpy()
      got = np.asarray(apply(variables, images)).transpose(0, 3, 1, 2)
      if got.shape != want.shape:
        raise AssertionError(f"logits shape {got.shape} != transformers' {want.shape}")
      err = float(np.max(np.abs(got - want)))
      key = "segformer_fp32_max_abs_diff" if dtype == jnp.float32 else "segformer_bf16_max_abs_err"
      result[key] = max(result[key], err)
      result["segformer_logits_max_abs"] = max(result["segformer_logits_max_abs"],
                                               float(np.max(np.abs(want))))
  return result


def resnet_parity(variant: str = "50", *, size: tuple[int, int] = (128, 160), seed: int = 0,
                  bf16: bool = True) -> dict[str, float]:
  """Max abs difference of the four stage outputs, Flax ResNet vs ResNetModel.

  Args:
    variant: "50" or "tiny" (key of RESNET_HF_CONFIGS).
    size: (H, W) of the input (batch 2).
    seed: seed of the random weights and images.
    bf16: also measure the Flax model under bf16 compute.

  Returns:
    {"resnet_fp32_max_abs_diff", "resnet_bf16_max_abs_err" (if bf16),
     "resnet_features_max_abs"}.
  """
  import torch
  import transformers

  torch.manual_seed(seed)
  reference = transformers.ResNetModel(transformers.ResNetConfig(**RESNET_HF_CONFIGS[variant]))
  _randomize_and_calibrate(reference, size, seed)
  images = np.random.default_rng(seed).standard_normal((2,) + tuple(size) + (3,)).astype(np.float32)
  with torch.no_grad():
    out = reference(torch.from_numpy(images.transpose(0, 3, 1, 2)), output_hidden_states=True)
  wants = [h.numpy().transpose(0, 2, 3, 1) for h in out.hidden_states[1:]]
  result = {"resnet_features_max_abs": float(max(np.max(np.abs(w)) for w in wants))}
  for dtype in ([jnp.float32, jnp.bfloat16] if bf16 else [jnp.float32]):
    model = resnet.ResNet(**resnet.RESNET_VARIANTS[variant], dtype=dtype)
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    variables = conversion.convert_variables(
        _state_dict_numpy(reference), conversion.rename_resnet_hf, expected).variables
    gots = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    err = max(float(np.max(np.abs(np.asarray(g, np.float32) - w))) for g, w in zip(gots, wants))
    result["resnet_fp32_max_abs_diff" if dtype == jnp.float32 else "resnet_bf16_max_abs_err"] = err
  return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--segformer", default="B0", choices=sorted(SEGFORMER_HF_CONFIGS),
                      help="MiT variant compared (default: B0)")
  parser.add_argument("--resnet", default="50", choices=sorted(RESNET_HF_CONFIGS),
                      help="ResNet variant compared (default: 50)")
  parser.add_argument("--num-classes", type=int, default=19)
  parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 measurements")
  parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict:
  start = time.perf_counter()
  result = {"segformer_variant": args.segformer, "resnet_variant": args.resnet}
  report.log(f"SegFormer-{args.segformer} vs transformers (inputs 128x128 and 96x160, batch 2)")
  result.update(segformer_parity(args.segformer, num_classes=args.num_classes, seed=args.seed,
                                 bf16=not args.no_bf16))
  report.log(f"ResNet-{args.resnet} vs transformers ResNetModel (input 128x160, batch 2)")
  result.update(resnet_parity(args.resnet, seed=args.seed, bf16=not args.no_bf16))
  result["parity_ok"] = bool(result["segformer_fp32_max_abs_diff"] < 1e-4
                             and result["resnet_fp32_max_abs_diff"] < 1e-4)
  result["seconds"] = round(time.perf_counter() - start, 1)
  return result
