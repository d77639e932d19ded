"""Flax SAM vs `transformers`' SamModel, same random weights (code we did not write).

A SamModel is built as `sam_bridge`'s `random:VARIANT` builds it, then every parameter is
redrawn: its init leaves position tables, layer-norm affines and biases at constants (a
wrong mapping could hide behind equal values) and the encoder's weights at 1e-10 (a
vanishing embedding). Weights get unit gain (std 1/sqrt(fan in)), the Fourier matrix
unit scale (a trained SAM's; transformers' init scales it by hidden/2, which turns
float32 rounding of the sin/cos argument into 1e-4 noise). The
state dict is converted with `sam_convert.convert_sam` and both models see the same
normalised pixels and prompts:

  points        P prompt sets of the same number of points (+ SAM's "not a point" pad)
  box           P boxes
  points_box    P sets of points plus a box
  mask          one mask prompt (transformers decodes one mask per image)
  padded        sets of 1..K points padded to K with transformers' label -10 (attended
                zero tokens), Flax given the same padded input
  masked_pad    the same sets, Flax padded with masked slots (what the JAX backend
                does), against transformers run on each set unpadded

Figures: max abs differences of image embeddings, IoU scores and low-res logits (fp32,
target 1e-4) and the agreement of full-size masks (SAM's upsampling) on pixels whose
reference logit exceeds 0.5 in magnitude; with `bf16`, the same errors of the Flax
model computing in bfloat16 (expected larger; keys end in `_bf16_err`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_bridge.backends.transformers_sam import RANDOM_VARIANTS
from sesam_jax.models import sam, sam_convert


def random_transformers_sam(variant: str, *, seed: int = 0, **vision_overrides: Any):
  """A `transformers` SamModel as sam_bridge's random:VARIANT, with every parameter randomised."""
  import torch
  from transformers import SamConfig, SamModel

  v = {**RANDOM_VARIANTS[variant], **vision_overrides}
  size = v.get("image_size", 1024)
  torch.manual_seed(seed)
  model = SamModel(SamConfig(vision_config=v, prompt_encoder_config=dict(image_size=size))).eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if name.endswith("positional_embedding"):
        p.copy_(noise)  # Unit-scale Fourier features (the tied copy is the same tensor).
      elif "rel_pos" in name or name.endswith("pos_embed"):
        p.copy_(0.1 * noise)
      elif "layer_norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.1 * noise)
      elif name.endswith("bias"):
        p.copy_(0.02 * noise)
      elif "embed" in name or "token" in name:  # Prompt and output-token tables.
        p.copy_(0.1 * noise)
      else:  # Linear / conv weights: unit-gain (transformers' vision init is 1e-10).
        fan_in = p.shape[0] if "upscale_conv" in name else int(np.prod(p.shape[1:]))
        p.copy_(noise / fan_in ** 0.5)
  return model


def state_dict_numpy(model) -> dict[str, np.ndarray]:
  return {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}


def _prompt_cases(rng: np.random.Generator, size: int, num_sets: int) -> dict[str, dict]:
  """Prompt inputs per case, in the SxS frame: transformers kwargs and Flax token arrays."""
  lo, hi = 0.05 * size, 0.6 * size  # Inside a letterboxed image's upper-left part.

  def pts(n):
    return rng.uniform(lo, hi, (num_sets, n, 2)).astype(np.float32)

  cases = {}
  p = pts(3)
  lab = rng.integers(0, 2, (num_sets, 3)).astype(np.int64)
  lab[:, 0] = 1
  cases["points"] = dict(
      hf=dict(input_points=p[None], input_labels=lab[None]),
      flax=(np.concatenate([p, np.zeros((num_sets, 1, 2), np.float32)], 1),
            np.concatenate([lab, -np.ones((num_sets, 1), np.int64)], 1)))
  xy0 = rng.uniform(lo, 0.4 * size, (num_sets, 2))
  xy1 = xy0 + rng.uniform(20, 0.3 * size, (num_sets, 2))
  boxes = np.concatenate([xy0, xy1], 1).astype(np.float32)
  corners = boxes.reshape(num_sets, 2, 2)
  corner_labels = np.tile(np.int64([2, 3]), (num_sets, 1))
  cases["box"] = dict(hf=dict(input_boxes=boxes[None]), flax=(corners, corner_labels))
  p2 = pts(2)
  lab2 = np.ones((num_sets, 2), np.int64)
  cases["points_box"] = dict(
      hf=dict(input_points=p2[None], input_labels=lab2[None], input_boxes=boxes[None]),
      flax=(np.concatenate([p2, corners], 1), np.concatenate([lab2, corner_labels], 1)))
  # Sets of 1..K points, padded to K with transformers' pad label -10 at (0, 0).
  k = 4
  counts = [1 + i % k for i in range(num_sets)]
  pp = pts(k)
  ll = np.ones((num_sets, k), np.int64)
  for i, c in enumerate(counts):
    pp[i, c:] = 0.0
    ll[i, c:] = -10
  cases["padded"] = dict(
      hf=dict(input_points=pp[None], input_labels=ll[None]),
      flax=(np.concatenate([pp, np.zeros((num_sets, 1, 2), np.float32)], 1),
            np.concatenate([ll, -np.ones((num_sets, 1), np.int64)], 1)),
      counts=counts)
  return cases


def sam_parity(variant: str = "tiny", *, seed: int = 0, num_sets: int = 4, bf16: bool = True,
               image_hw: tuple[int, int] = (90, 120), attention: str = "full",
               query_rows: int = 4,
               **vision_overrides: Any) -> dict[str, Any]:
  """Max abs differences Flax SAM vs transformers SamModel (see the module docstring).

  Args:
    variant: "tiny" or "vit_b" ("vit_l", "vit_h" work too, slowly).
    seed: weights, image and prompts.
    num_sets: prompt sets per batch.
    bf16: also run the Flax model in bfloat16 and report its errors.
    image_hw: the random image's size (letterboxed into SxS).
    attention: the Flax encoder's attention implementation (chunked, full, dot_product,
      cudnn; sesam_jax.models.attention).
    query_rows: the Flax global attention's query rows per chunk of "chunked".
    **vision_overrides: transformers vision-config fields (e.g. window_size=6, so that the
      tiny encoder's windows need zero padding as ViT-B's 64x64 grid does with 14).

  Returns:
    {"embedding_max_abs_diff", "iou_max_abs_diff", "logits_max_abs_diff" (fp32, over all
    cases), per-case "<case>_logits_max_abs_diff", "mask_agreement" (|logit| > 0.5),
    "logits_max_abs", and "*_bf16_err" with bf16}.
  """
  import torch

  ref = random_transformers_sam(variant, seed=seed, **vision_overrides)
  params, spec, _ = sam_convert.convert_sam(state_dict_numpy(ref))
  size = spec.image_size
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, (*image_hw, 3), dtype=np.uint8)
  pixels, resized_hw = sam.preprocess(image, size)
  pixels_t = torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy())
  cases = _prompt_cases(rng, size, num_sets)
  mask = np.zeros(image_hw, bool)
  mask[image_hw[0] // 4: image_hw[0] // 2, image_hw[1] // 5: image_hw[1] // 2] = True
  mask_in = sam.mask_prompt(mask, resized_hw, size)

  with torch.inference_mode():
    emb_t = ref.get_image_embeddings(pixels_t)
    want: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def run_hf(**kw):
      out = ref(image_embeddings=emb_t, multimask_output=True,
                **{k: torch.from_numpy(v) for k, v in kw.items()})
      return out.pred_masks[0].float().numpy(), out.iou_scores[0].float().numpy()

    for name, case in cases.items():
      want[name] = run_hf(**case["hf"])
    want["mask"] = run_hf(input_masks=mask_in[None, None])
    # Unpadded, one set at a time: what masked padding must reproduce.
    pp, ll = cases["padded"]["hf"]["input_points"][0], cases["padded"]["hf"]["input_labels"][0]
    singles = [run_hf(input_points=pp[i:i + 1, :c][None], input_labels=ll[i:i + 1, :c][None])
               for i, c in enumerate(cases["padded"]["counts"])]
    want["masked_pad"] = (np.concatenate([s[0] for s in singles]),
                          np.concatenate([s[1] for s in singles]))
  emb_want = emb_t.numpy().transpose(0, 2, 3, 1)

  result: dict[str, Any] = {"variant": variant, "image_hw": list(image_hw),
                            "attention": attention, "query_rows": query_rows,
                            "logits_max_abs": float(max(np.abs(w[0]).max() for w in want.values()))}
  for dtype in ([jnp.float32, jnp.bfloat16] if bf16 else [jnp.float32]):
    model = sam.Sam(spec, dtype=dtype, attention=attention, query_rows=query_rows)
    # Full float32 matmuls on GPU/TPU too (their default for f32 is TF32 / bf16 passes).
    precise = jax.default_matmul_precision("highest" if dtype == jnp.float32 else "default")
    encode = jax.jit(precise(lambda v, x: model.apply(v, x, method=sam.Sam.encode)))
    decode = jax.jit(precise(lambda v, e, c, l, valid, m: model.apply(v, e, c, l, valid, m,
                                                                      method=sam.Sam.decode)))
    emb = encode(params, pixels[None])
    # Every point/box case in one batch (one compiled shape): sets padded to a common
    # token count with masked slots, which must not change any set's result.
    batch = [(n, *c["flax"], np.ones(c["flax"][1].shape, bool)) for n, c in cases.items()]
    counts = cases["padded"]["counts"]
    k = max(counts)
    coords = np.zeros((num_sets, k + 1, 2), np.float32)
    labels = np.zeros((num_sets, k + 1), np.int64)
    valid = np.zeros((num_sets, k + 1), bool)
    for i, c in enumerate(counts):  # The backend's layout: points, "not a point", pads.
      coords[i, :c] = pp[i, :c]
      labels[i, :c] = ll[i, :c]
      labels[i, c] = sam.LABEL_NOT_A_POINT
      valid[i, :c + 1] = True
    batch.append(("masked_pad", coords, labels, valid))
    t_max = max(b[1].shape[1] for b in batch)
    pad = lambda a, v: np.concatenate(
        [a, np.full((a.shape[0], t_max - a.shape[1]) + a.shape[2:], v, a.dtype)], 1)
    logits, iou = decode(params, emb, np.concatenate([pad(b[1], 0) for b in batch]),
                         np.concatenate([pad(b[2], 0) for b in batch]).astype(np.int32),
                         np.concatenate([pad(b[3], False) for b in batch]), None)
    got = {b[0]: (np.asarray(logits[i * num_sets:(i + 1) * num_sets]),
                  np.asarray(iou[i * num_sets:(i + 1) * num_sets])) for i, b in enumerate(batch)}
    got["mask"] = decode(params, emb, np.zeros((1, 0, 2), np.float32), np.zeros((1, 0), np.int32),
                         None, mask_in[None])
    suffix = "_max_abs_diff" if dtype == jnp.float32 else "_bf16_err"
    result["embedding" + suffix] = float(np.abs(np.asarray(emb, np.float32) - emb_want).max())
    result["iou" + suffix] = float(max(np.abs(np.asarray(got[n][1]) - want[n][1]).max()
                                       for n in want))
    for n in want:
      result[f"{n}_logits{suffix}"] = float(np.abs(np.asarray(got[n][0]) - want[n][0]).max())
    result["logits" + suffix] = max(result[f"{n}_logits{suffix}"] for n in want)
    # Full-size masks: SAM's upsampling, ours (matrices) vs transformers' F.interpolate.
    ry, rx = sam.upsample_matrices(spec.lowres, size, resized_hw, image_hw)
    agree, counted = 0, 0
    for n in want:
      w = torch.from_numpy(want[n][0])
      ref_up = _upsample_logits_torch(w, resized_hw, image_hw, size)
      low = np.asarray(got[n][0]).reshape(-1, spec.lowres, spec.lowres)
      ours = sam.upsample_logits(low, ry, rx)
      sure = np.abs(ref_up.reshape(ours.shape)) > 0.5
      agree += int(((ours > 0) == (ref_up.reshape(ours.shape) > 0))[sure].sum())
      counted += int(sure.sum())
    result["mask_agreement" + ("" if dtype == jnp.float32 else "_bf16")] = agree / max(counted, 1)
  result["parity_ok"] = bool(max(result["embedding_max_abs_diff"], result["iou_max_abs_diff"],
                                 result["logits_max_abs_diff"]) < 1e-4
                             and result["mask_agreement"] >= 0.9999)
  return result


def _upsample_logits_torch(logits, resized_hw, image_hw, size) -> np.ndarray:
  """The official Sam.postprocess_masks (logits, not thresholded): low-res -> SxS -> crop -> HxW."""
  import torch.nn.functional as F
  x = logits.reshape(-1, 1, *logits.shape[-2:])
  x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
  x = x[..., :resized_hw[0], :resized_hw[1]]
  x = F.interpolate(x, image_hw, mode="bilinear", align_corners=False)
  return x[:, 0].numpy()
