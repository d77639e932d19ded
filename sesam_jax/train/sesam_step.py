"""The teacher-student step of FixMatch and SeSAM (paper, section 3.3).

  weak view (the pipeline's crop) --EMA teacher, stop_gradient--> pseudo-labels, confidence
  label sources on the weak view: weak > SAM > pseudo (confidence >= theta1)   [targets.py]
  strong view = CutMix(weak view, and every label map alike) + colour/grey/blur [strong_aug.py]
  student on the strong view; L = CE(weak) + lambda1 CE(SAM) + lambda2 CE(pseudo)

The step's `aux` output holds the teacher's *confident* labels (confidence >= theta2,
else 255) on the weak view, BxCxC uint8: the SAM feed maps them back to full
resolution to extend each image's weak label for its next SAM refresh. With
`confidence_aux` (sam.sampling=confidence, Table 4a) it also holds the teacher's
confidence quantised to uint8 (round(255 p), 0 on padding), which SAM's prompts are
then sampled by; only then, since it adds a BxCxC transfer to the host every step.

With `sam_precision` (weak labels made from the fine labels, which ride in the batch as
"label") the metrics hold `precision_sam`: the share of the SAM-supervised pixels (on the weak
view, before CutMix) whose SAM label matches the fine label.

The loss averages each source over its own pixels (weak + lambda1 SAM + lambda2 pseudo).
`merge_weak_sam` reads the paper's loss the other way: weak and SAM labels as one map
(weak where it has a label, else SAM) and one average over it, SAM pixels weighted
lambda1, so a crop with few weak pixels weighs them as little as their area.

FixMatch (`use_sam=False`) learns from weak + pseudo labels; SeSAM adds the batch's
"sam" labels. (`sesam_jax.methods` says which method uses which step.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sesam_jax.data.base import IGNORE_INDEX
from sesam_jax.train import losses, strong_aug, targets
from sesam_jax.train import train_step as step_lib
from sesam_jax.train.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class SesamStepConfig:
  """Static settings of the teacher-student step (paper defaults)."""
  lr_schedule: Callable[[Any], Any]        # backbone lr at a step, for the `lr` metric
  use_sam: bool = True                     # SeSAM: learn from batch["sam"]; FixMatch: not
  ema_decay: float = 0.999                 # teacher EMA decay (alpha)
  theta1: float = 0.96                     # pseudo-label confidence for the loss
  theta2: float = 0.98                     # confidence for extending the weak label
  lambda1: float = 1.0                     # weight of the SAM-label CE
  lambda2: float = 0.01                    # weight of the pseudo-label CE
  strong: strong_aug.StrongAugConfig = strong_aug.StrongAugConfig()
  ignore_index: int = IGNORE_INDEX
  confidence_aux: bool = False             # aux["confidence"]: uint8 teacher confidence
  merge_weak_sam: bool = False             # one CE average over weak and SAM pixels together
  sam_precision: bool = False              # batch["label"] is the fine label: log precision_sam


def teacher_predictions(state: TrainState, images_BHWC: jax.Array, *, model: nn.Module,
                        size: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
  """EMA teacher on the weak view: (class BxHxW int32, confidence BxHxW), no gradient."""
  logits = model.apply({"params": state.ema_params, "batch_stats": state.ema_batch_stats},
                       step_lib.normalize(images_BHWC), train=False)
  logits = losses.upsample_logits(jax.lax.stop_gradient(logits), size)
  return targets.pseudo_labels(logits)


def sesam_train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, *,
                     model: nn.Module, cfg: SesamStepConfig
                     ) -> tuple[TrainState, dict[str, jax.Array], dict[str, jax.Array]]:
  """One teacher-student optimizer step.

  Args:
    state: TrainState (its ema_* trees are the teacher).
    batch: "image" BxCxCx3 uint8 (weak view), "weak" BxCxC uint8 (255 = unlabeled),
      optionally "valid" BxCxC (0 = padding of the crop: no pseudo-label there), and
      with `cfg.use_sam` "sam" BxCxC uint8 (255 = no SAM label), with `cfg.sam_precision`
      "label" BxCxC uint8, the fine label (the pipeline's, cropped alike).
    rng: the run's base key (folded with the step).
    model: the student (and, with EMA weights, the teacher).
    cfg: SesamStepConfig.

  Returns:
    (new state, scalar metrics, aux): aux["confident"] is BxCxC uint8, the teacher's labels
    with confidence >= theta2 (255 elsewhere); with `cfg.confidence_aux`, aux["confidence"]
    is BxCxC uint8, round(255 * confidence) (0 on padding).
  """
  step_rng = jax.random.fold_in(rng, state.step)
  aug_rng, dropout_rng = jax.random.split(step_rng)
  size = batch["weak"].shape[1:3]
  pseudo, conf = teacher_predictions(state, batch["image"], model=model, size=size)
  if "valid" in batch:  # No pseudo-labels on the crop's padding.
    conf = jnp.where(batch["valid"] > 0, conf, -1.0)
  confident = jnp.where(conf >= cfg.theta2, pseudo, cfg.ignore_index).astype(jnp.uint8)
  sam = batch["sam"] if cfg.use_sam else None
  maps = targets.split_by_precedence(batch["weak"], sam, pseudo, conf, theta1=cfg.theta1)
  if sam is not None and cfg.sam_precision and "label" in batch:  # SAM pixels vs the fine label.
    extra_metrics = {"precision_sam": targets.precision(maps["sam"], batch["label"])}
  else:
    extra_metrics = {}
  images = batch["image"].astype(jnp.float32) / 255.0
  strong_images, maps = strong_aug.strong_augment(aug_rng, images, maps, cfg.strong)
  x = step_lib.normalize(strong_images * 255.0)
  sources = {"weak": losses.LabelSource(maps["weak"], 1.0),
             "pseudo": losses.LabelSource(maps["pseudo"], cfg.lambda2)}
  extra = {}
  if sam is not None and cfg.merge_weak_sam:
    has_weak = maps["weak"] != cfg.ignore_index
    merged = jnp.where(has_weak, maps["weak"], maps["sam"])
    sources["weak_sam"] = losses.LabelSource(merged, 1.0, jnp.where(has_weak, 1.0, cfg.lambda1))
    del sources["weak"]
    extra = {f"coverage_{k}": jnp.mean((maps[k] != cfg.ignore_index).astype(jnp.float32))
             for k in ("weak", "sam")}
  elif sam is not None:
    sources["sam"] = losses.LabelSource(maps["sam"], cfg.lambda1)

  new_state, metrics = step_lib.update_student(
      state, x, sources, dropout_rng, model=model, ema_decay=cfg.ema_decay,
      lr_schedule=cfg.lr_schedule, ignore_index=cfg.ignore_index)
  metrics.update(extra, **extra_metrics)
  metrics["teacher_confident"] = jnp.mean((confident != cfg.ignore_index).astype(jnp.float32))
  aux = {"confident": confident}
  if cfg.confidence_aux:
    aux["confidence"] = jnp.round(jnp.clip(conf, 0.0, 1.0) * 255.0).astype(jnp.uint8)
  return new_state, metrics, aux
