"""SAM through `transformers`, frozen, in inference mode: SamModel (SAM ViT-B/L/H),
SamHQModel, Sam2Model (SAM 2.1) and Sam3TrackerModel (SAM 3's promptable tracker).

SAM and SAM-HQ ("letterbox" family): pre/post-processing follows the official
predictor exactly: the longest side is
resized to the encoder size (PIL bilinear on uint8, as torchvision does on PIL
images), pixels normalised with SAM's mean/std and zero-padded bottom/right to a
square; low-resolution logits are upsampled to the padded size, cropped, resized
to the image size and thresholded at 0. SAM 2 / SAM 3 tracker ("square" family):
the image is resized to SxS, scaled to [0, 1] and normalised with ImageNet
mean/std, as their image processors do; low-resolution logits are resized straight
to the image size. The image embedding is computed once in `set_image` and reused
for every prompt batch.
"""

from __future__ import annotations

import itertools
import json
import pathlib
from typing import Sequence

import numpy as np
from PIL import Image

from sam_bridge import weights
from sam_bridge.api import LowResPrediction, Prediction, PromptSet, SamSetupError
from sam_bridge.backends.sam_convert import convert_official_sam, sam_config_from_official

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# config.json model_type -> (transformers class name, preprocessing family).
MODEL_TYPES = {"sam": ("SamModel", "letterbox"), "sam_hq": ("SamHQModel", "letterbox"),
               "sam2": ("Sam2Model", "square"), "sam3_tracker": ("Sam3TrackerModel", "square")}

# Randomly initialised variants for tests and benchmarks: encoder width/depth/heads/global blocks.
RANDOM_VARIANTS = {
    "vit_b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "vit_l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, global_attn_indexes=[5, 11, 17, 23]),
    "vit_h": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31]),
    # Not a SAM size: a few-second model for tests (same code paths, 256-pixel input).
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=[1],
                 window_size=4, image_size=256),
}


def resize_longest(image: np.ndarray, target: int) -> np.ndarray:
  """HxWx3 uint8 -> hxwx3 uint8 with max(h, w) == target (official ResizeLongestSide)."""
  h, w = image.shape[:2]
  scale = target / max(h, w)
  nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
  return np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))


def _torch_dtype(dtype: str):
  import torch
  table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
  if dtype not in table:
    raise ValueError(f"unknown dtype {dtype!r}; choose float32 or bfloat16")
  return table[dtype]


class TransformersSamBackend:
  """A frozen `transformers` SamModel as a Backend.

  Args:
    model: a SamModel (weights loaded).
    name: what it is, for reports (e.g. "transformers:sam_vit_b" or "random:vit_b (random weights)").
    device: torch device string.
    dtype: "float32" or "bfloat16".
    batch_size: prompt sets per decoder call; None = 4 on CPU (measured on one thread: the
      per-prompt-set cost grows with the batch there, ~100 ms at 2-4 vs ~125-145 ms at
      8-16 for ViT-B, as each prompt set's 64x64x256 activations stop fitting in cache),
      64 elsewhere (one call for a typical image's instances).
    mask_logit: magnitude of the logits a binary mask prompt is turned into.
    decoder_dtype: dtype of the prompt encoder and mask decoder if not `dtype`
      ("bfloat16" halves the decoder's time on CPU, whose cost is mostly memory
      traffic over the 64x64x256 embedding repeated per prompt set); the image
      embedding is computed in `dtype` and cast.
    flush_denormal: on a CPU device, compute subnormal floats as zero (process-wide,
      `torch.set_flush_denormal`): SAM's zero-padded 1024x1024 input drives the ViT's
      activations into subnormals, which x86 CPUs compute ~10x slower (one CamVid image
      through ViT-B on one thread: 203 s without, 19.8 s with, on a Xeon with AVX-512).
  """

  is_oracle = False

  def __init__(self, model, *, name: str, device: str = "cpu", dtype: str = "float32",
               batch_size: int | None = None, mask_logit: float = 8.0,
               decoder_dtype: str | None = None, flush_denormal: bool = True):
    import torch
    self.name = name
    self.encoder_name = f"{name} [{dtype}]"  # Cache key: the decoder dtype is not part of it.
    self.device = torch.device(device)
    if self.device.type == "cpu" and flush_denormal:
      torch.set_flush_denormal(True)
    self.dtype = _torch_dtype(dtype)
    self.model = model.to(self.device, self.dtype).eval().requires_grad_(False)
    self.decoder_dtype = self.dtype if decoder_dtype is None else _torch_dtype(decoder_dtype)
    if self.decoder_dtype != self.dtype:
      for child_name, child in self.model.named_children():
        if child_name != "vision_encoder":  # Prompt encoder, mask decoder, positional embedding.
          child.to(self.decoder_dtype)
      self.name += f" (decoder {decoder_dtype})"
    self.batch_size = batch_size or (4 if self.device.type == "cpu" else 64)
    self.mask_logit = mask_logit
    self.model_type = model.config.model_type
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f"model_type {self.model_type!r} is not a SAM; supported: {sorted(MODEL_TYPES)}")
    self.family = MODEL_TYPES[self.model_type][1]
    size = model.config.prompt_encoder_config.image_size
    self.size = int(size if np.isscalar(size) else size[0])
    self._emb = None

  @classmethod
  def random(cls, variant: str = "vit_b", *, seed: int = 0, **kw) -> "TransformersSamBackend":
    """A randomly initialised SamModel of `variant` (RANDOM_VARIANTS); reported as random."""
    if variant not in RANDOM_VARIANTS:
      raise ValueError(f"unknown random SAM variant {variant!r}; choose from {sorted(RANDOM_VARIANTS)}")
    import torch
    from transformers import SamConfig, SamModel
    v = dict(RANDOM_VARIANTS[variant])
    size = v.get("image_size", 1024)
    torch.manual_seed(seed)
    model = SamModel(SamConfig(vision_config=v, prompt_encoder_config=dict(image_size=size)))
    return cls(model, name=f"random:{variant} (random weights, not a trained SAM)", **kw)

  @classmethod
  def from_path(cls, path: str, **kw) -> "TransformersSamBackend":
    """Loads a `transformers` weights directory or an official `sam_vit_*.pth` (converted)."""
    import torch
    p = pathlib.Path(path)
    if not p.exists():
      raise FileNotFoundError(f"{p}: no SAM weights there; give a transformers directory "
                              "(config.json + weights) or an official sam_vit_*.pth file")
    if p.is_file():
      from transformers import SamModel
      weights.check_weights(p, "transformers")  # One line for a file that cannot be SAM weights.
      try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
        model = SamModel(sam_config_from_official(sd))
      except Exception as e:  # torch's unpickler errors are pages long; the check above read it.
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise SamSetupError(f"SAM weights {p} cannot be loaded ({reason}); give an official "
                            "sam_vit_b/l/h_*.pth") from None
      missing, unexpected = model.load_state_dict(convert_official_sam(sd), strict=False)
      if missing or unexpected:
        raise SamSetupError(f"SAM weights {p} are not an official SAM checkpoint (missing "
                            f"{missing[:3]}, unexpected {unexpected[:3]}); give an official "
                            "sam_vit_b/l/h_*.pth")
      return cls(model, name=f"transformers:{p.name} (official, converted)", **kw)
    cfg_file = p / "config.json"
    if not cfg_file.exists():
      raise FileNotFoundError(f"{cfg_file} missing: save the model with save_pretrained()")
    model_type = json.loads(cfg_file.read_text()).get("model_type")
    if model_type not in MODEL_TYPES:
      raise ValueError(f"{cfg_file}: model_type {model_type!r}; this backend runs "
                       f"{', '.join(sorted(MODEL_TYPES))} checkpoints")
    import transformers
    model_cls = getattr(transformers, MODEL_TYPES[model_type][0])
    return cls(model_cls.from_pretrained(p), name=f"transformers:{p.name} ({model_type})", **kw)

  # --- Backend protocol ---

  def set_image(self, image: np.ndarray, *, fine_label: np.ndarray | None = None) -> None:
    """Encodes HxWx3 uint8 `image` once (fine_label is ignored)."""
    import torch
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
      raise ValueError(f"image must be HxWx3 uint8, got {image.shape} {image.dtype}")
    self.pixel_values, self.resized_hw = self.preprocess(image)
    self.image_hw = image.shape[:2]
    with torch.inference_mode():
      self._emb = self.model.get_image_embeddings(self.pixel_values.to(self.device, self.dtype))

  def image_state(self) -> dict[str, np.ndarray]:
    """Image embeddings (+ SAM-HQ's intermediate ViT embeddings) and sizes, float32 numpy."""
    if self._emb is None:
      raise RuntimeError("call set_image before image_state")
    state = {"image_hw": np.asarray(self.image_hw, np.int64),
             "resized_hw": np.asarray(self.resized_hw, np.int64)}
    if self.model_type == "sam_hq":  # (image embeddings, [intermediate ViT embeddings]).
      state["embeddings"] = self._emb[0].float().cpu().numpy()
      for i, t in enumerate(self._emb[1]):
        state[f"intermediate_{i}"] = t.float().cpu().numpy()
    elif isinstance(self._emb, (list, tuple)):  # SAM 2 / SAM 3 tracker: one map per level.
      for i, t in enumerate(self._emb):
        state[f"level_{i}"] = t.float().cpu().numpy()
    else:
      state["embeddings"] = self._emb.float().cpu().numpy()
    return state

  def load_image_state(self, state: dict[str, np.ndarray]) -> None:
    """Restores `image_state()`: no encoder call."""
    import torch

    def tensor(a):
      return torch.from_numpy(np.ascontiguousarray(a)).to(self.device, self.dtype)

    self.image_hw = tuple(int(v) for v in state["image_hw"])
    self.resized_hw = tuple(int(v) for v in state["resized_hw"])
    if self.model_type == "sam_hq":
      n = sum(k.startswith("intermediate_") for k in state)
      self._emb = (tensor(state["embeddings"]), [tensor(state[f"intermediate_{i}"]) for i in range(n)])
    elif "level_0" in state:
      self._emb = [tensor(state[f"level_{i}"]) for i in range(sum(k.startswith("level_") for k in state))]
    else:
      self._emb = tensor(state["embeddings"])

  def _embedding_kwargs(self) -> dict:
    def cast(x):
      return [cast(t) for t in x] if isinstance(x, (list, tuple)) else x.to(self.decoder_dtype)

    if self.model_type == "sam_hq":  # (image embeddings, intermediate ViT embeddings).
      return {"image_embeddings": cast(self._emb[0]), "intermediate_embeddings": cast(self._emb[1])}
    return {"image_embeddings": cast(self._emb)}

  def preprocess(self, image: np.ndarray):
    """HxWx3 uint8 -> (1x3xSxS float32 tensor, (h, w) size of the image inside it)."""
    import torch
    if self.family == "square":
      resized = np.asarray(Image.fromarray(image).resize((self.size, self.size), Image.BILINEAR))
      x = (resized.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
      return torch.from_numpy(x.transpose(2, 0, 1)[None].copy()), (self.size, self.size)
    resized = resize_longest(image, self.size)
    x = (resized.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD
    h, w = resized.shape[:2]
    padded = np.zeros((self.size, self.size, 3), np.float32)
    padded[:h, :w] = x
    return torch.from_numpy(padded.transpose(2, 0, 1)[None].copy()), (h, w)

  def predict(self, prompts: Sequence[PromptSet]) -> list[Prediction]:
    import torch
    out = self._run(prompts)
    if not out:
      return []
    masks = self.postprocess(torch.cat([t for t, _ in out]))  # N x 3 x H x W bool
    return [Prediction(masks[i], sc) for i, (_, sc) in enumerate(out)]

  def predict_lowres(self, prompts: Sequence[PromptSet]) -> list[LowResPrediction]:
    """Three candidates per prompt set as SAM's low-resolution logits (no upsampling)."""
    return [LowResPrediction(t[0].numpy(), sc) for t, sc in self._run(prompts)]

  def lowres_extent(self) -> tuple[float, float]:
    """Low-res rows/cols covered by the image (letterbox: the unpadded part)."""
    s = self.size // 4
    if self.family == "square":
      return float(s), float(s)
    return self.resized_hw[0] * s / self.size, self.resized_hw[1] * s / self.size

  def upsample(self, logits: np.ndarray) -> np.ndarray:
    """Nxsxs float32 low-res logits -> NxHxW bool, exactly as `predict` post-processes."""
    import torch
    if len(logits) == 0:
      return np.zeros((0, *self.image_hw), bool)
    return self.postprocess(torch.from_numpy(np.ascontiguousarray(logits, np.float32))[:, None])[:, 0]

  def _run(self, prompts: Sequence[PromptSet]):
    """[(1x3xsxs float32 CPU tensor of logits, 3 float32 scores)] per prompt set, batched."""
    if self._emb is None:
      raise RuntimeError("call set_image before predict")
    out: list = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: prompts[i].kind)
    for kind, group in itertools.groupby(order, key=lambda i: prompts[i].kind):
      idx = list(group)
      # Mask prompts carry one dense embedding each: decode them one at a time.
      step = 1 if kind[2] else self.batch_size
      for s in range(0, len(idx), step):
        chunk = idx[s:s + step]
        logits, scores = self._decode_lowres([prompts[i] for i in chunk])
        for b, i in enumerate(chunk):
          out[i] = (logits[b:b + 1], scores[b].astype(np.float32))
    return out

  # --- internals ---

  def _scale(self) -> float:
    return self.resized_hw[0] / self.image_hw[0], self.resized_hw[1] / self.image_hw[1]

  def _decode_lowres(self, batch: list[PromptSet]):
    """(Bx3xsxs float32 CPU logits, Bx3 float32 scores) for one batch of one prompt kind."""
    import torch
    sy, sx = self._scale()
    kw = {}
    n_points = len(batch[0].points)
    if n_points:
      pts = np.stack([p.points for p in batch]).astype(np.float32) * np.float32([sx, sy])
      # float32 even with a bf16 decoder: coordinates up to 1024 would round to 8 px in bf16;
      # the positional encoding normalises them to [-1, 1] first and casts after.
      kw["input_points"] = torch.from_numpy(pts[None]).to(self.device, torch.float32)
      kw["input_labels"] = torch.from_numpy(np.stack([p.point_labels for p in batch])[None].astype(np.int64)).to(self.device)
    if batch[0].box is not None:
      boxes = np.stack([p.box for p in batch]).astype(np.float32) * np.float32([sx, sy, sx, sy])
      kw["input_boxes"] = torch.from_numpy(boxes[None]).to(self.device, torch.float32)
    if batch[0].mask is not None:
      kw["input_masks"] = self._mask_input(batch[0].mask).to(self.device, self.decoder_dtype)
    with torch.inference_mode():
      res = self.model(multimask_output=True, **self._embedding_kwargs(), **kw)
    return res.pred_masks[0].float().cpu(), res.iou_scores[0].float().cpu().numpy()

  def postprocess(self, low_res) -> np.ndarray:
    """B x 3 x s x s logits -> B x 3 x H x W bool (official Sam.postprocess_masks, then > 0)."""
    import torch.nn.functional as F
    h, w = self.resized_hw
    out = []
    if self.family == "square":  # No padding: low-res logits map straight onto the image.
      for s in range(0, low_res.shape[0], 4):
        x = F.interpolate(low_res[s:s + 4], self.image_hw, mode="bilinear", align_corners=False)
        out.append((x > 0).cpu().numpy())
      return np.concatenate(out)
    # The official code upsamples to the padded SxS frame, then crops the image. Cropping the
    # low-res logits first (keeping one extra row/col: bilinear reads one neighbour) and
    # upsampling by the same factor gives the same values without the padding's work.
    f = self.size // low_res.shape[-1]
    rows, cols = min(low_res.shape[-2], -(-h // f) + 1), min(low_res.shape[-1], -(-w // f) + 1)
    low_res = low_res[..., :rows, :cols]
    for s in range(0, low_res.shape[0], 4):  # Chunks keep the upsample's memory small.
      x = F.interpolate(low_res[s:s + 4], (rows * f, cols * f), mode="bilinear", align_corners=False)
      x = F.interpolate(x[..., :h, :w], self.image_hw, mode="bilinear", align_corners=False)
      out.append((x > 0).cpu().numpy())
    return np.concatenate(out)

  def _mask_input(self, mask: np.ndarray):
    """HxW bool -> 1x1x(S/4)x(S/4) logits in the padded frame (SAM's mask input)."""
    import torch
    import torch.nn.functional as F
    h, w = self.resized_hw
    m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
    padded = np.zeros((self.size, self.size), np.float32)
    padded[:h, :w] = m
    low = F.avg_pool2d(torch.from_numpy(padded)[None, None], 4)
    return (low * 2 - 1) * self.mask_logit
