"""AdamW as SegFormer trains it: linear warm-up, poly decay, 10x lr on the head, selective decay.

Parameters are grouped by their top-level module name: a name containing one of `HEAD_KEYWORDS`
is the decode head (lr x `head_lr_mult`), everything else the backbone. Weight decay applies only
to kernels (ndim >= 2) outside norms and position terms, as mmseg's `paramwise_cfg` does
(`norm: decay_mult=0`, `pos_block: decay_mult=0`, biases undecayed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Substrings of a top-level parameter name that mark the decode head (SegFormer's all-MLP
# decoder, DeepLabV3+'s ASPP + decoder + classifier).
HEAD_KEYWORDS = ("head", "decoder", "decode", "aspp", "classifier", "low_level")
# Substrings of any path element that exempt a parameter from weight decay.
NO_DECAY_KEYWORDS = ("norm", "pos", "position", "bias", "scale", "bn")


def _key_name(entry: Any) -> str:
  return str(getattr(entry, "key", getattr(entry, "name", entry)))


def param_groups(params: Any) -> Any:
  """Labels every leaf "head" or "backbone" by its top-level module name.

  Args:
    params: the params pytree (arrays or ShapeDtypeStructs).

  Returns:
    A pytree of the same structure with "head" / "backbone" strings.
  """
  def label(path: tuple, _leaf: Any) -> str:
    top = _key_name(path[0]).lower() if path else ""
    return "head" if any(k in top for k in HEAD_KEYWORDS) else "backbone"
  return jax.tree_util.tree_map_with_path(label, params)


def decay_mask(params: Any) -> Any:
  """True where AdamW weight decay applies: kernels, not norms, biases or position terms."""
  def mask(path: tuple, leaf: Any) -> bool:
    names = [_key_name(p).lower() for p in path]
    return leaf.ndim >= 2 and not any(k in n for n in names for k in NO_DECAY_KEYWORDS)
  return jax.tree_util.tree_map_with_path(mask, params)


def lr_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up from 1e-6 * lr to lr, then poly decay (1 - t/T)^power to 0 at num_steps."""
  warmup = max(min(int(optim.warmup_steps), num_steps - 1), 0)
  decay = optax.polynomial_schedule(init_value=optim.lr, end_value=0.0, power=optim.poly_power,
                                    transition_steps=max(num_steps - warmup, 1))
  if warmup == 0:
    return decay
  ramp = optax.linear_schedule(init_value=optim.lr * 1e-6, end_value=optim.lr,
                               transition_steps=warmup)
  return optax.join_schedules([ramp, decay], boundaries=[warmup])


def make_optimizer(optim: ml_collections.ConfigDict, params: Any, num_steps: int
                   ) -> tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
  """Builds the AdamW transformation with head/backbone groups.

  Args:
    optim: the `config.optim` group (lr, weight_decay, b1, b2, warmup_steps, poly_power,
      head_lr_mult, grad_clip).
    params: the params pytree (abstract is fine): only its paths and ranks are read.
    num_steps: total optimizer steps (end of the poly decay).

  Returns:
    (tx, schedule): the transformation and the backbone lr schedule (for logging).
  """
  groups = param_groups(params)
  labels = set(jax.tree.leaves(groups))
  if optim.head_lr_mult != 1.0 and "head" not in labels:
    top = sorted({_key_name(p[0]) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]})
    raise ValueError(f"optim.head_lr_mult={optim.head_lr_mult} but no top-level parameter name "
                     f"({', '.join(top)}) contains one of {HEAD_KEYWORDS}; set "
                     "--config.optim.head_lr_mult=1 or rename the head module.")
  schedule = lr_schedule(optim, num_steps)
  mask = decay_mask(params)

  def adamw(mult: float) -> optax.GradientTransformation:
    return optax.adamw(lambda step: schedule(step) * mult, b1=optim.b1, b2=optim.b2,
                       weight_decay=optim.weight_decay, mask=mask)

  tx = optax.multi_transform({"backbone": adamw(1.0), "head": adamw(optim.head_lr_mult)}, groups)
  if optim.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx)
  return tx, schedule


def global_norm(tree: Any) -> jax.Array:
  """sqrt of the sum of squares over every leaf, in float32."""
  leaves = jax.tree.leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
