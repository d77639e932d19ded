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

The math follows `transformers`' SamModel (parity-tested in tests/test_flax_sam.py),
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

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Dtype = Any

# Encoder sizes of the official checkpoints (segment_anything/build_sam.py), and a tiny
# variant for tests that matches `sam_bridge`'s `random:tiny` (same code paths, 256 pixels).
SAM_VARIANTS: dict[str, dict[str, Any]] = {
    "vit_b": dict(encoder_width=768, encoder_depth=12, encoder_heads=12,
                  global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(encoder_width=1024, encoder_depth=24, encoder_heads=16,
                  global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(encoder_width=1280, encoder_depth=32, encoder_heads=16,
                  global_attn_indexes=(7, 15, 23, 31)),
    "tiny": dict(encoder_width=64, encoder_depth=2, encoder_heads=2, global_attn_indexes=(1,),
                 window_size=4, image_size=256),
}

# Prompt token labels. 0/1: background/foreground point; 2/3: box top-left/bottom-right corner.
LABEL_NOT_A_POINT = -1  # SAM's padding point after points without a box: a learned embedding.
LABEL_PAD = -10  # transformers' padding: a zero token that is still attended.
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
# transformers' SAM layer norms: 1e-6, except the decoder's final one (nn.LayerNorm default).
LN_EPS = 1e-6
FINAL_LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class SamSpec:
  """Sizes of one SAM. The defaults are ViT-B's; every official model shares the rest."""
  encoder_width: int = 768
  encoder_depth: int = 12
  encoder_heads: int = 12
  global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
  window_size: int = 14  # Windowed-attention side in patches.
  image_size: int = 1024  # S: the encoder's square input in pixels.
  patch_size: int = 16
  encoder_mlp_dim: int = 0  # 0: 4 x encoder_width.
  num_pos_feats: int = 128  # Random-Fourier features per sin/cos half.
  prompt_dim: int = 256  # Neck output = prompt and decoder width.
  mask_input_channels: int = 16
  decoder_depth: int = 2
  decoder_heads: int = 8
  decoder_mlp_dim: int = 2048
  iou_head_hidden_dim: int = 256
  iou_head_depth: int = 3
  num_multimask_outputs: int = 3

  @property
  def grid(self) -> int:
    """Side of the image embedding (S / 16)."""
    return self.image_size // self.patch_size

  @property
  def lowres(self) -> int:
    """Side of the low-resolution logits (S / 4)."""
    return 4 * self.grid

  @property
  def mlp_dim(self) -> int:
    return self.encoder_mlp_dim or 4 * self.encoder_width

  def to_dict(self) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "SamSpec":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
      raise ValueError(f"unknown SAM size fields {sorted(unknown)}")
    kw = dict(d)
    if "global_attn_indexes" in kw:
      kw["global_attn_indexes"] = tuple(int(i) for i in kw["global_attn_indexes"])
    return cls(**kw)


def sam_spec(variant: str, **overrides: Any) -> SamSpec:
  """The SamSpec of a SAM_VARIANTS entry, with field overrides."""
  if variant not in SAM_VARIANTS:
    raise ValueError(f"unknown SAM variant {variant!r}; choose one of: {', '.join(SAM_VARIANTS)}.")
  return SamSpec(**{**SAM_VARIANTS[variant], **overrides})


def _layer_norm(name: str, dtype: Dtype, eps: float = LN_EPS) -> nn.LayerNorm:
  # Two-pass variance as torch computes it: SAM's activations have large means.
  return nn.LayerNorm(epsilon=eps, dtype=dtype, use_fast_variance=False, name=name)


_dense_init = nn.initializers.normal(0.02)  # transformers' SAM init (initializer_range).


def _dense(features: int, name: str, dtype: Dtype, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=_dense_init, name=name)


# ----------------------------------------------------------------------------
# Image encoder.

class PatchConv(nn.Module):
  """A kxk stride-k convolution (non-overlapping patches) as one matmul; kernel k x k x I x O."""
  features: int
  patch: int
  dtype: Dtype = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x_BHWI: jax.Array) -> jax.Array:
    batch, height, width, cin = x_BHWI.shape
    k = self.patch
    kernel = self.param("kernel", _dense_init, (k, k, cin, self.features), jnp.float32)
    x = x_BHWI.astype(self.dtype).reshape(batch, height // k, k, width // k, k, cin)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, height // k, width // k, k * k * cin)
    out = x @ kernel.reshape(k * k * cin, self.features).astype(self.dtype)
    if self.use_bias:
      out = out + self.param("bias", nn.initializers.zeros, (self.features,),
                             jnp.float32).astype(self.dtype)
    return out


def relative_positions(rel_pos_Ld: jax.Array, size: int) -> jax.Array:
  """Relative position table (2*size-1) x d -> size x size x d, indexed [query, key].

  The table has exactly 2*size-1 rows in every SAM checkpoint (no interpolation).
  """
  idx = np.arange(size)[:, None] - np.arange(size)[None, :] + size - 1
  return rel_pos_Ld[idx]


def _attend_grid(q_BnSSd: jax.Array, k_BnSSd: jax.Array, v_BnSSd: jax.Array, rh_SSd: jax.Array,
                 rw_SSd: jax.Array, dtype: Dtype, query_rows: int) -> jax.Array:
  """Self-attention over an S x S grid with decomposed relative positions -> B x n x S x S x d.

  logits[q, k] = (q * scale) . k + q . Rh[row(q), row(k)] + q . Rw[col(q), col(k)].
  Small grids (windows, 2S <= d) fold the relative terms into the one logits matmul:
  queries gain the 2S values q . Rh[row(q), :], q . Rw[col(q), :] and keys the one-hot
  codes of their row and column (on CPU ~1.3x faster than adding the terms after).
  Large grids (global attention) add them; with `query_rows` > 0, one head and that many
  query rows at a time (0: all at once).
  """
  batch, heads, size, _, head_dim = q_BnSSd.shape
  n = size * size
  scale = head_dim ** -0.5
  k_BnNd = k_BnSSd.reshape(batch, heads, n, head_dim)
  v_BnNd = v_BnSSd.reshape(batch, heads, n, head_dim)
  rel_row = jnp.einsum("bnrwd,rkd->bnrwk", q_BnSSd, rh_SSd)
  rel_col = jnp.einsum("bnrwd,wkd->bnrwk", q_BnSSd, rw_SSd)
  if 2 * size <= head_dim:
    q_aug = jnp.concatenate([q_BnSSd * scale, rel_row, rel_col], -1).reshape(batch, heads, n, -1)
    eye = np.eye(size, dtype=np.float32)
    codes_N2S = np.concatenate([np.repeat(eye, size, axis=0), np.tile(eye, (size, 1))], -1)
    k_aug = jnp.concatenate(
        [k_BnNd, jnp.broadcast_to(jnp.asarray(codes_N2S, dtype), (batch, heads, n, 2 * size))], -1)
    logits = jnp.einsum("bnqd,bnkd->bnqk", q_aug, k_aug)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
    out = jnp.einsum("bnqk,bnkd->bnqd", weights, v_BnNd)
    return out.reshape(batch, heads, size, size, head_dim)

  def rows(q_BnRSd, rel_row_BnRSS, rel_col_BnRSS, k_BnNd, v_BnNd):
    b, h, r = q_BnRSd.shape[:3]
    logits = jnp.einsum("bnrwd,bnkd->bnrwk", q_BnRSd * scale, k_BnNd)
    logits = logits.reshape(b, h, r, size, size, size)
    logits = logits + rel_row_BnRSS[..., :, None] + rel_col_BnRSS[..., None, :]
    logits = logits.reshape(b, h, r, size, n)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
    return jnp.einsum("bnrwk,bnkd->bnrwd", weights, v_BnNd)

  if query_rows <= 0 or query_rows >= size or size % query_rows:
    return rows(q_BnSSd, rel_row, rel_col, k_BnNd, v_BnNd)
  # One head and `query_rows` query rows at a time: their logits (ViT-B: 4 x 64 x 4096
  # floats, 4 MB) stay in cache through the bias add, softmax and the value product.
  chunks = size // query_rows

  def head(a):
    q_BSSd, rr_BSSS, rc_BSSS, k_BNd, v_BNd = a
    split = lambda t: jnp.moveaxis(t.reshape(batch, chunks, query_rows, *t.shape[2:]), 1, 0)
    out = lax.map(lambda c: rows(c[0][:, None], c[1][:, None], c[2][:, None], k_BNd[:, None],
                                 v_BNd[:, None])[:, 0],
                  (split(q_BSSd), split(rr_BSSS), split(rc_BSSS)))
    return jnp.moveaxis(out, 0, 1).reshape(batch, size, size, head_dim)

  heads_first = lambda t: jnp.moveaxis(t, 1, 0)
  out = lax.map(head, tuple(map(heads_first, (q_BnSSd, rel_row, rel_col, k_BnNd, v_BnNd))))
  return jnp.moveaxis(out, 0, 1)


class VisionAttention(nn.Module):
  """Multi-head self-attention of a ViT block, windowed (window > 0) or global.

  Windowed: the grid is zero-padded to whole windows after the block's LayerNorm (as
  SAM does); padded tokens' q/k/v are the qkv bias, so the projection runs on the
  unpadded tokens and the padding is added after it (same values, 16% fewer FLOPs
  for ViT-B's 64 -> 70 grid), and the output projection runs after unpartitioning.
  """
  num_heads: int
  window: int  # 0: global attention over the grid.
  grid: int
  dtype: Dtype = jnp.float32
  query_rows: int = 0

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    batch, height, width, channels = x_BHWC.shape
    heads, head_dim = self.num_heads, channels // self.num_heads
    size = self.window or self.grid
    qkv_dense = _dense(3 * channels, "qkv", self.dtype)
    qkv = qkv_dense(x_BHWC)
    if self.window:
      bias = qkv_dense.variables["params"]["bias"].astype(qkv.dtype)
      padded = np.asarray(window_partition(np.zeros((batch, height, width, 1), bool), self.window,
                                           pad_value=True))
      qkv = jnp.where(padded, bias, window_partition(qkv, self.window))
    b = qkv.shape[0]
    qkv = qkv.reshape(b, size, size, 3, heads, head_dim).transpose(3, 0, 4, 1, 2, 5)
    rel_h = self.param("rel_pos_h", nn.initializers.zeros, (2 * size - 1, head_dim), jnp.float32)
    rel_w = self.param("rel_pos_w", nn.initializers.zeros, (2 * size - 1, head_dim), jnp.float32)
    rh_SSd = relative_positions(rel_h, size).astype(self.dtype)
    rw_SSd = relative_positions(rel_w, size).astype(self.dtype)
    out_BnSSd = _attend_grid(qkv[0], qkv[1], qkv[2], rh_SSd, rw_SSd, self.dtype,
                             0 if self.window else self.query_rows)
    out = out_BnSSd.transpose(0, 2, 3, 1, 4).reshape(b, size, size, channels)
    if self.window:
      out = window_unpartition(out, self.window, height, width)
    return _dense(channels, "proj", self.dtype)(out)


def window_partition(x_BHWC: Any, window: int, pad_value: Any = 0) -> Any:
  """B x H x W x C -> (B * nh * nw) x window x window x C, padded bottom/right (jax or numpy)."""
  batch, height, width, channels = x_BHWC.shape
  ph, pw = -height % window, -width % window
  xp = np if isinstance(x_BHWC, np.ndarray) else jnp
  x = xp.pad(x_BHWC, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=pad_value)
  nh, nw = (height + ph) // window, (width + pw) // window
  x = x.reshape(batch, nh, window, nw, window, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch * nh * nw, window, window, channels)


def window_unpartition(windows: jax.Array, window: int, height: int, width: int) -> jax.Array:
  """Inverse of window_partition: drops the padding."""
  nh, nw = -(-height // window), -(-width // window)
  channels = windows.shape[-1]
  x = windows.reshape(-1, nh, nw, window, window, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, nh * window, nw * window, channels)[:, :height, :width]


class VisionLayer(nn.Module):
  """Pre-norm ViT block: x + attn(LN(x)) (windowed unless window == 0); x + MLP(LN(x))."""
  num_heads: int
  window: int
  grid: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  query_rows: int = 0

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    y = _layer_norm("layer_norm1", self.dtype)(x_BHWC)
    y = VisionAttention(self.num_heads, self.window, self.grid, dtype=self.dtype,
                        query_rows=self.query_rows, name="attn")(y)
    x_BHWC = x_BHWC + y
    y = _layer_norm("layer_norm2", self.dtype)(x_BHWC)
    return x_BHWC + Mlp(self.mlp_dim, "gelu", dtype=self.dtype, name="mlp")(y)


class Mlp(nn.Module):
  """lin1 -> activation (exact GELU or ReLU) -> lin2."""
  hidden: int
  activation: str = "gelu"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = _dense(self.hidden, "lin1", self.dtype)(x)
    y = nn.gelu(y, approximate=False) if self.activation == "gelu" else nn.relu(y)
    return _dense(x.shape[-1], "lin2", self.dtype)(y)


class Neck(nn.Module):
  """1x1 conv -> LayerNorm -> 3x3 conv -> LayerNorm (no biases in the convs)."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype, kernel_init=_dense_init,
                name="conv1")(x_BHWC)
    x = _layer_norm("layer_norm1", self.dtype)(x)
    x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                kernel_init=_dense_init, name="conv2")(x)
    return _layer_norm("layer_norm2", self.dtype)(x)


class ImageEncoder(nn.Module):
  """SAM's ViT: B x S x S x 3 normalised pixels -> B x S/16 x S/16 x prompt_dim embedding."""
  spec: SamSpec
  dtype: Dtype = jnp.float32
  query_rows: int = 0  # See VisionAttention (global blocks only).

  @nn.compact
  def __call__(self, pixels_BSS3: jax.Array) -> jax.Array:
    s = self.spec
    x = PatchConv(s.encoder_width, s.patch_size, dtype=self.dtype, name="patch_embed")(pixels_BSS3)
    pos = self.param("pos_embed", nn.initializers.zeros, (1, s.grid, s.grid, s.encoder_width),
                     jnp.float32)
    x = x + pos.astype(self.dtype)
    for i in range(s.encoder_depth):
      window = 0 if i in s.global_attn_indexes else s.window_size
      x = VisionLayer(s.encoder_heads, window, s.grid, s.mlp_dim, dtype=self.dtype,
                      query_rows=self.query_rows, name=f"layers_{i}")(x)
    return Neck(s.prompt_dim, dtype=self.dtype, name="neck")(x)


# ----------------------------------------------------------------------------
# Prompt encoder.

class PositionalEmbedding(nn.Module):
  """Random-Fourier features of (x, y) in [0, 1]: [sin(2 pi (2c - 1) G), cos(...)], float32."""
  num_pos_feats: int

  @nn.compact
  def __call__(self, coords_N2: jax.Array) -> jax.Array:
    gaussian = self.param("positional_embedding", nn.initializers.normal(1.0),
                          (2, self.num_pos_feats), jnp.float32)
    c = 2 * coords_N2.astype(jnp.float32) - 1
    c = (2 * np.pi) * (c @ gaussian)
    return jnp.concatenate([jnp.sin(c), jnp.cos(c)], axis=-1)


class MaskEmbedding(nn.Module):
  """Mask prompt (S/4 x S/4 logits) -> S/16 x S/16 x prompt_dim dense embedding."""
  spec: SamSpec
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, masks_Pss1: jax.Array) -> jax.Array:
    ch = self.spec.mask_input_channels
    x = PatchConv(ch // 4, 2, dtype=self.dtype, name="conv1")(masks_Pss1)
    x = nn.gelu(_layer_norm("layer_norm1", self.dtype)(x), approximate=False)
    x = PatchConv(ch, 2, dtype=self.dtype, name="conv2")(x)
    x = nn.gelu(_layer_norm("layer_norm2", self.dtype)(x), approximate=False)
    return nn.Conv(self.spec.prompt_dim, (1, 1), dtype=self.dtype, kernel_init=_dense_init,
                   name="conv3")(x)


class PromptEncoder(nn.Module):
  """Sparse prompt tokens from their positional encodings and labels; dense mask embeddings."""
  spec: SamSpec
  dtype: Dtype = jnp.float32

  def setup(self):
    dim = self.spec.prompt_dim
    emb = lambda name: self.param(name, _dense_init, (1, dim), jnp.float32)
    # 0/1: background/foreground point; 2/3: box corners (transformers' point_embed.i).
    self.point_embed = [emb(f"point_embed_{i}") for i in range(4)]
    self.not_a_point_embed = emb("not_a_point_embed")
    self.no_mask_embed = emb("no_mask_embed")
    self.mask_embed = MaskEmbedding(self.spec, dtype=self.dtype)

  def sparse(self, pe_PTC: jax.Array, labels_PT: jax.Array) -> jax.Array:
    """Token embeddings (float32) of labelled coordinates, as transformers' _embed_points/_boxes."""
    labels = labels_PT[..., None]
    tokens = jnp.where(labels == LABEL_NOT_A_POINT, self.not_a_point_embed, pe_PTC)
    tokens = jnp.where(labels == LABEL_PAD, 0.0, tokens)
    for i, e in enumerate(self.point_embed):
      tokens = jnp.where(labels == i, tokens + e, tokens)
    return tokens

  def dense(self, masks_Pss: jax.Array | None) -> jax.Array:
    """Dense embeddings: P x g x g x C from mask prompts, or 1 x 1 x 1 x C "no mask"."""
    if masks_Pss is None:
      return self.no_mask_embed.reshape(1, 1, 1, -1)
    return self.mask_embed(masks_Pss[..., None])


# ----------------------------------------------------------------------------
# Mask decoder.

class DecoderAttention(nn.Module):
  """SAM's attention with downscaled internal width; inputs may share a leading dim of 1.

  q_PNC, k_PMC, v_PMC: leading dims broadcast (1 or P), so keys shared by all prompt sets
  are projected once. key_valid_PM masks keys out (padding tokens).
  """
  num_heads: int
  downsample_rate: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, q_PNC: jax.Array, k_PMC: jax.Array, v_PMC: jax.Array,
               key_valid_PM: jax.Array | None = None) -> jax.Array:
    channels = q_PNC.shape[-1]
    internal = channels // self.downsample_rate
    heads, head_dim = self.num_heads, internal // self.num_heads

    def split(t):  # P x N x internal -> P x heads x N x d
      return t.reshape(t.shape[0], t.shape[1], heads, head_dim).transpose(0, 2, 1, 3)

    q = split(_dense(internal, "q_proj", self.dtype)(q_PNC))
    k = split(_dense(internal, "k_proj", self.dtype)(k_PMC))
    v = split(_dense(internal, "v_proj", self.dtype)(v_PMC))
    logits = jnp.matmul(q, k.swapaxes(-1, -2)).astype(jnp.float32) * (head_dim ** -0.5)
    if key_valid_PM is not None:
      logits = jnp.where(key_valid_PM[:, None, None, :], logits, -1e30)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.matmul(weights, v)  # P x heads x N x d
    out = out.transpose(0, 2, 1, 3).reshape(out.shape[0], out.shape[2], internal)
    return _dense(channels, "out_proj", self.dtype)(out)


class TwoWayBlock(nn.Module):
  """Token self-attention, tokens -> image, MLP, image -> tokens (each + LayerNorm)."""
  spec: SamSpec
  skip_first_layer_pe: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, queries_PTC, keys_PMC, query_pe_PTC, key_pe_1MC, valid_PT):
    s = self.spec
    attn = lambda name, rate: DecoderAttention(s.decoder_heads, rate, dtype=self.dtype, name=name)
    if self.skip_first_layer_pe:
      queries_PTC = attn("self_attn", 1)(queries_PTC, queries_PTC, queries_PTC, valid_PT)
    else:
      q = queries_PTC + query_pe_PTC
      queries_PTC = queries_PTC + attn("self_attn", 1)(q, q, queries_PTC, valid_PT)
    queries_PTC = _layer_norm("layer_norm1", self.dtype)(queries_PTC)
    q = queries_PTC + query_pe_PTC
    k = keys_PMC + key_pe_1MC
    queries_PTC = queries_PTC + attn("cross_attn_token_to_image", 2)(q, k, keys_PMC)
    queries_PTC = _layer_norm("layer_norm2", self.dtype)(queries_PTC)
    queries_PTC = queries_PTC + Mlp(s.decoder_mlp_dim, "relu", dtype=self.dtype,
                                    name="mlp")(queries_PTC)
    queries_PTC = _layer_norm("layer_norm3", self.dtype)(queries_PTC)
    q = queries_PTC + query_pe_PTC
    k = keys_PMC + key_pe_1MC
    keys_PMC = keys_PMC + attn("cross_attn_image_to_token", 2)(k, q, queries_PTC, valid_PT)
    keys_PMC = _layer_norm("layer_norm4", self.dtype)(keys_PMC)
    return queries_PTC, keys_PMC


class FeedForward(nn.Module):
  """proj_in -> ReLU -> (layers_i -> ReLU)* -> proj_out (transformers' SamFeedForward)."""
  hidden: int
  out: int
  depth: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(_dense(self.hidden, "proj_in", self.dtype)(x))
    for i in range(self.depth - 2):
      x = nn.relu(_dense(self.hidden, f"layers_{i}", self.dtype)(x))
    return _dense(self.out, "proj_out", self.dtype)(x)


class ConvTranspose2x2(nn.Module):
  """Stride-2 2x2 transposed conv (non-overlapping), kernel 2 x 2 x I x O, as one matmul.

  ... x I -> ... x 2 x 2 x O: each input pixel's 2x2 output block stays in the trailing
  axes (a "blocked" layout), so a stack of these needs no depth-to-space copies; the
  caller interleaves the blocks once at the end.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", _dense_init, (2, 2, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    y = jnp.einsum("...i,abio->...abo", x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


class TwoWayTransformer(nn.Module):
  """`decoder_depth` two-way blocks, then a final token -> image attention + LayerNorm."""
  spec: SamSpec
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens_PTC, keys_PMC, key_pe_1MC, valid_PT):
    s = self.spec
    queries = tokens_PTC
    for i in range(s.decoder_depth):
      queries, keys_PMC = TwoWayBlock(s, i == 0, dtype=self.dtype, name=f"layers_{i}")(
          queries, keys_PMC, tokens_PTC, key_pe_1MC, valid_PT)
    q = queries + tokens_PTC
    k = keys_PMC + key_pe_1MC
    queries = queries + DecoderAttention(s.decoder_heads, 2, dtype=self.dtype,
                                         name="final_attn_token_to_image")(q, k, keys_PMC)
    return _layer_norm("layer_norm_final_attn", self.dtype, FINAL_LN_EPS)(queries), keys_PMC


class MaskDecoder(nn.Module):
  """Two-way transformer, upscaling, hypernetwork MLPs and IoU head -> 3 masks, 3 scores."""
  spec: SamSpec
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, image_1hwC: jax.Array, image_pe_1hwC: jax.Array, sparse_PTC: jax.Array,
               dense_Phwc: jax.Array, valid_PT: jax.Array) -> tuple[jax.Array, jax.Array]:
    s = self.spec
    dim, num_tokens = s.prompt_dim, s.num_multimask_outputs + 1
    iou_token = self.param("iou_token", _dense_init, (1, dim), jnp.float32)
    mask_tokens = self.param("mask_tokens", _dense_init, (num_tokens, dim), jnp.float32)
    num_sets = sparse_PTC.shape[0]
    out_tokens = jnp.broadcast_to(jnp.concatenate([iou_token, mask_tokens])[None],
                                  (num_sets, 1 + num_tokens, dim))
    tokens_PTC = jnp.concatenate([out_tokens, sparse_PTC], axis=1).astype(self.dtype)
    valid_PT = jnp.concatenate([jnp.ones((num_sets, 1 + num_tokens), bool), valid_PT], axis=1)
    _, h, w, _ = image_1hwC.shape
    # Image + dense prompt: 1 x hw x C when no set has a mask prompt, so that the first
    # block's token -> image keys and values are computed once for all sets.
    keys = (image_1hwC + dense_Phwc).astype(self.dtype)
    keys = keys.reshape(keys.shape[0], h * w, dim)
    key_pe = image_pe_1hwC.reshape(1, h * w, dim).astype(self.dtype)
    queries, keys = TwoWayTransformer(s, dtype=self.dtype, name="transformer")(
        tokens_PTC, keys, key_pe, valid_PT)
    keys = jnp.broadcast_to(keys, (num_sets, h * w, dim)).reshape(num_sets, h, w, dim)
    # 4x upscaling in the blocked layout: P x h x w x (a, b) x (c, d) x C/8, pixel
    # (4y + 2a + c, 4x + 2b + d); per-pixel LayerNorm and GELU do not care about the layout.
    x = ConvTranspose2x2(dim // 4, dtype=self.dtype, name="upscale_conv1")(keys)
    x = nn.gelu(_layer_norm("upscale_layer_norm", self.dtype)(x), approximate=False)
    x = nn.gelu(ConvTranspose2x2(dim // 8, dtype=self.dtype, name="upscale_conv2")(x),
                approximate=False)
    hyper = jnp.stack([FeedForward(dim, dim // 8, 3, dtype=self.dtype,
                                   name=f"output_hypernetworks_mlps_{i}")(queries[:, 1 + i])
                       for i in range(num_tokens)], axis=1)  # P x 4 x C/8
    # Multimask output: mask tokens 1..3 (token 0 is the single-mask output).
    logits = jnp.einsum("pmo,phwabcdo->pmhacwbd", hyper[:, 1:], x).astype(jnp.float32)
    logits_P3ss = logits.reshape(num_sets, num_tokens - 1, 4 * h, 4 * w)
    iou = FeedForward(s.iou_head_hidden_dim, num_tokens, s.iou_head_depth, dtype=self.dtype,
                      name="iou_prediction_head")(queries[:, 0])
    return logits_P3ss, iou[:, 1:].astype(jnp.float32)


class Sam(nn.Module):
  """Segment Anything: `encode` images once, `decode` prompt sets against an embedding.

  Attributes:
    spec: sizes (sam_spec(variant)).
    dtype: image-encoder compute dtype.
    decoder_dtype: prompt-encoder/mask-decoder compute dtype (None: `dtype`).
    query_rows: global attention query rows per chunk (0: unchunked).
  """
  spec: SamSpec
  dtype: Dtype = jnp.float32
  decoder_dtype: Dtype | None = None
  query_rows: int = 0

  def setup(self):
    dec = self.decoder_dtype or self.dtype
    self.shared_image_embedding = PositionalEmbedding(self.spec.num_pos_feats)
    self.vision_encoder = ImageEncoder(self.spec, dtype=self.dtype, query_rows=self.query_rows)
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
  import flax.traverse_util
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
  from PIL import Image
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
  from PIL import Image
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
  import scipy.sparse
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
