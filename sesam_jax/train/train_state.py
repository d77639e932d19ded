"""The train state: student params, optimizer state, batch stats, step, and the EMA teacher.

The EMA copy (`ema_params`, `ema_batch_stats`) is the SeSAM teacher: a second parameter tree
updated inside the jitted step. The state is built with `jax.eval_shape` (no memory) and then
materialised by one jit whose `out_shardings` place it replicated on the mesh, so large students
are never built on one device and copied.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sesam_jax.models.conversion import merge_pretrained


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; a pytree (the optimizer itself is a static field)."""
  step: jax.Array                 # int32 scalar: optimizer steps taken
  params: Any                     # student parameters
  batch_stats: Any                # student batch-norm statistics
  opt_state: optax.OptState       # AdamW moments etc.
  ema_params: Any                 # teacher = EMA of params
  ema_batch_stats: Any            # teacher batch-norm statistics (EMA of batch_stats)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)


def init_variables(model: nn.Module, rng: jax.Array, image_size: int) -> dict:
  """Initialises the model's variables on a 1 x S x S x 3 float32 input."""
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = model.init({"params": rng, "dropout": rng}, images, train=False)
  return dict(variables)


def _build(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
           image_size: int, pretrained: dict | None = None) -> TrainState:
  variables = init_variables(model, rng, image_size)
  if pretrained is not None:  # Converted weights over the fresh ones, before the EMA copy.
    variables, _ = merge_pretrained(variables, pretrained)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), ema_params=params, ema_batch_stats=batch_stats,
                    tx=tx)


def abstract_params(model: nn.Module, image_size: int = 64) -> Any:
  """The params pytree as ShapeDtypeStructs (no compute): for optimizer masks and checks."""
  return jax.eval_shape(lambda r: init_variables(model, r, image_size),
                        jax.random.key(0))["params"]


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of values every device holds whole (the state)."""
  return NamedSharding(mesh, P())


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                         image_size: int = 64) -> TrainState:
  """The state as ShapeDtypeStructs carrying the replicated sharding (orbax restore target)."""
  shapes = jax.eval_shape(lambda r: _build(model, tx, r, image_size), jax.random.key(0))
  sharding = replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       mesh: Mesh, image_size: int = 64, pretrained: dict | None = None
                       ) -> TrainState:
  """Initialises the state directly into its replicated sharding on `mesh`.

  Args:
    model: the student (a flax.linen Module with `train` and batch stats).
    tx: the optimizer.
    rng: init key.
    mesh: the device mesh with a "data" axis.
    image_size: side of the dummy init image (parameter shapes do not depend on it).
    pretrained: optional {"params": ..., "batch_stats": ...} subtrees (numpy) laid over the
      initialised variables before the optimizer state and the EMA copy are made
      (`sesam_jax.run.pretrained`); ValueError names a leaf the model lacks or shapes apart.

  Returns:
    The TrainState at step 0, EMA = student.
  """
  build = lambda r, p: _build(model, tx, r, image_size, p)
  shapes = jax.eval_shape(build, rng, pretrained)
  shardings = jax.tree.map(lambda _: replicated(mesh), shapes)
  return jax.jit(build, out_shardings=shardings)(rng, pretrained)
