"""Cross-entropy over labeled pixels, one term per label source.

The student predicts at H/4 x W/4; logits are upsampled bilinearly (half-pixel centres, as
PyTorch's `align_corners=False`) to the label size and each source's CE is averaged over that
source's own labeled pixels (255 = ignore) across the whole global batch. Sources arrive as a dict
so the SeSAM loss (`weak` + lambda1 `sam` + lambda2 `pseudo`) only adds entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sesam_jax.data.base import IGNORE_INDEX



class LabelSource(NamedTuple):
  """One supervision signal: labels BxHxW uint8/int (255 = no label here) and its loss weight.

  `pixel_weights` (BxHxW float, optional) weight each pixel's CE inside the source's mean, whose
  denominator stays the pixel count (e.g. weak and SAM labels merged into one map).
  """
  labels: jax.Array
  weight: float
  pixel_weights: jax.Array | None = None


def upsample_logits(logits_BhwK: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear resize of B x h x w x K logits to B x H x W x K (float32)."""
  b, _, _, k = logits_BhwK.shape
  return jax.image.resize(logits_BhwK.astype(jnp.float32), (b, *size, k), method="bilinear",
                          antialias=False)


def cross_entropy_sum(logits_BHWK: jax.Array, labels_BHW: jax.Array,
                      ignore_index: int = IGNORE_INDEX, weights_BHW: jax.Array | None = None
                      ) -> tuple[jax.Array, jax.Array]:
  """Summed CE over labeled pixels and their count.

  Args:
    logits_BHWK: float logits at label resolution.
    labels_BHW: integer class ids; `ignore_index` (and any id >= K) contributes nothing.
    ignore_index: the unlabeled value.
    weights_BHW: optional per-pixel weights of the CE (the count is not weighted).

  Returns:
    (sum of per-pixel CE, number of labeled pixels), both float32 scalars.
  """
  num_classes = logits_BHWK.shape[-1]
  labels = labels_BHW.astype(jnp.int32)
  valid = (labels != ignore_index) & (labels < num_classes)
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits_BHWK.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  if weights_BHW is not None:
    nll = nll * weights_BHW.astype(jnp.float32)
  return jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(valid.astype(jnp.float32))


def segmentation_loss(logits_BhwK: jax.Array, sources: Mapping[str, LabelSource],
                      ignore_index: int = IGNORE_INDEX) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of per-source mean CE, with per-source loss and coverage metrics.

  Args:
    logits_BhwK: student logits at H/4 x W/4 (any resolution; upsampled to the label size).
    sources: name -> LabelSource; all label maps share one B x H x W shape.
    ignore_index: the unlabeled value.

  Returns:
    (total loss, metrics): metrics hold `loss_<name>` (mean CE over that source's labeled
    pixels, 0 when it has none) and `coverage_<name>` (labeled fraction of all pixels).
  """
  if not sources:
    raise ValueError("segmentation_loss needs at least one label source.")
  size = next(iter(sources.values())).labels.shape[1:3]
  logits = upsample_logits(logits_BhwK, size)
  total = jnp.zeros((), jnp.float32)
  metrics = {}
  for name, source in sources.items():
    ce_sum, count = cross_entropy_sum(logits, source.labels, ignore_index, source.pixel_weights)
    mean = ce_sum / jnp.maximum(count, 1.0)  # a source with no pixels adds 0, never NaN
    total = total + source.weight * mean
    metrics[f"loss_{name}"] = mean
    metrics[f"coverage_{name}"] = count / source.labels.size
  return total, metrics
