"""SAM's image encoder in Flax: the ViT (windowed and global attention with decomposed relative
position terms) and its neck. See `sesam_jax.models.sam` for the model and its tests."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sesam_jax.models import attention as attention_lib
from sesam_jax.models.sam_common import Dtype, SamSpec, _dense, _dense_init, _layer_norm

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


def _attend_grid_dot_product(q_BTNH: jax.Array, k_BTNH: jax.Array, v_BTNH: jax.Array,
                             rh_SSd: jax.Array, rw_SSd: jax.Array, size: int,
                             implementation: str) -> jax.Array:
  """`_attend_grid` through `jax.nn.dot_product_attention`, tokens T = S*S row-major, BTNH.

  The decomposed relative-position term q . Rh[row(q), row(k)] + q . Rw[col(q), col(k)] is
  its `bias` (B x N x T x T in the compute dtype); tokens stay in the layout the qkv
  projection gives and the output reshapes straight back to the grid (no transposes).
  """
  batch, _, heads, head_dim = q_BTNH.shape
  q_BSSNd = q_BTNH.reshape(batch, size, size, heads, head_dim)
  rel_row = jnp.einsum("brwnd,rkd->bnrwk", q_BSSNd, rh_SSd)
  rel_col = jnp.einsum("brwnd,wkd->bnrwk", q_BSSNd, rw_SSd)
  bias_BNTT = (rel_row[..., :, None] + rel_col[..., None, :]).reshape(
      batch, heads, size * size, size * size)
  return attention_lib.dot_product(q_BTNH, k_BTNH, v_BTNH, bias_BNTT, scale=head_dim ** -0.5,
                                   implementation=implementation)


class VisionAttention(nn.Module):
  """Multi-head self-attention of a ViT block, windowed (window > 0) or global.

  Windowed: the grid is zero-padded to whole windows after the block's LayerNorm (as
  SAM does); padded tokens' q/k/v are the qkv bias, so the projection runs on the
  unpadded tokens and the padding is added after it (same values, 16% fewer FLOPs
  for ViT-B's 64 -> 70 grid), and the output projection runs after unpartitioning.

  `attention` (see `sesam_jax.models.attention`, not "auto"): "chunked" (global blocks one
  head and `query_rows` query rows at a time, `_attend_grid`) or "full" (all at once), both
  with windows' relative terms folded into the logits matmul; "dot_product" / "cudnn":
  `jax.nn.dot_product_attention` with the relative terms as its bias.
  """
  num_heads: int
  window: int  # 0: global attention over the grid.
  grid: int
  dtype: Dtype = jnp.float32
  attention: str = "full"
  query_rows: int = 4

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
    rel_h = self.param("rel_pos_h", nn.initializers.zeros, (2 * size - 1, head_dim), jnp.float32)
    rel_w = self.param("rel_pos_w", nn.initializers.zeros, (2 * size - 1, head_dim), jnp.float32)
    rh_SSd = relative_positions(rel_h, size).astype(self.dtype)
    rw_SSd = relative_positions(rel_w, size).astype(self.dtype)
    attention_lib.check_implementation(self.attention)
    if self.attention in ("dot_product", "cudnn"):
      qkv = qkv.reshape(b, size * size, 3, heads, head_dim)
      out = _attend_grid_dot_product(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], rh_SSd, rw_SSd,
                                     size, self.attention).reshape(b, size, size, channels)
    else:
      qkv = qkv.reshape(b, size, size, 3, heads, head_dim).transpose(3, 0, 4, 1, 2, 5)
      rows = self.query_rows if self.attention == "chunked" and not self.window else 0
      out_BnSSd = _attend_grid(qkv[0], qkv[1], qkv[2], rh_SSd, rw_SSd, self.dtype, rows)
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
  attention: str = "full"
  query_rows: int = 4

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    y = _layer_norm("layer_norm1", self.dtype)(x_BHWC)
    y = VisionAttention(self.num_heads, self.window, self.grid, dtype=self.dtype,
                        attention=self.attention, query_rows=self.query_rows, name="attn")(y)
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
  attention: str = "full"  # An implementation, see VisionAttention.
  query_rows: int = 4  # Query rows per chunk of "chunked" (global blocks only).

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
                      attention=self.attention, query_rows=self.query_rows,
                      name=f"layers_{i}")(x)
    return Neck(s.prompt_dim, dtype=self.dtype, name="neck")(x)
