"""The pure training step, jitted once over the data-parallel mesh.

Every step of `sesam_jax.methods` has the signature
`step(state, batch, rng, *, model, cfg) -> (state, metrics, aux)`: `metrics` are replicated
scalars, `aux` a dict of per-example device arrays (sharded like the batch) that the method's feed
reads back one step later (the SeSAM step's confident teacher labels; `{}` here). `jit_step`
compiles any of them the same way. Under `jit` with the batch sharded on "data" and the state
replicated, XLA inserts the gradient all-reduce; losses are means over the global batch, so 1 and
N devices compute the same thing. `train_step` is the supervised step (weak labels -> student
forward -> CE -> AdamW -> EMA); the teacher-student step (`sesam_step`) shares `update_student`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sesam_jax.data.base import IGNORE_INDEX
from sesam_jax.models import normalize_images
from sesam_jax.train import losses
from sesam_jax.train.optim import global_norm
from sesam_jax.train.train_state import TrainState, replicated


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the step (hashable; closed over by jit, never traced)."""
  lr_schedule: Callable[[Any], Any]   # backbone lr at a step, for the `lr` metric
  ema_decay: float = 0.999            # teacher = decay * teacher + (1 - decay) * student
  weak_weight: float = 1.0            # weight of the CE on the training labels
  ignore_index: int = IGNORE_INDEX


def normalize(images_BHWC: jax.Array) -> jax.Array:
  """uint8 images -> the student's float32 input (ImageNet mean/std of sesam_jax.models)."""
  return normalize_images(images_BHWC)


def ema_update(ema: Any, new: Any, decay: float) -> Any:
  """decay * ema + (1 - decay) * new, leaf by leaf, keeping each leaf's dtype."""
  return jax.tree.map(lambda e, n: (decay * e + (1.0 - decay) * n).astype(e.dtype), ema, new)


def update_student(state: TrainState, images: jax.Array, sources: Mapping[str, losses.LabelSource],
                   dropout_rng: jax.Array, *, model: nn.Module, ema_decay: float,
                   lr_schedule: Callable[[Any], Any], ignore_index: int = IGNORE_INDEX,
                   extra_loss: Callable[[jax.Array, jax.Array], tuple[jax.Array, dict]] | None
                   = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """Student forward on `images`, CE over `sources`, AdamW step, EMA update.

  Shared by the supervised step and the teacher-student step (`sesam_step`).

  Args:
    state: the current TrainState.
    images: BxHxWx3 float32 normalised student input.
    sources: name -> LabelSource (labels at label resolution, weight).
    dropout_rng: key for drop path / dropout.
    model: the student.
    ema_decay: teacher EMA decay.
    lr_schedule: for the `lr` metric.
    ignore_index: the unlabeled value.
    extra_loss: `(logits, features) -> (loss, metrics)` added to the CE (AGMM's losses); the
      student is then called with `return_features=True`.

  Returns:
    (new state, float32 scalar metrics).
  """
  def loss_fn(params: Any) -> tuple[jax.Array, tuple[Any, dict]]:
    kwargs = {} if extra_loss is None else {"return_features": True}
    outputs, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, images,
                                   train=True, mutable=["batch_stats"],
                                   rngs={"dropout": dropout_rng}, **kwargs)
    logits = outputs if extra_loss is None else outputs[0]
    loss, metrics = losses.segmentation_loss(logits, sources, ignore_index)
    if extra_loss is not None:
      extra, extra_metrics = extra_loss(logits, outputs[1])
      loss = loss + extra
      metrics.update(extra_metrics)
    return loss, (updates.get("batch_stats", {}), metrics)

  (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
      ema_params=ema_update(state.ema_params, params, ema_decay),
      ema_batch_stats=ema_update(state.ema_batch_stats, batch_stats, ema_decay))
  metrics.update(loss=loss, grad_norm=global_norm(grads), param_norm=global_norm(params),
                 update_norm=global_norm(updates), lr=lr_schedule(state.step))
  return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, *,
               model: nn.Module, cfg: StepConfig
               ) -> tuple[TrainState, dict[str, jax.Array], dict[str, jax.Array]]:
  """One supervised optimizer step on the batch's training labels.

  Args:
    state: the current TrainState.
    batch: "image" BxCxCx3 uint8, "weak" BxCxC uint8 (255 = unlabeled); other keys unused.
    rng: the run's base key; folded with the step so a resumed run draws the same keys.
    model: the student.
    cfg: static step settings.

  Returns:
    (new state, metrics, aux): scalar float32 metrics `loss`, `loss_weak`, `coverage_weak`,
    `grad_norm`, `param_norm`, `update_norm`, `lr`; no aux outputs (`{}`).
  """
  # The first half of the split is unused; kept so the key stream matches earlier releases.
  _, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
  sources = {"weak": losses.LabelSource(batch["weak"], cfg.weak_weight)}
  new_state, metrics = update_student(state, normalize(batch["image"]), sources, dropout_rng,
                                      model=model, ema_decay=cfg.ema_decay,
                                      lr_schedule=cfg.lr_schedule, ignore_index=cfg.ignore_index)
  return new_state, metrics, {}


def make_mesh(devices: list | None = None) -> Mesh:
  """A 1-D data-parallel mesh over `devices` (default: every device of every host)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def check_batch_size(global_batch: int, mesh: Mesh, what: str = "batch_size") -> None:
  """Fails early when the global batch does not split evenly across devices and hosts."""
  n = mesh.devices.size
  if global_batch % n or global_batch % jax.process_count():
    raise ValueError(f"config.{what}={global_batch} does not split across {n} devices "
                     f"({jax.process_count()} hosts); use a multiple of {n}, e.g. "
                     f"--config.{what}={max(n, global_batch // n * n)}.")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of batch arrays: leading (example) axis split over "data"."""
  return NamedSharding(mesh, P("data"))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host numpy batch (this host's examples) -> global jax arrays split over "data"."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def jit_step(step_fn: Callable, mesh: Mesh, state: TrainState) -> Callable:
  """A bound step `(state, batch, rng) -> (state, metrics, aux)` jitted over the mesh.

  The state is replicated and donated, the batch and every `aux` array are split over "data",
  metrics are replicated.

  Args:
    step_fn: a step with model and cfg already bound (`functools.partial`).
    mesh: the data mesh.
    state: a state (abstract is fine) whose structure fixes the state shardings.

  Returns:
    The jitted function.
  """
  state_sharding = jax.tree.map(lambda _: replicated(mesh), state)
  return jax.jit(step_fn,
                 in_shardings=(state_sharding, batch_sharding(mesh), replicated(mesh)),
                 out_shardings=(state_sharding, replicated(mesh), batch_sharding(mesh)),
                 donate_argnums=(0,))
