"""`train_and_evaluate(config, workdir)`: the supervised training loop behind `sesam train`.

Resume is automatic: if `<workdir>/checkpoints` holds a checkpoint, the state (student, teacher,
optimizer) and the grain iterator are restored and the same command continues the same data
stream; per-step keys are `fold_in(seed key, step)`, so a resumed run ends with the same
parameters as an uninterrupted one. The host dispatches step t before it reads back the metrics
of the previous log step, so logging does not stall the device.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sesam_jax import config_lib, report
from sesam_jax.train import optim, train_state
from sesam_jax.train import train_step as step_lib
from sesam_jax.train.checkpoint import Checkpointer
from sesam_jax.train.logs import MetricWriter


class NonFiniteError(ValueError):
  """A loss or norm became NaN/Inf; the message names the step."""


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """`jax.distributed.initialize()` once when `config.multihost` (cluster env from the launcher)."""
  if config.get("multihost", False) and not getattr(maybe_initialize_distributed, "_done", False):
    jax.distributed.initialize()
    maybe_initialize_distributed._done = True


class _Subset:
  """The first `n` examples of a source (same `info`/`ids` interface)."""

  def __init__(self, source: Any, n: int) -> None:
    self._source, self._n = source, min(n, len(source))
    self.info = source.info
    self.ids = list(source.ids)[:self._n]

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, i: int) -> Any:
    if not 0 <= i < self._n:
      raise IndexError(i)
    return self._source[i]


def make_sources(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """(train source, val source) from `config.dataset` via `sesam_jax.data.get_source`."""
  from sesam_jax.data import get_source
  d = config.dataset
  kw: dict[str, Any] = {}
  if config.data_dir:
    kw["data_dir"] = config.data_dir
  train_kw, val_kw = dict(kw), dict(kw)
  if d.name == "synthetic":
    if tuple(d.image_size) != (0, 0):
      train_kw["size"] = val_kw["size"] = tuple(d.image_size)
    if d.num_train_images:
      train_kw["num_images"] = d.num_train_images
    if d.num_val_images:
      val_kw["num_images"] = d.num_val_images
  train = get_source(d.name, split=d.train_split, **train_kw)
  val = get_source(d.name, split=d.val_split, **val_kw)
  if config.eval.max_images:
    val = _Subset(val, config.eval.max_images)
  return train, val


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> Any:
  """The student named by `config.model` with `config.dtype` compute."""
  from sesam_jax.models import create_model
  return create_model(config.model, num_classes, dtype=jnp.dtype(config.dtype))


def step_config(config: ml_collections.ConfigDict, schedule: Any) -> step_lib.StepConfig:
  """The static settings of the supervised step from the config."""
  return step_lib.StepConfig(lr_schedule=schedule, ema_decay=float(config.ema_decay),
                             weak_weight=float(config.loss.weak_weight))


def sesam_step_config(config: ml_collections.ConfigDict, schedule: Any):
  """The static settings of the teacher-student step (fixmatch, sesam) from the config."""
  from sesam_jax.train import sesam_step, strong_aug
  t = config.teacher
  strong = strong_aug.StrongAugConfig(jitter_prob=t.jitter_prob, grayscale_prob=t.grayscale_prob,
                                      blur_prob=t.blur_prob, cutmix_prob=t.cutmix_prob)
  return sesam_step.SesamStepConfig(
      lr_schedule=schedule, method=config.method, ema_decay=float(config.ema_decay),
      theta1=t.theta1, theta2=t.theta2, lambda1=t.lambda1, lambda2=t.lambda2, strong=strong)


def sam_baseline_labels(config: ml_collections.ConfigDict, train_source: Any, workdir: str) -> str:
  """Pre-generates the SAM baseline's training labels once (weak labels as naive prompts).

  Returns:
    The folder of `<id>.png` labels (`<workdir>/sam_baseline_labels`), complete when
    `DONE.json` is present; an interrupted generation is redone from the start.
  """
  from sesam_jax.refine_labels import refine_dataset
  out = os.path.join(workdir, "sam_baseline_labels")
  done = os.path.join(out, "DONE.json")
  if not os.path.isfile(done):
    s = config.sam
    spec = s.backend if not s.checkpoint else f"{s.backend}:{s.checkpoint}"
    report.log(f"sam_baseline: prompting {spec} naively with the {config.weak} labels of "
               f"{len(train_source)} training images -> {out}")
    result = refine_dataset(train_source, weak_kind=config.weak, out_dir=out, backend=spec,
                            seed=config.weak_seed, mode="naive", k=s.k,
                            work_long_side=s.work_long_side)
    with open(done + ".tmp", "w") as f:
      json.dump(result, f, default=str)
    os.replace(done + ".tmp", done)
  return out


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Saves the resolved config as `<workdir>/config.json` (temp name, then rename)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json(indent=2))
  os.replace(path + ".tmp", path)


def _check_finite(step: int, metrics: Mapping[str, float]) -> None:
  bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
  if bad:
    raise NonFiniteError(
        f"step {step}: non-finite training metrics {bad}; the run stops here (the last "
        "checkpoint is before this step). Lower --config.optim.lr or set "
        "--config.optim.grad_clip=1.0.")


def evaluate_state(config: ml_collections.ConfigDict, model: Any, state: train_state.TrainState,
                   val_source: Any, mesh: Any, log: bool = True) -> dict[str, Any]:
  """Evaluates the student (and the EMA teacher when `config.eval.ema`) on `val_source`.

  Returns:
    `evaluate`'s dict with names "student" and "ema".
  """
  from sesam_jax.data.input_pipeline import make_eval_dataset
  from sesam_jax.evaluate.inference import evaluate
  weights = {"student": {"params": state.params, "batch_stats": state.batch_stats}}
  if config.eval.ema:
    weights["ema"] = {"params": state.ema_params, "batch_stats": state.ema_batch_stats}
  bs = int(config.eval.batch_size)
  info = val_source.info
  return evaluate(model, weights, make_eval_dataset(val_source, batch_size=bs), mesh,
                  num_classes=info.num_classes, class_names=info.class_names,
                  mode=config.eval.mode, window=config.eval.window, stride=config.eval.stride,
                  image_scale=config.eval.image_scale, total=math.ceil(len(val_source) / bs),
                  log=log)


def _summary(step: int, ev: Mapping[str, Any]) -> dict[str, Any]:
  out = {"step": step, "val_miou": ev["student_miou"]}
  if "ema_miou" in ev:
    out["val_miou_ema"] = ev["ema_miou"]
  out["val_per_class_iou"] = ev["student_per_class_iou"]
  out["val_images"] = ev["num_images"]
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config.model` on `config.dataset` (resuming from `workdir`), then evaluates.

  Args:
    config: a config from `configs/` (see `config_lib.base_config` for the fields).
    workdir: run directory: checkpoints/, tensorboard/, metrics.jsonl, config.json.

  Returns:
    {"step", "val_miou" (student), "val_miou_ema", "val_per_class_iou", "val_images",
     "train_seconds", "eval_seconds", "workdir"}.
  """
  from sesam_jax.data.input_pipeline import make_train_dataset
  maybe_initialize_distributed(config)
  mesh = step_lib.make_mesh()
  step_lib.check_batch_size(config.batch_size, mesh)
  train_source, val_source = make_sources(config)
  model = build_model(config, train_source.info.num_classes)
  tx, schedule = optim.make_optimizer(config.optim, train_state.abstract_params(model),
                                      config.num_steps)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  _write_config(config, workdir)

  # Each host reads its own slice of the data and supplies its share of the global batch.
  from sesam_jax.train.feed import make_feed
  if config.method not in config_lib.METHODS:
    raise ValueError(f"config.method={config.method!r}: choose one of "
                     f"{', '.join(config_lib.METHODS)}.")
  weak_dir = None
  if config.method == "sam_baseline":
    weak_dir = sam_baseline_labels(config, train_source, workdir)
  if config.dataset.skip_unreadable:
    # One wrapper for the pipeline and the SAM pre-warm: each skip is logged once.
    from sesam_jax.data.base import SkipUnreadable
    train_source = SkipUnreadable(train_source)
  dataset = make_train_dataset(
      train_source, crop=config.crop, batch_size=config.batch_size // jax.process_count(),
      seed=config.seed, weak=config.weak, weak_seed=config.weak_seed, weak_dir=weak_dir,
      scale_range=tuple(config.scale_range), num_workers=config.num_workers,
      shard_index=jax.process_index(), shard_count=jax.process_count(),
      skip_unreadable=config.dataset.skip_unreadable)
  iterator = iter(dataset)
  feed = make_feed(config, iterator, train_source, workdir)
  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(train_state.abstract_train_state(model, tx, mesh), feed.checkpoint_item)
    feed.restore(workdir, int(state.step))
    report.log(f"resumed from {ckpt.directory} at step {int(state.step)}")
  else:
    state = train_state.create_train_state(model, tx, init_rng, mesh)
  if config.method in ("fixmatch", "sesam"):
    from sesam_jax.train import sesam_step
    step_fn = sesam_step.jit_sesam_step(model, sesam_step_config(config, schedule), mesh, state)
  else:
    step_fn = step_lib.jit_train_step(model, step_config(config, schedule), mesh, state)
  writer = MetricWriter(workdir)

  start = int(state.step)
  num_steps = int(config.num_steps)
  t0 = time.time()
  pending = None  # (step, device metrics, time) of the last log step, read one step later
  last_log = (start, t0)

  def flush() -> None:
    nonlocal pending, last_log
    if pending is None:
      return
    n, device_metrics, t = pending
    pending = None
    metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    _check_finite(n, metrics)
    metrics.update(feed.summary())
    metrics["steps_per_second"] = (n - last_log[0]) / max(t - last_log[1], 1e-9)
    last_log = (n, t)
    writer.write(n, metrics, prefix="train/")

  try:
    prepared = feed.prepare()  # SeSAM's pre-warm, timed apart from training.
    t0 = time.time()
    last_log = (start, t0)
    for step in report.progress(range(start, num_steps), desc="train", total=num_steps - start,
                                unit="step"):
      host_batch = feed.next(step)
      batch = step_lib.shard_batch(host_batch, mesh)
      state, metrics, *confident = step_fn(state, batch, step_rng)
      # The previous step's outputs, now that this step is dispatched.
      feed.after_step(step, host_batch, confident[0] if confident else None)
      flush()
      n = step + 1
      if n % config.log_every == 0 or n == num_steps:
        pending = (n, metrics, time.time())
      if n % config.checkpoint_every == 0 or n == num_steps:
        flush()  # never checkpoint a state whose metrics went non-finite
        ckpt.save(n, state, feed.checkpoint_item)
        feed.save(workdir, n)
      if config.eval_every and n % config.eval_every == 0 and n < num_steps:
        ev = evaluate_state(config, model, state, val_source, mesh, log=False)
        writer.write(n, {k: v for k, v in ev.items() if k.endswith("_miou")}, prefix="val/")
    flush()
    train_seconds = time.time() - t0
  finally:
    ckpt.close()
    feed.close()
  ev = evaluate_state(config, model, state, val_source, mesh)
  writer.write(num_steps, {k: v for k, v in ev.items() if k.endswith("_miou")}, prefix="val/")
  writer.close()
  result = _summary(int(state.step), ev)
  result.update(method=config.method, weak=config.weak, **_final_train_metrics(workdir),
                **feed.summary())
  result.update(prepared)
  result.update(train_seconds=round(train_seconds, 2), eval_seconds=round(ev["eval_seconds"], 2),
                workdir=os.path.abspath(workdir))
  return result


def _final_train_metrics(workdir: str) -> dict[str, float]:
  """Label-source coverage at the last logged step (from metrics.jsonl), for the summary."""
  path = os.path.join(workdir, "metrics.jsonl")
  last: dict[str, Any] = {}
  if os.path.isfile(path):
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        if any(k.startswith("train/coverage_") for k in record):
          last = record
  return {k.replace("train/", "final_"): round(v, 5) for k, v in last.items()
          if k.startswith("train/coverage_") or k == "train/teacher_confident"}


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Restores the latest checkpoint of `workdir` and evaluates student and EMA (`sesam eval`).

  Returns:
    {"step", "val_miou", "val_miou_ema", "val_per_class_iou", "val_images", "eval_seconds"}.
  """
  maybe_initialize_distributed(config)
  mesh = step_lib.make_mesh()
  _, val_source = make_sources(config)
  model = build_model(config, val_source.info.num_classes)
  tx, _ = optim.make_optimizer(config.optim, train_state.abstract_params(model),
                               config.num_steps)
  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
  try:
    state = ckpt.restore(train_state.abstract_train_state(model, tx, mesh), None)
  finally:
    ckpt.close()
  ev = evaluate_state(config, model, state, val_source, mesh)
  result = _summary(int(state.step), ev)
  result["eval_seconds"] = round(ev["eval_seconds"], 2)
  return result
