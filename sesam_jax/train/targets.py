"""The three label sources of SeSAM and their precedence (paper, section 3.3).

A pixel is supervised by at most one source: the weak label where it has one,
else the SAM label where it has one, else the teacher's pseudo-label where the
teacher's confidence is at least theta1. Each source's cross-entropy is then
averaged over its own pixels only, and the losses are summed with weights
(1, lambda1, lambda2); `loss.merge_weak_sam` instead averages weak and SAM pixels
together as one map (see `sesam_step`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sesam_jax.data.base import IGNORE_INDEX

SOURCES = ("weak", "sam", "pseudo")


def pseudo_labels(teacher_logits_BHWK: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Teacher argmax class (BxHxW int32) and its softmax confidence (BxHxW float32)."""
  probs = jax.nn.softmax(teacher_logits_BHWK.astype(jnp.float32), axis=-1)
  return jnp.argmax(probs, axis=-1).astype(jnp.int32), jnp.max(probs, axis=-1)


def split_by_precedence(weak: jax.Array, sam: jax.Array | None, pseudo: jax.Array | None,
                        confidence: jax.Array | None, *, theta1: float,
                        valid: jax.Array | None = None) -> dict[str, jax.Array]:
  """Per-source target maps with precedence weak > SAM > pseudo.

  Args:
    weak: BxHxW int, the weak label (255 = unlabeled).
    sam: BxHxW int SAM label (255 = none), or None when the method has no SAM.
    pseudo: BxHxW int teacher argmax, or None when the method has no teacher.
    confidence: BxHxW float teacher confidence (with `pseudo`).
    theta1: minimum confidence of a pseudo-label.
    valid: optional BxHxW bool; pixels outside it (padding) get no target.

  Returns:
    {"weak": ..., "sam": ..., "pseudo": ...} BxHxW int32 maps, each 255 except
    on the pixels that source supervises; absent sources are all 255.
  """
  weak = weak.astype(jnp.int32)
  if valid is not None:
    weak = jnp.where(valid, weak, IGNORE_INDEX)
  free = weak == IGNORE_INDEX
  out = {"weak": weak}
  if sam is not None:
    sam = sam.astype(jnp.int32)
    out["sam"] = jnp.where(free, sam, IGNORE_INDEX)
    if valid is not None:
      out["sam"] = jnp.where(valid, out["sam"], IGNORE_INDEX)
    free = free & (out["sam"] == IGNORE_INDEX)
  else:
    out["sam"] = jnp.full_like(weak, IGNORE_INDEX)
  if pseudo is not None:
    keep = free & (confidence >= theta1)
    if valid is not None:
      keep = keep & valid
    out["pseudo"] = jnp.where(keep, pseudo.astype(jnp.int32), IGNORE_INDEX)
  else:
    out["pseudo"] = jnp.full_like(weak, IGNORE_INDEX)
  return out


def coverage(targets: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Fraction of pixels each source supervises ("coverage/weak", ...)."""
  return {f"coverage/{name}": jnp.mean((t != IGNORE_INDEX).astype(jnp.float32))
          for name, t in targets.items()}


def precision(target: jax.Array, fine: jax.Array) -> jax.Array:
  """Share of a source's pixels whose label matches the fine label (float32 scalar).

  Args:
    target: BxHxW int, one source's map (`split_by_precedence`; 255 = not this source's).
    fine: BxHxW int, the fine label (255 = unlabelled: not judged).

  Returns:
    Matching pixels / pixels of `target` with a fine label; 0 when there is none.
  """
  target, fine = target.astype(jnp.int32), fine.astype(jnp.int32)
  judged = (target != IGNORE_INDEX) & (fine != IGNORE_INDEX)
  correct = jnp.sum((judged & (target == fine)).astype(jnp.float32))
  return correct / jnp.maximum(jnp.sum(judged.astype(jnp.float32)), 1.0)
