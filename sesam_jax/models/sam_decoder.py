"""SAM's prompt encoder and two-way-transformer mask decoder in Flax (with the IoU head and the
three multimask outputs). See `sesam_jax.models.sam` for the model and its tests."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sesam_jax.models.sam_common import (FINAL_LN_EPS, LABEL_NOT_A_POINT, LABEL_PAD, Dtype,
                                         SamSpec, _dense, _dense_init, _layer_norm)
from sesam_jax.models.sam_encoder import Mlp, PatchConv

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
