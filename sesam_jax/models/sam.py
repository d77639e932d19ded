"""Segment Anything (Kirillov et al. 2023) in Flax Linen: image and prompt encoders, mask decoder.

    model = Sam(sam_spec("vit_b"))                         # dtype=jnp.bfloat16 for bf16 compute
    emb_BhwC = model.apply(variables, pixels_BSS3, method=Sam.encode)          # B x 64 x 64 x 256
    logits_P3ss, iou_P3 = model.apply(variables, emb_1hwC, coords_PT2, labels_PT,
                                      method=Sam.decode)                        # s = 256

Image encoder: a ViT on SxS pixels (S = 1024): 16x16 patch embedding plus an absolute
position embedding, blocks with windowed attention (window 14, zero-padded to whole
windows) or global attention at the official block indices, each with decomposed
relative position terms, then the neck (1x1 conv, LayerNorm, 3x3 conv, LayerNorm) to a
(S/16)x(S/16)x256 embedding. Prompt encoder: a random-Fourier positional encoding of
point/box-corner coordinates plus a learned embedding per label; "not a point" padding;
a mask prompt is embedded by a small conv stack (else a learned "no mask" embedding).
Mask decoder: a two-way transformer between prompt tokens (IoU token, four mask tokens,
sparse prompts) and the image embedding, a 4x transposed-conv upscaling, hypernetwork
MLPs per mask token and an IoU head; the three multimask outputs are returned.

The math follows `transformers`' SamModel (parity-tested in tests/models/test_flax_sam.py),
including its layer-norm epsilons. Prompt tokens: per prompt set, T token slots with
(x, y) coordinates in the SxS input frame and a label (LABEL_*); slots with
`valid_PT == False` are masked out of every attention as keys, so padding a batch of
prompt sets to a common T gives exactly the unpadded result. (transformers' own padding,
label -10, instead adds zero tokens that are attended; LABEL_PAD reproduces it.)

Pre/post-processing are SAM's own, in numpy (`preprocess`, `mask_prompt`,
`upsample_matrices`): longest side resized to S (PIL bilinear), normalised, zero-padded
bottom/right; low-resolution (S/4)x(S/4) logits upsampled to the padded frame, cropped
to the resized image and resized to the image (bilinear, half-pixel centres).

Parameters are float32; `dtype` (encoder) and `decoder_dtype` select the compute dtype
(bf16: softmax, layer-norm statistics and positional encodings stay float32).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
from PIL import Image

from sesam_jax.models.sam_common import (LABEL_NOT_A_POINT, LABEL_PAD, PIXEL_MEAN, PIXEL_STD,
                                         SAM_VARIANTS, Dtype, SamSpec, sam_spec)
from sesam_jax.models.sam_decoder import MaskDecoder, PositionalEmbedding, PromptEncoder
from sesam_jax.models.sam_encoder import ImageEncoder, _attend_grid

# The sizes, labels and statistics live in sam_common; they are part of this module's API.
__all__ = ["LABEL_NOT_A_POINT", "LABEL_PAD", "PIXEL_MEAN", "PIXEL_STD", "SAM_VARIANTS", "Sam",
           "SamSpec", "init_params", "mask_prompt", "num_params", "param_shapes", "preprocess",
           "resized_size", "sam_spec", "upsample_logits", "upsample_matrices", "_attend_grid"]

class Sam(nn.Module):
  """Segment Anything: `encode` images once, `decode` prompt sets against an embedding.

  Attributes:
    spec: sizes (sam_spec(variant)).
    dtype: image-encoder compute dtype.
    decoder_dtype: prompt-encoder/mask-decoder compute dtype (None: `dtype`).
    attention: the image encoder's attention implementation (chunked, full, dot_product,
      cudnn; see `sesam_jax.models.attention`; the JAX backend resolves "auto").
    query_rows: global attention query rows per chunk of "chunked".
  """
  spec: SamSpec
  dtype: Dtype = jnp.float32
  decoder_dtype: Dtype | None = None
  attention: str = "full"
  query_rows: int = 4

  def setup(self):
    dec = self.decoder_dtype or self.dtype
    self.shared_image_embedding = PositionalEmbedding(self.spec.num_pos_feats)
    self.vision_encoder = ImageEncoder(self.spec, dtype=self.dtype, attention=self.attention,
                                       query_rows=self.query_rows)
    self.prompt_encoder = PromptEncoder(self.spec, dtype=dec)
    self.mask_decoder = MaskDecoder(self.spec, dtype=dec)

  def encode(self, pixels_BSS3: jax.Array) -> jax.Array:
    """Normalised, padded pixels (preprocess) -> B x g x g x C image embeddings."""
    return self.vision_encoder(pixels_BSS3)

  def image_pe(self) -> jax.Array:
    """1 x g x g x C positional encoding of the embedding grid's cell centres."""
    g = self.spec.grid
    centres = (np.arange(g, dtype=np.float32) + 0.5) / g
    xy_gg2 = np.stack(np.meshgrid(centres, centres, indexing="xy"), axis=-1)
    return self.shared_image_embedding(jnp.asarray(xy_gg2))[None]

  def decode(self, image_1hwC: jax.Array, coords_PT2: jax.Array, labels_PT: jax.Array,
             valid_PT: jax.Array | None = None,
             masks_Pss: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Three candidate masks per prompt set.

    Args:
      image_1hwC: one image's embedding (encode), 1 x g x g x C.
      coords_PT2: (x, y) per token in the S x S input frame (pixels of the resized image;
        the half-pixel shift is applied here). Box corners are tokens labelled 2 and 3.
      labels_PT: int32 LABEL_* / 0..3 per token.
      valid_PT: bool, False for padding slots (masked out); None = all valid.
      masks_Pss: optional mask prompts as (S/4) x (S/4) logits (mask_prompt), one per set.

    Returns:
      (P x 3 x (S/4) x (S/4) float32 low-resolution logits, P x 3 float32 IoU scores).
    """
    if valid_PT is None:
      valid_PT = jnp.ones(labels_PT.shape, bool)
    size = self.spec.image_size
    pe = self.shared_image_embedding((coords_PT2.astype(jnp.float32) + 0.5) / size)
    sparse = self.prompt_encoder.sparse(pe, labels_PT)
    sparse = jnp.where(valid_PT[..., None], sparse, 0.0)
    dense = self.prompt_encoder.dense(masks_Pss)
    return self.mask_decoder(image_1hwC, self.image_pe(), sparse, dense, valid_PT)

  def __call__(self, pixels_BSS3, coords_PT2, labels_PT, masks_Pss=None):
    """Encode one image and decode prompt sets against it (used to initialise parameters)."""
    emb = self.encode(pixels_BSS3)
    if masks_Pss is None:  # Create the mask-embedding parameters too.
      masks_Pss = jnp.zeros((coords_PT2.shape[0], self.spec.lowres, self.spec.lowres))
    return self.decode(emb[:1], coords_PT2, labels_PT, masks_Pss=masks_Pss)


def init_params(spec: SamSpec, seed: int = 0) -> dict:
  """Random float32 parameters ({"params": ...}) of a SAM of `spec`, for tests and timing.

  Drawn in numpy leaf by leaf (as the modules' initialisers would: normal(0.02) weights
  and tables, unit Fourier matrix, zero biases and position tables, unit norm scales):
  `Sam.init` would trace and compile the whole encoder first (~30 s for ViT-B on CPU).
  """
  rng = np.random.default_rng(seed)
  flat = {}
  for path, leaf in sorted(flax.traverse_util.flatten_dict(param_shapes(spec)["params"]).items()):
    name = path[-1]
    if name == "positional_embedding":
      value = rng.standard_normal(leaf.shape, np.float32)
    elif name == "scale":
      value = np.ones(leaf.shape)
    elif name in ("bias", "pos_embed", "rel_pos_h", "rel_pos_w"):
      value = np.zeros(leaf.shape)
    else:
      value = 0.02 * rng.standard_normal(leaf.shape, np.float32)
    flat[path] = value.astype(np.float32)
  return {"params": flax.traverse_util.unflatten_dict(flat)}


def param_shapes(spec: SamSpec) -> dict:
  """{"params": ...} of jax.ShapeDtypeStruct, without computing anything."""
  s = spec.image_size
  model = Sam(spec)
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, s, s, 3)),
                        jnp.zeros((1, 2, 2)), jnp.ones((1, 2), jnp.int32))


# ----------------------------------------------------------------------------
# Pre- and post-processing (numpy, host side): SAM's own letterbox.

def resized_size(hw: tuple[int, int], size: int) -> tuple[int, int]:
  """(h, w) of an image after its longest side is resized to `size` (official rounding)."""
  scale = size / max(hw)
  return int(hw[0] * scale + 0.5), int(hw[1] * scale + 0.5)


def preprocess(image_HW3: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
  """HxWx3 uint8 -> (S x S x 3 float32 normalised, zero-padded pixels; (h, w) inside them)."""
  if image_HW3.ndim != 3 or image_HW3.shape[2] != 3 or image_HW3.dtype != np.uint8:
    raise ValueError(f"image must be HxWx3 uint8, got {image_HW3.shape} {image_HW3.dtype}")
  h, w = resized_size(image_HW3.shape[:2], size)
  resized = np.asarray(Image.fromarray(image_HW3).resize((w, h), Image.BILINEAR))
  out = np.zeros((size, size, 3), np.float32)
  out[:h, :w] = (resized.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD
  return out, (h, w)


def mask_prompt(mask_HW: np.ndarray, resized_hw: tuple[int, int], size: int,
                mask_logit: float = 8.0) -> np.ndarray:
  """HxW bool region -> (S/4) x (S/4) float32 logits in the padded frame (SAM's mask input)."""
  h, w = resized_hw
  m = np.asarray(Image.fromarray(mask_HW.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
  padded = np.zeros((size, size), np.float32)
  padded[:h, :w] = m
  low = padded.reshape(size // 4, 4, size // 4, 4).mean(axis=(1, 3))
  return ((low * 2 - 1) * mask_logit).astype(np.float32)


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
  """out x in float64 matrix of torch's bilinear resize (align_corners=False, no antialias)."""
  src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  src = np.maximum(src, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  frac = src - i0
  m = np.zeros((out_size, in_size))
  np.add.at(m, (np.arange(out_size), i0), 1 - frac)
  np.add.at(m, (np.arange(out_size), i1), frac)
  return m


def upsample_matrices(lowres: int, size: int, resized_hw: tuple[int, int],
                      image_hw: tuple[int, int]) -> tuple[Any, Any]:
  """(Ry: H x rows, Rx: W x cols) sparse float32, masks_HW = Ry @ logits[:rows, :cols] @ Rx.T.

  SAM's post-processing (low-res -> S x S, crop to the resized image, -> H x W, all
  bilinear) is linear per axis; each composed row mixes at most three low-res rows, and
  the matrices read only the low-res rows and columns the image covers.
  """
  out = []
  for resized, full in zip(resized_hw, image_hw):
    to_padded = bilinear_matrix(size, lowres)[:resized]  # resized x lowres
    m = bilinear_matrix(full, resized) @ to_padded  # full x lowres
    used = int(np.max(np.nonzero(m.any(axis=0))[0])) + 1
    out.append(scipy.sparse.csr_matrix(m[:, :used].astype(np.float32)))
  return out[0], out[1]


def upsample_logits(logits_Nss: np.ndarray, ry_Hr: Any, rx_Wc: Any) -> np.ndarray:
  """N x s x s low-res logits -> N x H x W float32 logits of the image (upsample_matrices)."""
  rows, cols = ry_Hr.shape[1], rx_Wc.shape[1]
  x = np.asarray(logits_Nss, np.float32)[:, :rows, :cols]
  out = np.empty((len(x), ry_Hr.shape[0], rx_Wc.shape[0]), np.float32)
  for i, x_rc in enumerate(x):  # Sparse x dense products: ~3 multiply-adds per output pixel.
    out[i] = ry_Hr @ (rx_Wc @ x_rc.T).T
  return out


def num_params(variables: dict) -> int:
  return int(sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(variables)))
