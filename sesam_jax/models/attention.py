"""Which attention implementation a model runs, chosen explicitly when the model is built.

The students (SegFormer's MiT) and the Flax SAM encoder each compute softmax(q k^T s + bias) v
in one of these forms, named by an `attention` argument that is fixed when the model is
created (from `config.attention`, a bench flag or a backend keyword), never from the backend
inside a traced function, so that a model lowered for another platform (`jax.export`) runs
the form chosen for that platform:

  chunked      queries a chunk at a time under `jax.checkpoint` (`lax.map`): the full
               score matrix never exists and the backward pass recomputes each chunk's.
               Fastest on XLA:CPU, whose caches it fits.
  full         the plain einsum form, the whole B x heads x T x S score matrix at once.
  dot_product  `jax.nn.dot_product_attention` with implementation=None (XLA's own
               attention; in jax 0.10 None still means XLA, not cuDNN); BTNH layout, so
               no transposes around it.
  cudnn        `jax.nn.dot_product_attention(implementation="cudnn")`: cuDNN's fused flash
               attention. GPU only, bfloat16/float16 only; the weights are never stored.
  auto         resolved by `resolve_attention` for a platform: chunked on CPU, dot_product
               on GPU and TPU. cuDNN is not an `auto` choice yet: no GPU has run it in this
               project (its shape limits could stop a run at compile time), so it is opt-in
               (`config.attention=cudnn`, `--attention cudnn`) until the device check has
               measured it against dot_product.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("chunked", "full", "dot_product", "cudnn")
CHOICES = IMPLEMENTATIONS + ("auto",)


def resolve_attention(name: str, *, platform: str | None = None, dtype: Any = jnp.float32,
                      field: str = "attention") -> str:
  """An attention name with "auto" replaced by the implementation best for `platform`.

  Args:
    name: one of CHOICES.
    platform: "cpu", "gpu" (or "cuda"/"rocm") or "tpu"; None: `jax.default_backend()` of
      this process, read here (once, when the model is built), not while tracing.
    dtype: the model's compute dtype (kept for when cuDNN, bfloat16/float16 only, joins
      `auto`).
    field: the flag or config field the name came from, for the error message.

  Returns:
    One of IMPLEMENTATIONS.

  Raises:
    ValueError: an unknown name, naming `field` and the choices.
  """
  if name not in CHOICES:
    raise ValueError(f"unknown attention implementation {name!r} for {field}; choose one of: "
                     f"{', '.join(CHOICES)}.")
  if name != "auto":
    return name
  platform = platform or jax.default_backend()
  if platform == "cpu":
    return "chunked"
  del dtype  # cuDNN (bfloat16/float16 only) joins `auto` once measured on a GPU.
  return "dot_product"


def check_implementation(name: str) -> None:
  """Raises a ValueError unless `name` is a resolved implementation (not "auto")."""
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"attention must be one of {', '.join(IMPLEMENTATIONS)} (resolve 'auto' "
                     f"with resolve_attention when the model is built), got {name!r}.")


def dot_product(q_BTNH: jax.Array, k_BSNH: jax.Array, v_BSNH: jax.Array,
                bias_BNTS: jax.Array | None = None, *, scale: float,
                implementation: str) -> jax.Array:
  """`jax.nn.dot_product_attention` for the "dot_product" and "cudnn" implementations.

  Args:
    q_BTNH, k_BSNH, v_BSNH: queries, keys, values (batch, tokens, heads, head dim).
    bias_BNTS: added to the scaled logits; any shape broadcastable to B x N x T x S.
    scale: the logits' scale.
    implementation: "dot_product" (XLA) or "cudnn".

  Returns:
    B x T x N x H, in q's dtype.
  """
  if bias_BNTS is not None:
    bias_BNTS = bias_BNTS.astype(q_BTNH.dtype)
  return jax.nn.dot_product_attention(
      q_BTNH, k_BSNH, v_BSNH, bias=bias_BNTS, scale=scale,
      implementation="cudnn" if implementation == "cudnn" else None)
