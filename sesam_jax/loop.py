"""`train_and_evaluate(config, workdir)`: the training loop behind `sesam train`, for every method.

The loop has no method branches: `sesam_jax.methods` gives the method's step, its feed and
its work before step 0. Each iteration dispatches step t first; everything the host does for the
next steps (reading the next batch, SAM requests and labels, the teacher's outputs of step t-1,
logging) runs while step t is on the device, after the loop has waited for step t-1 only.
`train/host_seconds` in the logs is that host work per step (waits for the device excluded): when
it approaches the step time, the host, not the device, sets the pace.

Resume is automatic: if `<workdir>/checkpoints` holds a checkpoint, the state (student, teacher,
optimizer), the data position, the method's feed items (SeSAM's SAM label bank) and the run's
clock are restored from that one step, and the same command continues the same data stream;
per-step keys are `fold_in(seed key, step)`, so a resumed supervised run ends with the same
parameters as an uninterrupted one. Every run ends by writing `<workdir>/result.json` (the same
object as the last stdout line). Evaluations also draw a few predictions in TensorBoard.

Faults (README "What happens when...") stop a run in one line before its first step
(`workdir.RunDir`, `data.split_check`), at a step boundary (`preemption`) or within a step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sesam_jax import report
from sesam_jax.atomic import write_atomic
from sesam_jax.data import base, get_source, memo, split_check
from sesam_jax.data.input_pipeline import (check_weak_labels, make_eval_dataset,
                                           make_train_dataset, weak_label_fn)
from sesam_jax.evaluate.inference import evaluate
from sesam_jax.models import create_model
from sesam_jax.sam import resolver
from sesam_jax.train import optim, train_state
from sesam_jax import methods
from sesam_jax.run import compile_cache, distributed, logs, preemption, pretrained, runs
from sesam_jax.run import result as result_lib
from sesam_jax.train import train_step as step_lib
from sesam_jax.run.checkpoint import Checkpointer
from sesam_jax.run.clock import RunClock, process_cpu_seconds
from sesam_jax.run.layout import CLOCK_ITEM, Layout
from sesam_jax.run.logs import MetricWriter
from sesam_jax.run.workdir import RunDir


class NonFiniteError(ValueError):
  """A loss or norm became NaN/Inf; the message names the step."""


def make_sources(config: ml_collections.ConfigDict, workdir: str | None = None, *,
                 check: bool = False) -> tuple[Any, Any]:
  """(train source, val source) from `config.dataset` via `sesam_jax.data.get_source`.

  With `dataset.max_train_images` the train source is a subset drawn by `config.seed`; given a
  `workdir`, its ids are written to `<workdir>/train_images.json` (and checked on a resume).
  With `check`, every file both sources read is checked first (`split_check`, the verdict cached
  per set of files) and every bad one is reported at once.
  """
  d = config.dataset
  size = tuple(d.image_size)
  try:
    train = get_source(d.name, data_dir=config.data_dir or None, split=d.train_split,
                       num_images=d.num_train_images, size=size)
    val = get_source(d.name, data_dir=config.data_dir or None, split=d.val_split,
                     num_images=d.num_val_images, size=size)
  except (FileNotFoundError, ValueError) as e:  # The readers' hints, with train's own flags.
    raise type(e)(str(e).replace("--data-dir", "--config.data_dir").replace(
        "--split", "--config.dataset.train_split / val_split")) from None
  if d.get("max_train_images", 0):
    train = base.SubsetSource(train, base.subset_indices(len(train), d.max_train_images,
                                                         config.seed))
  if config.eval.max_images:
    val = base.SubsetSource(val, range(min(config.eval.max_images, len(val))))
  if check:  # Every file of both splits, before anything is written (cached when clean).
    split_check.check_training_splits(config.dataset, train, val)
  if d.get("max_train_images", 0) and workdir is not None:
    _record_subset(train, workdir)
  return train, val


def _record_subset(train: base.SubsetSource, workdir: str) -> None:
  """Writes the subset's ids once; a resume whose subset differs stops with the reason."""
  path = Layout.of(workdir).train_images
  if path.is_file():
    with open(path) as f:
      saved = json.load(f)["ids"]
    if saved != train.ids:
      raise ValueError(f"{path} lists other training images than this run would use (the "
                       "dataset or --config.dataset.max_train_images / --config.seed changed); "
                       "use a new --workdir.")
    return
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    report.write_json(path, {"count": len(train), "of": len(train.source), "ids": train.ids})


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> Any:
  """The student named by `config.model` with `config.dtype` compute and `config.attention`."""
  return create_model(config.model, num_classes, dtype=jnp.dtype(config.dtype),
                      attention=config.get("attention", "auto"))


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Saves the resolved config as `<workdir>/config.json` (temp name, then rename)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    write_atomic(Layout.of(workdir).config, config.to_json(indent=2))


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
    `evaluate`'s dict with names "student" and "ema" (and the first `eval.tb_images` examples).
  """
  weights = {"student": {"params": state.params, "batch_stats": state.batch_stats}}
  if config.eval.ema:
    weights["ema"] = {"params": state.ema_params, "batch_stats": state.ema_batch_stats}
  bs = int(config.eval.batch_size)
  info = val_source.info
  return evaluate(model, weights, make_eval_dataset(val_source, batch_size=bs), mesh,
                  num_classes=info.num_classes, class_names=info.class_names,
                  mode=config.eval.mode, window=config.eval.window, stride=config.eval.stride,
                  image_scale=config.eval.image_scale, total=math.ceil(len(val_source) / bs),
                  log=log, keep_examples=config.eval.tb_images)


@dataclasses.dataclass
class StepTiming:
  """When each step was dispatched, and the host seconds before the next dispatch.

  `host` excludes the wait for the previous step's outputs: it is the work that would stall the
  device if it exceeded the step time.
  """
  first_step: int = 0
  dispatch: list[float] = dataclasses.field(default_factory=list)  # perf_counter at each dispatch
  end: float | None = None  # perf_counter once the last step's state was ready
  host: list[float] = dataclasses.field(default_factory=list)      # host seconds after each one
  # Seconds compiling (or loading from the compilation cache) each jitted function, by role.
  compile_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

  def add_compile(self, name: str, seconds: float) -> None:
    self.compile_seconds[name] = round(self.compile_seconds.get(name, 0.0) + seconds, 3)

  def seconds_per_step(self, skip: int = 1) -> float:
    """Median seconds per step after the first `skip` (compilation): between consecutive
    dispatches, and from the last dispatch to the last step's end."""
    gaps = np.diff(self.dispatch[skip:] + ([self.end] if self.end is not None else []))
    return float(np.median(gaps)) if len(gaps) else float("nan")

  def median_host(self, skip: int = 1) -> float:
    return float(np.median(self.host[skip:])) if len(self.host) > skip else float("nan")


@dataclasses.dataclass
class TrainOutcome:
  """What `train` leaves for evaluation and benchmarks."""
  state: Any
  model: Any
  mesh: Any
  val_source: Any
  info: dict[str, Any]
  timing: StepTiming


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainOutcome:
  """Trains `config.model` on `config.dataset` with `config.method` (resuming from `workdir`).

  Args:
    config: a config from `configs/` (see `configs_common.base_config` for the fields).
    workdir: run directory (`sesam_jax.run.layout`).

  Returns:
    The final state with what evaluation needs, the run's summary fields (`info`: method, weak,
    train_seconds summed over resumes, the feed's counters) and the steps' timing.
  """
  method = methods.get_method(config.method)
  compile_cache.enable(config.get("compile_cache_dir", compile_cache.AUTO))
  distributed.gpu_memory_share(config)  # Both before JAX's devices start (the SAM check may
  distributed.initialize(config)        # start them).
  sam_backend = None
  if method.uses_sam:
    # A bad (or missing) SAM setting, weights included (read without torch), stops the run
    # before it writes anything; the bridge's worker starts before config.json is written.
    sam_backend = resolver.from_config(config.sam, what=f"method={config.method}")
    report.log(f"SAM: {sam_backend.description} runs {sam_backend.where}; refreshes "
               f"sam.refresh={config.sam.refresh}, sam.view={config.sam.view}, every "
               f"M={config.sam.refresh_every} steps")
  with RunDir(workdir, primary=jax.process_index() == 0) as run_dir, \
       preemption.StopRequest() as stop:
    return _train(config, workdir, method, sam_backend, run_dir, stop)


def _train(config: ml_collections.ConfigDict, workdir: str, method: methods.Method,
           sam_backend: Any, run_dir: RunDir, stop: preemption.StopRequest) -> TrainOutcome:
  """`train` inside its workdir lock and signal handlers."""
  mesh = step_lib.make_mesh()
  step_lib.check_batch_size(config.batch_size, mesh)
  train_source, val_source = make_sources(config, workdir, check=config.dataset.get("check", True))
  skip = bool(config.dataset.skip_unreadable)
  # The weak labels of `weak` kind, generated or read from `weak_source` (every file checked now).
  weak_fn = weak_label_fn(train_source, config.weak, weak_seed=config.weak_seed,
                          weak_source=config.weak_source, weak_options=config.weak_options)
  bad_weak = check_weak_labels(weak_fn, train_source, skip_unreadable=skip,
                               what=f"weak label(s) of --config.weak_source={config.weak_source}")
  model = build_model(config, train_source.info.num_classes)
  tx, schedule = optim.make_optimizer(config.optim, train_state.abstract_params(model),
                                      config.num_steps)
  abstract_state = train_state.abstract_train_state(model, tx, mesh)
  run_dir.check_space(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state)))
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  # Placed once where the step reads it (replicated over every host's devices), not moved
  # implicitly at every step. (A jit, not device_put: the sharding spans other hosts' devices.)
  replicated = train_state.replicated(mesh)
  step_rng = jax.jit(lambda key: key, in_shardings=replicated, out_shardings=replicated)(step_rng)

  if method.make_labels:  # Labels made before step 0 (the SAM baseline's) replace the weak ones.
    labels_dir = method.make_labels(config, train_source, workdir)
    weak_fn = weak_label_fn(train_source, config.weak, weak_dir=labels_dir)
  skipper = None
  if skip:
    # One wrapper for the pipeline and the SAM pre-warm: each skip (an unreadable image, label
    # or weak label) is logged once and counted.
    skipper = train_source = base.SkipUnreadable(train_source)
    weak_fn = skipper.guard(weak_fn)
  # One weak-label function (made once per image, within a byte budget) for the pipeline and the
  # SAM bank; decoded examples are kept for the bank's refreshes when the pipeline reads in this
  # process (grain workers would each keep a copy).
  weak_fn = memo.memoize_weak_fn(weak_fn, config.dataset.weak_cache_mb << 20)
  examples = memo.MemoSource(train_source, config.dataset.image_cache_mb << 20)
  dataset = make_train_dataset(
      examples if config.num_workers == 0 else train_source, crop=config.crop,
      batch_size=config.batch_size, seed=config.seed, weak_fn=weak_fn,
      scale_range=tuple(config.scale_range), num_workers=config.num_workers,
      process_index=jax.process_index(), process_count=jax.process_count(),
      skip_unreadable=config.dataset.skip_unreadable)
  feed = method.feed(config, iter(dataset), examples, weak_fn, workdir)  # SAM starts here.
  clock, ckpt = RunClock(), None
  try:
    _write_config(config, workdir)  # Once SAM is up: a bad SAM setting writes no config.
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
    items = {**feed.checkpoint_items(), CLOCK_ITEM: clock}
    if ckpt.latest_step() is not None:
      state = ckpt.restore(abstract_state, items, fall_back=True)
      report.log(f"resumed from {ckpt.directory} at step {int(state.step)}")
    else:  # A fresh run: `config.init` (converted ImageNet weights) under the EMA copy.
      state = pretrained.create_state(config, model, tx, init_rng, mesh)
    step_fn = step_lib.jit_step(method.make_step(model, config, schedule), mesh, state)
    info = feed.prepare()  # Work before the first step (SeSAM's pre-warm), timed apart.
    clock.start()
    state, timing = _run_steps(config, workdir, state, step_fn, step_rng, feed, ckpt, clock,
                               model, val_source, mesh, stop)
  finally:
    try:
      if ckpt is not None:
        ckpt.close()  # Waits for the last save (a stop's checkpoint included).
    finally:
      feed.close()  # Closes the SAM bridge.
  info.update(method=config.method, weak=config.weak, train_images=len(train_source),
              **_final_train_metrics(workdir),
              **feed.result_fields())
  if config.weak_source:
    info["weak_source"] = config.weak_source
  if config.get("init", ""):
    info["init"] = config.init
  if sam_backend is not None:
    info["sam_backend"] = sam_backend.description  # e.g. "superpixel (SAM-free prior: ...)"
  if skipper is not None:
    info["skipped_examples"] = len(skipper.skipped)
    info["bad_weak_labels"] = bad_weak
  info["train_seconds"] = round(clock.seconds(), 2)
  info["cpu_seconds"] = round(clock.cpu_seconds(), 2)  # The bridge's worker has exited here.
  if timing.host:
    info["host_seconds_per_step"] = round(timing.median_host(), 4)
  return TrainOutcome(state, model, mesh, val_source, info, timing)


def _run_steps(config: ml_collections.ConfigDict, workdir: str, state: Any, step_fn: Any,
               step_rng: Any, feed: Any, ckpt: Checkpointer, clock: RunClock, model: Any,
               val_source: Any, mesh: Any, stop: preemption.StopRequest
               ) -> tuple[Any, StepTiming]:
  """The steps from `state.step` to `config.num_steps`: dispatch, host work, logs, checkpoints.

  Raises report.Stopped after checkpointing the step in which a stop signal (`stop`) arrived.
  """
  start, num_steps = int(state.step), int(config.num_steps)
  writer = MetricWriter(workdir, resume_step=start, final_eval=start >= num_steps)
  timing = StepTiming(first_step=start)
  pending = None  # (step, device metrics, time) of the last log step, read one step later
  last_log = (start, time.time())
  host_since_log: list[float] = []

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
    if host_since_log:
      metrics["host_seconds"] = statistics.fmean(host_since_log)
      host_since_log.clear()
    last_log = (n, t)
    writer.write(n, metrics, prefix="train/")

  previous = None  # the last step's outputs, waited for once the next step is dispatched
  stop.begin_steps()
  try:
    for step in report.progress(range(start, num_steps), desc="train", total=num_steps - start,
                                unit="step"):
      batch = feed.next(step)
      device_batch = step_lib.shard_batch(batch, mesh)
      if step == start:  # Compiled apart, so that the first dispatch is timed without it.
        timing.add_compile("train_step", compile_cache.compile_seconds(
            step_fn, state, device_batch, step_rng))
      timing.dispatch.append(time.perf_counter())
      state, metrics, aux = step_fn(state, device_batch, step_rng)
      host_start = time.perf_counter()
      if previous is not None:
        jax.block_until_ready(previous)  # Step t-1 is done; step t runs while the host works.
      waited = time.perf_counter() - host_start
      previous = (metrics, aux)
      feed.after_dispatch(step, batch, aux, more=step + 1 < num_steps)
      flush()
      n = step + 1
      if n % config.log_every == 0 or n == num_steps:
        pending = (n, metrics, time.time())
      if n % config.checkpoint_every == 0 or n == num_steps:
        flush()  # never checkpoint a state whose metrics went non-finite
        ckpt.save(n, state, {**feed.checkpoint_items(), CLOCK_ITEM: clock})
      ckpt.poll()  # A save that failed in the background stops the run now, not at the end.
      if config.eval_every and n % config.eval_every == 0 and n < num_steps:
        ev = evaluate_state(config, model, state, val_source, mesh, log=False)
        timing.add_compile("eval_step", ev["compile_seconds"])
        writer.write_evaluation(n, ev, val_source)
      if n < num_steps and stop.should_stop(n):
        flush()
        if n % config.checkpoint_every:
          ckpt.save(n, state, {**feed.checkpoint_items(), CLOCK_ITEM: clock})
        raise stop.stopped(n)
      host = time.perf_counter() - host_start - waited
      timing.host.append(host)
      host_since_log.append(host)
    jax.block_until_ready(state)
    timing.end = time.perf_counter()
    flush()
  finally:
    writer.close()
  return state, timing


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from `workdir`), evaluates, and writes `<workdir>/result.json`.

  Returns:
    The run's summary, also the content of result.json: its keys, types and units are
    `sesam_jax.run.result.FIELDS` (a key missing there stops the run before it is written).
  """
  outcome = train(config, workdir)
  cpu_start = process_cpu_seconds()
  ev = evaluate_state(config, outcome.model, outcome.state, outcome.val_source, outcome.mesh)
  outcome.timing.add_compile("eval_step", ev["compile_seconds"])
  outcome.info["cpu_seconds"] = round(  # The final evaluation's CPU too, as wall_seconds.
      outcome.info["cpu_seconds"] + process_cpu_seconds() - cpu_start, 2)
  writer = MetricWriter(workdir)
  writer.write_evaluation(int(config.num_steps), ev, outcome.val_source)
  writer.close()
  result = result_lib.make_result(int(outcome.state.step), ev,
                                  outcome.val_source.info.class_names, **outcome.info,
                                  compile_seconds=outcome.timing.compile_seconds,
                                  workdir=str(Layout.of(workdir).root))
  if jax.process_index() == 0:
    result_lib.write(workdir, result)
  return result


def _final_train_metrics(workdir: str) -> dict[str, float]:
  """Label-source coverage (and the SAM labels' precision) at the last logged step (from
  metrics.jsonl), for the summary."""
  last: dict[str, Any] = {}
  if Layout.of(workdir).metrics.is_file():
    for row in logs.read_metrics(workdir):
      if any(k.startswith("train/coverage_") for k in row):
        last = row
  return {k.replace("train/", "final_"): round(v, 5) for k, v in last.items()
          if k.startswith(("train/coverage_", "train/precision_"))
          or k == "train/teacher_confident"}


def evaluate_workdir(workdir: str, config: ml_collections.ConfigDict | None = None
                     ) -> dict[str, Any]:
  """Restores the latest checkpoint of `workdir` and evaluates student and EMA (`sesam eval`).

  Args:
    workdir: a run directory of `sesam train`.
    config: the config to evaluate with; default the run's own (its config.json).

  Returns:
    `sesam_jax.run.result.EVAL_KEYS`: {"step", "val_miou", "val_miou_ema", "val_per_class_iou",
    "val_images", "eval_seconds"}.
  """
  run = runs.open_run(workdir, config)
  config = run.config
  distributed.initialize(config)
  mesh = step_lib.make_mesh()
  _, val_source = make_sources(config)
  model = build_model(config, val_source.info.num_classes)
  tx, _ = optim.make_optimizer(config.optim, train_state.abstract_params(model),
                               config.num_steps)
  state = run.restore_state(train_state.abstract_train_state(model, tx, mesh))
  ev = evaluate_state(config, model, state, val_source, mesh)
  return result_lib.evaluation_fields(int(state.step), ev, val_source.info.class_names)
