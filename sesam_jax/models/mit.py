"""Mix Transformer (MiT) encoder of SegFormer (Xie et al. 2021), in Flax Linen.

Four stages, each: an overlapping patch embedding (strided conv + LayerNorm),
transformer blocks with spatial-reduction attention (keys/values from a strided
conv of the tokens) and a Mix-FFN (Dense -> 3x3 depthwise conv -> GELU ->
Dense), then a LayerNorm. Submodule names follow `transformers`'
`SegformerModel` (stages_i/blocks_j/attention/q_proj, ...) so that weight
conversion is a renaming (see `conversion.py`).

Activations are NHWC throughout (BxHxWxC); attention flattens to BxNxC.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sesam_jax.models import attention as attention_lib

Dtype = Any

# Sizes of the published MiT encoders (SegFormer paper, table 6; `nvidia/mit-b*`),
# plus a tiny variant for fast tests. Every variant uses patch sizes (7, 3, 3, 3),
# strides (4, 2, 2, 2), spatial-reduction ratios (8, 4, 2, 1) and MLP ratio 4.
MIT_VARIANTS: dict[str, dict[str, Any]] = {
    "B0": dict(hidden_sizes=(32, 64, 160, 256), depths=(2, 2, 2, 2),
               num_heads=(1, 2, 5, 8), decoder_hidden_size=256),
    "B1": dict(hidden_sizes=(64, 128, 320, 512), depths=(2, 2, 2, 2),
               num_heads=(1, 2, 5, 8), decoder_hidden_size=256),
    "B2": dict(hidden_sizes=(64, 128, 320, 512), depths=(3, 4, 6, 3),
               num_heads=(1, 2, 5, 8), decoder_hidden_size=768),
    "B3": dict(hidden_sizes=(64, 128, 320, 512), depths=(3, 4, 18, 3),
               num_heads=(1, 2, 5, 8), decoder_hidden_size=768),
    "B4": dict(hidden_sizes=(64, 128, 320, 512), depths=(3, 8, 27, 3),
               num_heads=(1, 2, 5, 8), decoder_hidden_size=768),
    "B5": dict(hidden_sizes=(64, 128, 320, 512), depths=(3, 6, 40, 3),
               num_heads=(1, 2, 5, 8), decoder_hidden_size=768),
    "tiny": dict(hidden_sizes=(8, 16, 24, 32), depths=(1, 1, 1, 1),
                 num_heads=(1, 2, 3, 4), decoder_hidden_size=16),
}
PATCH_SIZES = (7, 3, 3, 3)
STRIDES = (4, 2, 2, 2)
SR_RATIOS = (8, 4, 2, 1)
MLP_RATIO = 4
# PyTorch's nn.LayerNorm default, which `transformers`' SegFormer uses everywhere.
LN_EPS = 1e-5


def default_dwconv_impl() -> str:
  """"shift" on CPU (XLA's depthwise conv is ~8x slower there, DESIGN.md), else "lax"."""
  return "shift" if jax.default_backend() == "cpu" else "lax"


# Queries per chunk of the "chunked" attention (see `attend`).
QUERY_CHUNK = 1024


def depthwise_conv3x3(x_BHWC: jax.Array, kernel_33IC: jax.Array, impl: str) -> jax.Array:
  """3x3 depthwise convolution, stride 1, zero padding 1 (PyTorch cross-correlation).

  Args:
    x_BHWC: input activations.
    kernel_33IC: 3x3x1xC kernel (flax's layout for feature_group_count=C).
    impl: "shift" (nine shifted multiply-adds: fast under XLA:CPU, where the
      grouped convolution is slow) or "lax" (lax.conv_general_dilated, for GPU).

  Returns:
    BxHxWxC output, no bias.
  """
  if impl == "lax":
    return lax.conv_general_dilated(
        x_BHWC, kernel_33IC, window_strides=(1, 1), padding=((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x_BHWC.shape[-1])
  if impl != "shift":
    raise ValueError(f"dwconv_impl must be 'shift' or 'lax', got {impl!r}.")
  _, height, width, _ = x_BHWC.shape
  padded = jnp.pad(x_BHWC, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = None
  for dy in range(3):
    for dx in range(3):
      term = padded[:, dy:dy + height, dx:dx + width, :] * kernel_33IC[dy, dx, 0]
      out = term if out is None else out + term
  return out


class DepthwiseConv3x3(nn.Module):
  """The Mix-FFN's 3x3 depthwise conv with bias; params `kernel` 3x3x1xC, `bias` C."""
  dtype: Dtype = jnp.float32
  impl: str = "shift"

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    channels = x_BHWC.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, 1, channels),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    x_BHWC = x_BHWC.astype(self.dtype)
    out = depthwise_conv3x3(x_BHWC, kernel.astype(self.dtype), self.impl)
    return out + bias.astype(self.dtype)


class DropPath(nn.Module):
  """Stochastic depth per example; active only with train=True and a "dropout" rng."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    # Without a "dropout" rng the caller asked for a deterministic step, so skip.
    if not train or self.rate == 0.0 or not self.has_rng("dropout"):
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


class OverlapPatchEmbed(nn.Module):
  """Strided conv with symmetric padding patch_size // 2, then LayerNorm."""
  hidden_size: int
  patch_size: int
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    pad = self.patch_size // 2
    x = nn.Conv(self.hidden_size, (self.patch_size, self.patch_size), strides=self.stride,
                padding=((pad, pad), (pad, pad)), dtype=self.dtype, name="proj")(x_BHWC)
    return nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="layer_norm")(x)


class SequenceReduction(nn.Module):
  """Keys/values from a sr x sr stride-sr conv of the tokens, then LayerNorm."""
  ratio: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    x = nn.Conv(x_BHWC.shape[-1], (self.ratio, self.ratio), strides=self.ratio, padding="VALID",
                dtype=self.dtype, name="sequence_reduction")(x_BHWC)
    return nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="layer_norm")(x)


def attend(q_BTNH: jax.Array, k_BSNH: jax.Array, v_BSNH: jax.Array, *, attention: str,
           query_chunk: int = QUERY_CHUNK) -> jax.Array:
  """softmax(q k^T / sqrt(d)) v, the softmax in float32, by the named implementation.

  Args:
    q_BTNH, k_BSNH, v_BSNH: queries, keys, values (batch, tokens, heads, head dim); the
      spatially reduced keys may be fewer than the queries (S <= T).
    attention: an implementation of `sesam_jax.models.attention` (not "auto"):
      "chunked": `query_chunk` queries at a time under `jax.checkpoint` (lax.map), so the
      BxNxTxS weights never exist whole and the backward pass recomputes them per chunk.
      On XLA:CPU this is ~2-4x faster for MiT's stage 1 at crop 512 (T=16384, S=256),
      which otherwise moves the 134 MB weight matrix through memory several times.
      "full": all queries at once. "dot_product" / "cudnn": `jax.nn.dot_product_attention`
      (XLA's, or cuDNN's fused flash attention: GPU, bf16/fp16, weights never stored).
    query_chunk: queries per chunk of "chunked".

  Returns:
    BxTxNxH.
  """
  attention_lib.check_implementation(attention)
  scale = q_BTNH.shape[-1] ** -0.5
  if attention in ("dot_product", "cudnn"):
    return attention_lib.dot_product(q_BTNH, k_BSNH, v_BSNH, scale=scale,
                                     implementation=attention)

  def one(q):
    logits = jnp.einsum("btnh,bsnh->bnts", q, k_BSNH) * scale
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    return jnp.einsum("bnts,bsnh->btnh", weights, v_BSNH)

  batch, tokens, heads, dim = q_BTNH.shape
  if attention == "full" or tokens <= query_chunk:
    return one(q_BTNH)
  num_chunks = -(-tokens // query_chunk)
  q = jnp.pad(q_BTNH, ((0, 0), (0, num_chunks * query_chunk - tokens), (0, 0), (0, 0)))
  q = jnp.moveaxis(q.reshape(batch, num_chunks, query_chunk, heads, dim), 1, 0)
  out = lax.map(jax.checkpoint(one), q)
  out = jnp.moveaxis(out, 0, 1).reshape(batch, num_chunks * query_chunk, heads, dim)
  return out[:, :tokens]


class EfficientAttention(nn.Module):
  """Multi-head self-attention whose keys/values are spatially reduced."""
  num_heads: int
  sr_ratio: int
  dtype: Dtype = jnp.float32
  attention: str = "full"
  query_chunk: int = QUERY_CHUNK

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    batch, height, width, channels = x_BHWC.shape
    head_dim = channels // self.num_heads
    dense = functools.partial(nn.Dense, channels, dtype=self.dtype)
    # Tokens stay in BxTxNxH (jax.nn.dot_product_attention's layout): no transposes.
    split = lambda t: t.reshape(batch, -1, self.num_heads, head_dim)
    q = split(dense(name="q_proj")(x_BHWC))
    kv_BhwC = x_BHWC
    if self.sr_ratio > 1:
      kv_BhwC = SequenceReduction(self.sr_ratio, dtype=self.dtype,
                                  name="sequence_reduction")(x_BHWC)
    k = split(dense(name="k_proj")(kv_BhwC))
    v = split(dense(name="v_proj")(kv_BhwC))
    out = attend(q, k, v, attention=self.attention, query_chunk=self.query_chunk)
    out = out.reshape(batch, height, width, channels)
    return dense(name="o_proj")(out)


class MixFFN(nn.Module):
  """Dense -> 3x3 depthwise conv -> exact GELU -> Dense."""
  hidden_features: int
  dtype: Dtype = jnp.float32
  dwconv_impl: str = "shift"

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    out_features = x_BHWC.shape[-1]
    x = nn.Dense(self.hidden_features, dtype=self.dtype, name="fc1")(x_BHWC)
    x = DepthwiseConv3x3(dtype=self.dtype, impl=self.dwconv_impl, name="dwconv")(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(out_features, dtype=self.dtype, name="fc2")(x)


class MiTBlock(nn.Module):
  """Pre-norm transformer block: x + attn(LN(x)); x + MixFFN(LN(x))."""
  num_heads: int
  sr_ratio: int
  mlp_ratio: int
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  dwconv_impl: str = "shift"
  attention: str = "full"
  query_chunk: int = QUERY_CHUNK

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    drop = DropPath(self.drop_path)
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="layernorm_before")(x_BHWC)
    y = EfficientAttention(self.num_heads, self.sr_ratio, dtype=self.dtype,
                           attention=self.attention, query_chunk=self.query_chunk,
                           name="attention")(y)
    x_BHWC = x_BHWC + drop(y, train)
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="layernorm_after")(x_BHWC)
    y = MixFFN(x_BHWC.shape[-1] * self.mlp_ratio, dtype=self.dtype,
               dwconv_impl=self.dwconv_impl, name="mlp")(y)
    return x_BHWC + drop(y, train)


class MiTStage(nn.Module):
  """Patch embedding, `depth` blocks, LayerNorm."""
  hidden_size: int
  depth: int
  num_heads: int
  patch_size: int
  stride: int
  sr_ratio: int
  drop_paths: Sequence[float]
  dtype: Dtype = jnp.float32
  dwconv_impl: str = "shift"
  attention: str = "full"
  query_chunk: int = QUERY_CHUNK

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    x = OverlapPatchEmbed(self.hidden_size, self.patch_size, self.stride, dtype=self.dtype,
                          name="patch_embeddings")(x_BHWC)
    for j in range(self.depth):
      x = MiTBlock(self.num_heads, self.sr_ratio, MLP_RATIO, drop_path=self.drop_paths[j],
                   dtype=self.dtype, dwconv_impl=self.dwconv_impl,
                   attention=self.attention, query_chunk=self.query_chunk,
                   name=f"blocks_{j}")(x, train)
    return nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="layer_norm")(x)


class MixTransformer(nn.Module):
  """MiT encoder; returns the four stage outputs (strides 4, 8, 16, 32), each BxhxwxC.

  Attributes:
    hidden_sizes, depths, num_heads: per-stage sizes (see MIT_VARIANTS).
    drop_path_rate: stochastic depth rising linearly to this rate over all blocks.
    dtype: compute dtype (parameters stay float32).
    dwconv_impl: "shift" or "lax", see `depthwise_conv3x3`.
    attention: attention implementation (not "auto"), see `attend`.
    query_chunk: queries per chunk of the "chunked" attention.
  """
  hidden_sizes: Sequence[int]
  depths: Sequence[int]
  num_heads: Sequence[int]
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  dwconv_impl: str = "shift"
  attention: str = "full"
  query_chunk: int = QUERY_CHUNK

  @nn.compact
  def __call__(self, images_BHWC: jax.Array, train: bool = False) -> list[jax.Array]:
    total = sum(self.depths)
    rates = [self.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    x = images_BHWC.astype(self.dtype)
    features = []
    start = 0
    for i, depth in enumerate(self.depths):
      x = MiTStage(self.hidden_sizes[i], depth, self.num_heads[i], PATCH_SIZES[i], STRIDES[i],
                   SR_RATIOS[i], tuple(rates[start:start + depth]), dtype=self.dtype,
                   dwconv_impl=self.dwconv_impl, attention=self.attention,
                   query_chunk=self.query_chunk, name=f"stages_{i}")(x, train)
      start += depth
      features.append(x)
    return features
