"""The training methods in one table: what differs between the paper's rows (Tables 1-2).

A method is its step function, its feed (what the host does around each step) and its work
before the first step; the loop (`sesam_jax.loop`) only looks them up here:

  method        step                               feed                   before step 0
  supervised    train_step (weak labels only)      pipeline batches       -
  fixmatch      teacher-student, no SAM labels     pipeline batches       -
  sam_baseline  train_step on pre-made SAM labels  pipeline batches       naive SAM labels, once
  sesam         teacher-student with SAM labels    + SAM labels (bank)    SAM pre-warm (feed)
  agmm          CE + AGMM's GMM losses (agmm.py)   pipeline batches       -

Every step is `step(state, batch, rng) -> (state, metrics, aux)` once its `make_step` has bound
the model and the static config (see `sesam_jax.train.train_step`). New methods are added with
`register(Method(...))`; nothing else changes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import ml_collections

from sesam_jax.data.feed import Feed
from sesam_jax.names import METHOD_NAMES, SAM_METHODS, WEAK_KINDS  # noqa: F401 (WEAK_KINDS)
from sesam_jax.sam.feed import make_sam_feed
from sesam_jax.sam.refine_labels import baseline_labels
from sesam_jax.train import agmm, sesam_step, strong_aug, train_step

# (model, config, lr schedule) -> step(state, batch, rng) -> (state, metrics, aux), unjitted.
StepFactory = Callable[[Any, ml_collections.ConfigDict, Callable], Callable]
# (config, iterator, train source, weak_fn, workdir) -> a `sesam_jax.data.feed.Feed`.
FeedFactory = Callable[..., Any]
# (config, train source, workdir) -> folder of `<id>.png` training labels replacing the weak ones.
LabelFactory = Callable[[ml_collections.ConfigDict, Any, str], str]


@dataclasses.dataclass(frozen=True)
class Method:
  """One training method.

  Attributes:
    name: the value of `config.method`.
    make_step: builds the step.
    make_feed: builds the feed (default: plain pipeline batches).
    make_labels: work before step 0 that makes the training labels (default: none).
    uses_sam: reads `config.sam` (its backend is checked before the run writes anything).
    description: one line for help texts.
  """
  name: str
  make_step: StepFactory
  make_feed: FeedFactory | None = None
  make_labels: LabelFactory | None = None
  uses_sam: bool = False
  description: str = ""

  def feed(self, config: ml_collections.ConfigDict, iterator: Any, source: Any, weak_fn: Any,
           workdir: str) -> Any:
    """The method's feed (plain pipeline batches unless `make_feed` says otherwise)."""
    if self.make_feed is None:
      return Feed(iterator)
    return self.make_feed(config, iterator, source, weak_fn, workdir)


def supervised_step(model: Any, config: ml_collections.ConfigDict, schedule: Callable) -> Callable:
  """The supervised step on the batch's training labels."""
  cfg = train_step.StepConfig(lr_schedule=schedule, ema_decay=float(config.ema_decay),
                              weak_weight=float(config.loss.weak_weight))
  return functools.partial(train_step.train_step, model=model, cfg=cfg)


def teacher_student_step(model: Any, config: ml_collections.ConfigDict, schedule: Callable, *,
                         use_sam: bool) -> Callable:
  """The FixMatch (use_sam=False) or SeSAM (use_sam=True) step."""
  t = config.teacher
  strong = strong_aug.StrongAugConfig(jitter_prob=t.jitter_prob, grayscale_prob=t.grayscale_prob,
                                      blur_prob=t.blur_prob, cutmix_prob=t.cutmix_prob)
  cfg = sesam_step.SesamStepConfig(
      lr_schedule=schedule, use_sam=use_sam, ema_decay=float(config.ema_decay), theta1=t.theta1,
      theta2=t.theta2, lambda1=t.lambda1, lambda2=t.lambda2, strong=strong,
      # SeSAM's refreshes sample prompts by the teacher's confidence (Table 4a): send it back.
      confidence_aux=use_sam and config.sam.sampling == "confidence",
      merge_weak_sam=bool(config.loss.merge_weak_sam),
      # Weak labels made from the fine labels: the batch's "label" is the fine label.
      sam_precision=use_sam and not config.weak_source)
  return functools.partial(sesam_step.sesam_train_step, model=model, cfg=cfg)


def agmm_step(model: Any, config: ml_collections.ConfigDict, schedule: Callable) -> Callable:
  """AGMM's step: partial CE + GMM + prototype separation + class absence (`config.agmm`)."""
  a = config.agmm
  cfg = agmm.AgmmStepConfig(
      lr_schedule=schedule, ema_decay=float(config.ema_decay),
      weak_weight=float(config.loss.weak_weight),
      agmm=agmm.AgmmConfig(gmm_weight=float(a.gmm_weight), proto_weight=float(a.proto_weight),
                           absence_weight=float(a.absence_weight),
                           class_chunk=int(a.class_chunk)))
  return functools.partial(agmm.agmm_train_step, model=model, cfg=cfg)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
  """Adds (or replaces) a method of the table; returns it."""
  METHODS[method.name] = method
  return method


register(Method("supervised", supervised_step,
                description="cross-entropy on the training labels alone"))
register(Method("fixmatch", functools.partial(teacher_student_step, use_sam=False),
                description="EMA teacher pseudo-labels on a strong view (FixMatch)"))
register(Method("sam_baseline", supervised_step, make_labels=baseline_labels, uses_sam=True,
                description="supervised on labels from SAM prompted naively with the weak labels"))
register(Method("sesam", functools.partial(teacher_student_step, use_sam=True),
                make_feed=make_sam_feed, uses_sam=True,
                description="FixMatch plus SAM labels refreshed during training"))
register(Method("agmm", agmm_step,
                description="AGMM (Wu et al. 2023): partial CE + adaptive Gaussian mixture losses"))

# The built-in rows are the names the configs offer (`sesam_jax.names`, which they import instead
# of this table): the two lists stay one.
if (tuple(METHODS) != METHOD_NAMES
    or tuple(m.name for m in METHODS.values() if m.uses_sam) != SAM_METHODS):
  raise ImportError("sesam_jax.methods.METHODS and sesam_jax.names.METHOD_NAMES / SAM_METHODS "
                    "disagree: add a new built-in method to both")


def get_method(name: str) -> Method:
  """The method called `name`, or ValueError listing the choices."""
  if name not in METHODS:
    raise ValueError(f"config.method={name!r}: choose one of {', '.join(METHODS)}.")
  return METHODS[name]
