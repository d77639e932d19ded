"""AGMM (Wu et al., CVPR 2023): adaptive Gaussian mixture losses, in bounded memory.

The SeSAM paper's strongest competitor ("AGMM*" rows of Tables 1-2, Table 6), rebuilt from what
its public code (`Luffy03/AGMM-SASS`, `model/tools.py`, `train_voc.py`) computes; the formulas are
restated in `docs/agmm.md`. On top of the partial cross-entropy of the weak labels:

  prototypes   proto[b, k] = mean feature of crop b's pixels labelled k (0 if none)
  response     d[b, k, p] = mean_c |feat[b, p, c] - proto[b, k, c]| (0 for absent classes and
               padding cells), g = exp(-d^2) upsampled to the crop, times cls[b, k]
  gmm_loss     BCE(softmax(pred) * cls, g) over valid pixels + BCE(onehot(y), g) over labelled
               pixels, each averaged over the crop's present classes, then over those pixels
  proto_loss   exp(-(mean_c |V_i - V_j|)^2) over pairs of classes present in the batch (V: the
               batch prototype, the mean of the crops' prototypes)
  absence_loss -sum_k (1 - image_cls[b, k]) log(1 - softmax(pred)_k + 1e-6) over valid pixels,
               with the classes of the whole image's weak label (not only the crop's)

Where this follows the public code rather than the CVPR paper: the variance of every Gaussian
is 1 (the code's adaptive variance is commented out), the distance is the mean absolute (L1)
difference over channels rather than a Mahalanobis/L2 one, the GMM loss is the two binary
cross-entropies above (halved, eps 1e-6 inside the logs), the separation term and the class
absence term are the code's, and every weight is 1 by default (`config.agmm.*`). The optimiser
and schedule are this project's (AdamW, poly), as the SeSAM paper's re-implementation does.

Memory, beyond the public code (which broadcasts B x K x C x pixels at once, what makes it run
out of memory on ADE20K's 150 classes): the response is computed `class_chunk` classes at a time
in a `lax.scan` whose body is under `jax.checkpoint`, so the forward and the backward pass hold
B x chunk x C x h x w at most (`class_chunk=0` is the naive full broadcast, kept for tests and
the memory benchmark). Prototypes come from the label masks pooled to feature resolution (class
counts per stride-s cell, a scatter-add), not from features upsampled to the crop: this is the
mean of nearest-upsampled features over the labelled pixels (the public code upsamples
bilinearly). The padding mask at feature resolution takes every s-th pixel (nearest).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sesam_jax.data.base import IGNORE_INDEX
from sesam_jax.train import losses
from sesam_jax.train import train_step as step_lib
from sesam_jax.train.train_state import TrainState

EPS = 1e-6  # inside every log and in the prototype's denominator, as the public code
# Batch key of the per-example class-presence vector of the whole image's weak label, made on
# the host before the crop (`sesam_jax.data.input_pipeline`): B x 256 uint8, 1 = class present.
IMAGE_CLASSES_KEY = "weak_classes"


@dataclasses.dataclass(frozen=True)
class AgmmConfig:
  """AGMM's loss weights and the memory layout (hashable; static under jit)."""
  gmm_weight: float = 1.0       # weight of the GMM loss (its two BCE terms)
  proto_weight: float = 1.0     # weight of the prototype separation loss
  absence_weight: float = 1.0   # weight of the class-absence loss
  class_chunk: int = 4          # classes per scan iteration; 0 = the naive full broadcast


def label_counts(labels_BHW: jax.Array, num_classes: int, cell: int) -> jax.Array:
  """Labelled pixels of each class in each stride-`cell` cell: B x H/cell x W/cell x K float32.

  A scatter-add per example (vmapped, so a batch split over devices stays split); pixels with
  no class (255, or any id >= K) count nowhere.
  """
  height, width = labels_BHW.shape[1:]
  h, w = height // cell, width // cell
  labels = labels_BHW.astype(jnp.int32)
  rows = jnp.arange(height)[:, None] // cell
  cols = jnp.arange(width)[None, :] // cell
  flat = (rows * w + cols) * num_classes  # H x W: the cell's first class slot
  size = h * w * num_classes

  def one(labels_HW: jax.Array) -> jax.Array:
    index = jnp.where(labels_HW < num_classes, flat + labels_HW, size)  # size: dropped
    counts = jnp.zeros((size,), jnp.float32).at[index.reshape(-1)].add(1.0, mode="drop")
    return counts.reshape(h, w, num_classes)

  return jax.vmap(one)(labels)


def prototypes(counts_BhwK: jax.Array, features_BhwC: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(proto B x K x C: mean feature of each class's labelled pixels, 0 if none; cls B x K)."""
  n_BK = jnp.sum(counts_BhwK, axis=(1, 2))
  proto = jnp.einsum("bhwk,bhwc->bkc", counts_BhwK, features_BhwC,
                     precision=jax.lax.Precision.HIGHEST)
  return proto / (n_BK[..., None] + EPS), (n_BK > 0).astype(jnp.float32)


def prototype_separation(proto_BKC: jax.Array, cls_BK: jax.Array) -> jax.Array:
  """exp(-(mean_c |V_i - V_j|)^2) averaged over the pairs i < j of classes present in the batch
  (V_k: the mean of the prototypes of the crops holding class k); 0 with fewer than 2."""
  present = cls_BK.sum(0)
  v_KC = jnp.einsum("bk,bkc->kc", cls_BK, proto_BKC) / jnp.maximum(present, 1.0)[:, None]
  dist_KK = jnp.mean(jnp.abs(v_KC[:, None, :] - v_KC[None, :, :]), axis=-1)
  k = cls_BK.shape[1]
  pairs = (present[:, None] > 0) & (present[None, :] > 0) & jnp.triu(jnp.ones((k, k), bool), 1)
  total = jnp.sum(jnp.where(pairs, jnp.exp(-dist_KK ** 2), 0.0))
  return total / jnp.maximum(jnp.sum(pairs), 1)


def _chunk_sums(ids_c: jax.Array, logits_BhwK: jax.Array, lse_BHW: jax.Array,
                features_BhwC: jax.Array, proto_BKC: jax.Array, cls_BK: jax.Array,
                image_cls_BK: jax.Array, valid_cells_Bhw: jax.Array, labels_BHW: jax.Array,
                w1_BHW: jax.Array, w2_BHW: jax.Array, valid_BHW: jax.Array) -> jax.Array:
  """The GMM terms' and the absence loss's sums over the classes `ids_c` (ids >= K: padding).

  Returns:
    float32 [term 1 sum, term 2 sum, absence sum].
  """
  num_classes = logits_BhwK.shape[-1]
  height, width = labels_BHW.shape[1:]
  real = (ids_c < num_classes).astype(jnp.float32)
  safe = jnp.minimum(ids_c, num_classes - 1)
  cls_Bc = jnp.take(cls_BK, safe, axis=1) * real
  absent_Bc = (1.0 - jnp.take(image_cls_BK, safe, axis=1)) * real
  proto_BcC = jnp.take(proto_BKC, safe, axis=1)
  # The response at feature resolution: B x h x w x c x C at most, what the chunk bounds.
  d = jnp.mean(jnp.abs(features_BhwC[:, :, :, None, :] - proto_BcC[:, None, None]), axis=-1)
  d = d * cls_Bc[:, None, None, :] * valid_cells_Bhw[..., None]
  g = losses.upsample_logits(jnp.exp(-d ** 2), (height, width)) * cls_Bc[:, None, None, :]
  # softmax(pred) of these classes at label resolution (the logsumexp is over all classes).
  z = losses.upsample_logits(jnp.take(logits_BhwK, safe, axis=-1), (height, width))
  q = jnp.exp(z - lse_BHW[..., None])
  qm = q * cls_Bc[:, None, None, :]
  bce1 = -(g * jnp.log(qm + EPS) + (1.0 - g) * jnp.log(1.0 - qm + EPS)) / 2
  onehot = (labels_BHW[..., None] == ids_c).astype(jnp.float32)
  bce2 = -(onehot * jnp.log(g + EPS) + (1.0 - onehot) * jnp.log(1.0 - g + EPS)) / 2
  cls = cls_Bc[:, None, None, :]
  s1 = jnp.sum(w1_BHW[..., None] * cls * bce1)
  s2 = jnp.sum(w2_BHW[..., None] * cls * bce2)
  sa = jnp.sum(valid_BHW[..., None] * absent_Bc[:, None, None, :] * -jnp.log(1.0 - q + EPS))
  return jnp.stack([s1, s2, sa])


def agmm_losses(logits_BhwK: jax.Array, features_BhwC: jax.Array, labels_BHW: jax.Array,
                valid_BHW: jax.Array, image_classes_BK: jax.Array, *, class_chunk: int = 4
                ) -> dict[str, jax.Array]:
  """AGMM's losses beside the partial cross-entropy (formulas in the module docstring).

  Args:
    logits_BhwK: student logits at feature resolution (stride s), any float dtype.
    features_BhwC: the student's feature before its classifier, same h x w.
    labels_BHW: the crop's weak label (255 = unlabelled or padding), H = s * h, W = s * w.
    valid_BHW: 1 where the crop shows the image, 0 on its padding.
    image_classes_BK: 1 for the classes of the whole image's weak label.
    class_chunk: classes per checkpointed scan iteration; 0 = all at once (naive).

  Returns:
    float32 scalars "gmm_term1", "gmm_term2", "gmm" (their sum), "proto", "absence".
  """
  _, h, w, num_classes = logits_BhwK.shape
  height, width = labels_BHW.shape[1:]
  cell = height // h
  if height != cell * h or width != cell * w:
    raise ValueError(f"AGMM: labels {height}x{width} are not a whole multiple of the features "
                     f"{h}x{w}; use a crop divisible by the student's stride (4).")
  logits = logits_BhwK.astype(jnp.float32)
  features = features_BhwC.astype(jnp.float32)
  labels = labels_BHW.astype(jnp.int32)
  valid = (valid_BHW > 0).astype(jnp.float32)
  labelled = ((labels < num_classes) & (labels != IGNORE_INDEX)).astype(jnp.float32)
  counts = label_counts(labels, num_classes, cell)
  proto, cls = prototypes(counts, features)
  # Per-pixel weights: term 1 averages over the crop's present classes, then valid pixels;
  # term 2 the same over labelled pixels (a crop with no class adds 0).
  per_class = 1.0 / jnp.maximum(cls.sum(1), 1.0)[:, None, None]
  lse = jax.nn.logsumexp(losses.upsample_logits(logits, (height, width)), axis=-1)
  valid_cells = (valid_BHW[:, ::cell, ::cell] > 0).astype(jnp.float32)
  sums = functools.partial(
      _chunk_sums, logits_BhwK=logits, lse_BHW=lse, features_BhwC=features, proto_BKC=proto,
      cls_BK=cls, image_cls_BK=image_classes_BK.astype(jnp.float32),
      valid_cells_Bhw=valid_cells, labels_BHW=labels, w1_BHW=valid * per_class,
      w2_BHW=labelled * per_class, valid_BHW=valid)
  if class_chunk <= 0:
    total = sums(jnp.arange(num_classes))
  else:
    chunks = -(-num_classes // class_chunk)
    ids = jnp.arange(chunks * class_chunk).reshape(chunks, class_chunk)
    # Recomputed in the backward pass: only each chunk's input (its ids) is kept per iteration.
    body = jax.checkpoint(lambda ids_c: sums(ids_c), prevent_cse=False)
    total, _ = jax.lax.scan(lambda acc, ids_c: (acc + body(ids_c), None),
                            jnp.zeros((3,), jnp.float32), ids)
  n_valid = jnp.maximum(valid.sum(), 1.0)
  term1, term2 = total[0] / n_valid, total[1] / jnp.maximum(labelled.sum(), 1.0)
  return {"gmm_term1": term1, "gmm_term2": term2, "gmm": term1 + term2,
          "proto": prototype_separation(proto, cls), "absence": total[2] / n_valid}


@dataclasses.dataclass(frozen=True)
class AgmmStepConfig:
  """Static settings of the AGMM step."""
  lr_schedule: Callable[[Any], Any]
  agmm: AgmmConfig = AgmmConfig()
  ema_decay: float = 0.999      # the EMA copy is kept (evaluated as `val_miou_ema`), not used
  weak_weight: float = 1.0      # weight of the partial cross-entropy on the weak labels
  ignore_index: int = IGNORE_INDEX


def agmm_train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, *,
                    model: nn.Module, cfg: AgmmStepConfig
                    ) -> tuple[TrainState, dict[str, jax.Array], dict[str, jax.Array]]:
  """One AGMM optimizer step: partial CE + GMM + prototype separation + class absence.

  Args:
    state: the current TrainState.
    batch: "image" BxCxCx3 uint8, "weak" BxCxC uint8 (255 = unlabelled or padding), "valid"
      BxCxC uint8 (1 = inside the image), "weak_classes" Bx256 uint8 (classes of the whole
      image's weak label).
    rng: the run's base key (folded with the step).
    model: the student; called with `return_features=True`.
    cfg: static step settings.

  Returns:
    (new state, metrics, {}): the supervised step's metrics plus `agmm/gmm_loss`,
    `agmm/proto_loss`, `agmm/absence_loss` (unweighted).
  """
  _, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
  a = cfg.agmm

  def extra_loss(logits: jax.Array, features: jax.Array) -> tuple[jax.Array, dict]:
    image_classes = batch[IMAGE_CLASSES_KEY][:, :logits.shape[-1]]
    terms = agmm_losses(logits, features, batch["weak"], batch["valid"], image_classes,
                        class_chunk=a.class_chunk)
    loss = (a.gmm_weight * terms["gmm"] + a.proto_weight * terms["proto"]
            + a.absence_weight * terms["absence"])
    return loss, {"agmm/gmm_loss": terms["gmm"], "agmm/proto_loss": terms["proto"],
                  "agmm/absence_loss": terms["absence"]}

  sources = {"weak": losses.LabelSource(batch["weak"], cfg.weak_weight)}
  new_state, metrics = step_lib.update_student(
      state, step_lib.normalize(batch["image"]), sources, dropout_rng, model=model,
      ema_decay=cfg.ema_decay, lr_schedule=cfg.lr_schedule, ignore_index=cfg.ignore_index,
      extra_loss=extra_loss)
  return new_state, metrics, {}
