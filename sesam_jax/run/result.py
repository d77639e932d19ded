"""`result.json`: the summary a finished training writes, its schema written down once.

`FIELDS` is every key `sesam train` may write, with its JSON type, unit and meaning; `PATTERNS`
the families of keys named after something (a label source, a SAM bridge stage). `make_result`
builds the summary from an evaluation and the training's fields and `check` refuses a key that
is in neither table (or of the wrong type), so a module that adds a key adds it here first.
`sesam eval` prints the evaluation's fields (`EVAL_KEYS`) with the same names.

Reading is lenient: `read` returns whatever a workdir's result.json holds (runs written by
older versions may lack keys or hold others).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from sesam_jax import report
from sesam_jax.run.layout import Layout


@dataclasses.dataclass(frozen=True)
class Field:
  """One key of result.json: its JSON type(s), unit and meaning."""
  type: type | tuple[type, ...]
  unit: str
  meaning: str


_NUMBER = (int, float, type(None))  # JSON numbers; null where a value is undefined (NaN)

FIELDS: dict[str, Field] = {
    # The final evaluation (`loop.evaluate_state`; also what `sesam eval` prints).
    "step": Field(int, "steps", "train step of the evaluated state (num_steps once finished)"),
    "val_miou": Field(_NUMBER, "fraction 0-1", "student mIoU on the validation split"),
    "val_miou_ema": Field(_NUMBER, "fraction 0-1", "EMA teacher mIoU (config.eval.ema)"),
    "val_per_class_iou": Field(dict, "{class name: fraction 0-1}", "student IoU per class"),
    "val_images": Field(int, "images", "validation images evaluated"),
    "eval_seconds": Field(_NUMBER, "s", "wall time of the final evaluation"),
    # What was trained, and on what.
    "method": Field(str, "name", "config.method (supervised, fixmatch, sesam, ...)"),
    "weak": Field(str, "name", "config.weak: the training labels' kind (fine, points, ...)"),
    "train_images": Field(int, "images", "training images: what the labels cost (`sesam "
                          "report`, `sesam plot cost`)"),
    "weak_source": Field(str, "spec", "config.weak_source: where the weak labels were read"),
    "init": Field(str, "path", "config.init: the converted weights the student started from"),
    "sam_backend": Field(str, "text", "the SAM backend as resolved (e.g. 'superpixel (SAM-free "
                         "prior: ...)')"),
    "skipped_examples": Field(int, "examples", "unreadable examples skipped "
                              "(config.dataset.skip_unreadable)"),
    "bad_weak_labels": Field(int, "labels", "weak labels that could not be read (skipped)"),
    "workdir": Field(str, "path", "the run directory, absolute"),
    # Time.
    "train_seconds": Field(_NUMBER, "s", "training wall time summed over resumes (pre-warm "
                           "excluded)"),
    "cpu_seconds": Field(_NUMBER, "s", "CPU seconds (user + system) of the training process "
                         "and its exited children (the SAM bridge's worker), start-up, pre-warm "
                         "and final evaluation included, summed over resumes"),
    "host_seconds_per_step": Field(_NUMBER, "s", "median host work between two dispatches"),
    "compile_seconds": Field(dict, "{function: s}", "this session's seconds compiling each "
                             "jitted function (train_step, eval_step: traced, lowered and "
                             "compiled for the first batch, or loaded from the compilation "
                             "cache, config.compile_cache_dir)"),
    # The SAM feed (SeSAM): `prepare` and the label bank's counters at the end.
    "sam/backend": Field(str, "name", "the backend the SAM service runs"),
    "prewarm_seconds": Field(_NUMBER, "s", "SAM labels made before step 0 (sam.prewarm)"),
    "prewarmed": Field(int, "images", "images refined before step 0"),
    "sam/sent": Field(int, "requests", "SAM requests sent"),
    "sam/received": Field(int, "labels", "SAM labels received"),
    "sam/stale": Field(int, "examples", "batch examples whose SAM label was older than M steps"),
    "sam/missing": Field(int, "examples", "batch examples without a SAM label"),
    "sam/fallbacks": Field(int, "labels", "refinements that failed and gave the weak label back"),
    "sam/already_in_flight": Field(int, "requests", "refreshes skipped: the last one not back"),
    "sam/queue_full": Field(int, "requests", "refreshes skipped: the request queue was full"),
    "sam/refresh_due": Field(int, "examples", "batch examples whose SAM refresh was due "
                             "(sam.refresh: strict, all every M-th step; async, 1/M per step)"),
    "sam/refresh_done": Field(int, "examples", "due refreshes back before the step that used "
                              "them"),
    "sam/refresh_skipped": Field(int, "examples", "due refreshes not back in time, queue full "
                                 "or still in flight (due - done)"),
    "sam/label_age_steps": Field(_NUMBER, "steps", "mean age of the SAM labels the last step "
                                 "trained on (step - the step whose view made them)"),
    "sam_refresh": Field(dict, "{due, done, skipped: examples; mean_age_steps: steps}",
                         "the run's SAM refreshes summed (sam/refresh_*), and the mean age of "
                         "the SAM labels every step trained on"),
    "sam/images_with_sam_label": Field(int, "images", "training images holding a SAM label"),
    "sam/in_flight": Field(int, "requests", "requests not answered at the end"),
    "sam/bank_bytes": Field(int, "bytes", "memory of the SAM label bank"),
    # A bench-backed cell (`experiments.bench_grid`, Table 6): its `sesam bench` figures.
    "seconds_per_iteration": Field(_NUMBER, "s", "median seconds between two dispatches of "
                                   "the method's training step (`sesam bench --what iteration`)"),
    "ratio_to_fixmatch": Field(_NUMBER, "ratio", "seconds_per_iteration over FixMatch's, timed "
                               "in the same process"),
    "peak_memory_gib": Field(_NUMBER, "GiB", "the step's memory per device (`sesam bench --what "
                             "memory`): the device's peak where it ran, else XLA's estimate"),
    "peak_memory_from": Field(str, "name", "'device peak' or 'xla estimate' (peak_memory_gib)"),
    "bench_device": Field(str, "text", "where the benchmarks ran (platform and device kind)"),
}

# Keys named after something: "<prefix><name>".
PATTERNS: dict[str, Field] = {
    "final_coverage_": Field(_NUMBER, "fraction 0-1", "final_coverage_<source>: pixels labelled "
                             "by <source> (weak, sam, pseudo) at the last logged step"),
    "final_precision_": Field(_NUMBER, "fraction 0-1", "final_precision_sam: share of the "
                              "pixels the SAM labels supervise whose fine label they match, "
                              "over those with a fine label, at the last logged step (SeSAM "
                              "with weak labels made from the fine labels)"),
    "final_teacher_confident": Field(_NUMBER, "fraction 0-1", "teacher pixels above theta2 at "
                                     "the last logged step"),
    "sam/bridge_": Field(_NUMBER, "s", "sam/bridge_<stage>: the SAM worker's seconds in <stage> "
                         "(encode, decode, geometry, ...)"),
}

EVAL_KEYS = ("step", "val_miou", "val_miou_ema", "val_per_class_iou", "val_images",
             "eval_seconds")


def field(key: str) -> Field | None:
  """The schema entry of `key` (exact name, else the pattern it starts with), or None."""
  if key in FIELDS:
    return FIELDS[key]
  return next((f for prefix, f in PATTERNS.items() if key.startswith(prefix)), None)


def check(result: Mapping[str, Any]) -> dict[str, Any]:
  """`result` as plain JSON values, every key checked against the schema.

  Raises:
    ValueError: a key the schema lacks, or a value of another type (names the key and the fix).
  """
  out = report.jsonable(result)
  for key, value in out.items():
    spec = field(key)
    if spec is None:
      raise ValueError(f"result key {key!r} is not in the schema of result.json; add it to "
                       "sesam_jax/run/result.py (FIELDS or PATTERNS) with its type and meaning.")
    if not isinstance(value, spec.type) or (spec.type is int and isinstance(value, bool)):
      raise ValueError(f"result key {key!r} = {value!r}: expected {_names(spec.type)} "
                       f"({spec.unit}); see sesam_jax/run/result.py.")
  return out


def _names(types: type | tuple[type, ...]) -> str:
  types = types if isinstance(types, tuple) else (types,)
  return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def evaluation_fields(step: int, ev: Mapping[str, Any],
                      class_names: Sequence[str] | None) -> dict[str, Any]:
  """The result's evaluation keys from `evaluate`'s dict (`EVAL_KEYS`), checked.

  Args:
    step: the evaluated state's step.
    ev: `inference.evaluate`'s dict ("student_miou", "student_per_class_iou", "num_images",
      "eval_seconds", and "ema_miou" when the teacher was evaluated).
    class_names: names of the classes (default their ids).
  """
  per_class = ev["student_per_class_iou"]
  names = list(class_names) if class_names else [str(i) for i in range(len(per_class))]
  out = {"step": int(step), "val_miou": ev["student_miou"]}
  if "ema_miou" in ev:
    out["val_miou_ema"] = ev["ema_miou"]
  out.update(val_per_class_iou=dict(zip(names, per_class)), val_images=ev["num_images"],
             eval_seconds=round(float(ev["eval_seconds"]), 2))
  return check(out)


def make_result(step: int, ev: Mapping[str, Any], class_names: Sequence[str] | None,
                **fields: Any) -> dict[str, Any]:
  """The summary of a finished training: `evaluation_fields` and `fields`, checked."""
  return check({**evaluation_fields(step, ev, class_names), **fields})


def write(workdir: str | os.PathLike, result: Mapping[str, Any]) -> None:
  """Writes `<workdir>/result.json` (checked, atomically)."""
  report.write_json(Layout.of(workdir).result, check(result))


def read(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """`<workdir>/result.json` as written (not checked), or None when the run has none.

  Raises:
    ValueError: the file is not a JSON object (names the file).
  """
  path = Layout.of(workdir).result
  if not path.is_file():
    return None
  try:
    value = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); rewrite or remove it.") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path} holds no JSON object; rewrite or remove it.")
  return value
