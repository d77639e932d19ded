"""`sesam refine` and the SAM baseline's labels: a dataset split refined, written, scored.

Weak labels are made exactly as `sesam weak-labels` makes them (same kind and
seed) or read from a folder; each image is refined by the SAM bridge (in this
process, or in a service with `use_service`); `<image stem>.png` is written
under `out_dir` with the dataset's palette. The split is checked first (every
bad file reported at once, nothing written), and the labels appear in `out_dir`
only once every image is refined (`outputs.staged_folder`): a run that stops
leaves no half set behind. Scores (paper Table 5): over
pixels unlabeled in the weak label, "added" = labeled in the refined label;
precision = correct added / added, recall = correct added / (unlabeled in the
weak label but labeled in the fine label), F1 their harmonic mean. Added pixels
on void ground truth (255) cannot be judged and are left out of both. `miou` of
the refined labels and `weak_miou` of the weak labels are scored like
`sesam eval-labels` (255 in a scored map is a miss).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from sam_bridge.api import RefineRequest
from sam_bridge.refine import RefineConfig, refine
from sesam_jax import outputs, report
from sesam_jax.atomic import write_png_atomic
from sesam_jax.data import base, split_check, weak_labels, weak_sources
from sesam_jax.evaluate import metrics
from sesam_jax.run.layout import Layout
from sesam_jax.sam import resolver


def weak_label_of(source: Any, index: int, item: dict, *, weak_kind: str, seed: int = 0,
                  weak_dir: str | os.PathLike | None = None, weak_fn: Any = None) -> np.ndarray:
  """The weak label `sesam refine` uses for `item` (HxW uint8, 255 = unlabeled): from
  `weak_fn(index, item)`, read from `weak_dir`, or generated as `sesam weak-labels` makes it."""
  info = source.info
  if weak_fn is not None:
    return weak_fn(index, item)
  if weak_dir is not None:
    return weak_sources.read_weak_label(weak_dir, item["id"], num_classes=info.num_classes,
                                        shape=item["label"].shape)
  return weak_labels.make_weak_label(item["label"], weak_kind, seed=seed, image_id=item["id"],
                                     num_classes=info.num_classes, ignore_index=info.ignore_index)


def refine_dataset(source, *, weak_kind: str, out_dir: str | os.PathLike,
                   backend: resolver.SamBackend | str = "oracle", seed: int = 0,
                   weak_dir: str | os.PathLike | None = None, weak_fn=None,
                   limit: int | None = None, use_service: bool = False,
                   fallback: bool = False, check: bool = True, staged: bool = True,
                   **config_kw) -> dict:
  """Refines every image of `source` and scores the result.

  Args:
    source: a dataset source (`sesam_jax.data.get_source`).
    weak_kind: "points", "scribbles" or "coarse".
    out_dir: folder for the refined `<image stem>.png` labels (created).
    backend: a resolved SAM backend (`sesam_jax.sam.resolver.resolve`), or a spec string
      resolved with the defaults.
    seed: weak-label seed (as `sesam weak-labels --seed`) and sampling seed.
    weak_dir: read weak labels from here instead of generating them.
    weak_fn: or take them from `weak_fn(index, example) -> HxW uint8`
      (`weak_sources.weak_label_reader`).
    limit: only the first `limit` images.
    use_service: refine in a service: the bridge's worker process (PyTorch backends) or a
      thread (JAX backends).
    fallback: with use_service, fall back to the weak label on a worker failure.
    check: check the split's files first (`split_check`; a clean verdict is cached).
    staged: move the labels into `out_dir` only once every image is refined; False writes each
      one there (atomically) as soon as it is made, so a run that stops keeps those.
    **config_kw: sam_bridge.refine.RefineConfig fields (mode, sampling, selection,
      prompt, instances, k, tau1, tau2, ...).

  Returns:
    {"images", "backend", "oracle", "precision", "recall", "f1", "miou", "weak_miou",
    "coarse_*" (stage-1 scores for points/scribbles), "seconds_per_image",
    "fallbacks", "config"}.
  """
  if isinstance(backend, str):
    backend = resolver.resolve(backend)
  info = source.info
  cfg = RefineConfig(weak_kind=weak_kind, **config_kw).validate()
  out = pathlib.Path(out_dir)
  if check:
    split_check.require_clean([(source, f"examples of {info.name}")], limit=limit,
                              fix="Fix or remove these files and run again; nothing was written.")
  count = len(source) if limit is None else min(limit, len(source))
  c = info.num_classes
  conf = {k: np.zeros((c, c + 1), np.int64) for k in ("refined", "weak", "coarse")}
  counts = {k: np.zeros(3, np.int64) for k in ("refined", "coarse")}  # correct added, added, missing.

  pending: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # id -> (weak, fine), until scored.

  def requests():
    for i in range(count):
      item = source[i]
      weak = weak_label_of(source, i, item, weak_kind=weak_kind, seed=seed, weak_dir=weak_dir,
                           weak_fn=weak_fn)
      pending[item["id"]] = (weak, item["label"])
      yield RefineRequest(item["id"], item["image"], weak, fine=item["label"])

  def add_counts(key, weak, label, fine):
    unl = weak == info.ignore_index
    judged = fine != info.ignore_index
    added = unl & (label != info.ignore_index) & judged
    counts[key] += [int((added & (label == fine)).sum()), int(added.sum()), int((unl & judged).sum())]

  t0 = time.perf_counter()
  fallbacks = 0
  name, is_oracle = backend.spec, backend.kind == "oracle"
  if use_service:
    service = backend.service(config=cfg, seed=seed, fallback=fallback)
    results = service.map(requests())
  else:
    service = None
    bk = backend.build()
    name, is_oracle = bk.name, bk.is_oracle
    # Only an oracle ever sees the fine label.
    results = (refine(bk, r if bk.is_oracle else RefineRequest(r.example_id, r.image, r.weak), cfg,
                      seed=seed) for r in requests())
  try:
    # Staged, the labels move into `out` only once every image is refined.
    if not staged:
      out.mkdir(parents=True, exist_ok=True)
    with outputs.staged_folder(out) if staged else contextlib.nullcontext(out) as stage:
      for res in report.progress(results, desc=f"refine {weak_kind}", total=count, unit="img"):
        weak, fine = pending.pop(res.example_id)
        fallbacks += int(res.fallback)
        if res.info.get("backend"):
          name = res.info["backend"]
          is_oracle = bool(res.info.get("oracle", is_oracle))
        write_png_atomic(stage / f"{res.example_id}.png", res.label, palette=info.colors)
        conf["refined"] += np.asarray(metrics.confusion_matrix(fine, res.label, c,
                                                               unlabeled_column=True))
        conf["weak"] += np.asarray(metrics.confusion_matrix(fine, weak, c, unlabeled_column=True))
        add_counts("refined", weak, res.label, fine)
        if res.coarse is not None:
          conf["coarse"] += np.asarray(metrics.confusion_matrix(fine, res.coarse, c,
                                                                unlabeled_column=True))
          add_counts("coarse", weak, res.coarse, fine)
  finally:
    if service is not None:
      service.close()
  seconds = time.perf_counter() - t0

  def prf(cnt):
    correct, added, missing = (int(v) for v in cnt)
    p = correct / added if added else 0.0
    r = correct / missing if missing else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)

  p, r, f = prf(counts["refined"])
  result = {"images": count, "backend": name, "oracle": is_oracle, "weak": weak_kind,
            "precision": p, "recall": r, "f1": f, "miou": metrics.miou(conf["refined"]),
            "weak_miou": metrics.miou(conf["weak"]), "seconds_per_image": seconds / max(count, 1),
            "fallbacks": fallbacks, "out": str(out),
            "config": {k: v for k, v in vars(cfg).items() if k != "weak_kind"}}
  if counts["coarse"][1] or conf["coarse"].any():
    cp, cr, cf = prf(counts["coarse"])
    result.update({"coarse_precision": cp, "coarse_recall": cr, "coarse_f1": cf,
                   "coarse_miou": metrics.miou(conf["coarse"])})
  return result


BARRIER = "sesam_jax.sam_baseline_labels"  # The name all processes meet under.


def shard_indices(count: int, process_index: int, process_count: int) -> list[int]:
  """The positions of the training images that process `process_index` makes labels for.

  Every `process_count`-th image from `process_index` on: the shards cover the split once, and
  each holds (within one) as many images as the others.
  """
  return list(range(process_index, count, process_count))


def meet(name: str) -> None:
  """Waits until every process of the run calls `meet(name)`; returns at once in a single one.

  A JAX barrier (`multihost_utils.sync_global_devices`): a collective over every device. A
  process that dies before it arrives is declared dead by JAX's distributed service after
  `config.multihost.heartbeat_timeout_s`, which then ends the others: they never wait forever.
  """
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def baseline_labels(config: Any, train_source: Any, workdir: str, *,
                    process_index: int | None = None, process_count: int | None = None) -> str:
  """The SAM baseline's training labels, made once per workdir (weak labels as naive prompts).

  Each process of the run makes its shard (`shard_indices`) of the labels that are not in the
  folder yet, writing each atomically as soon as it is made; then all processes meet at a JAX
  barrier (`meet`) and check that the folder holds a label for every training image. A run
  that stops keeps the labels made so far and a resume makes only the others. A process whose
  shard fails still comes to the barrier, so that every process stops with an error rather than
  one of them waiting for it.

  Args:
    config: the training config (`sam`, `weak`, `weak_seed`, `weak_source`, `weak_options`).
    train_source: the training source.
    workdir: the run directory, shared by every process.
    process_index: this process (default `jax.process_index()`).
    process_count: how many processes make the labels (default `jax.process_count()`).

  Returns:
    The folder of `<id>.png` labels (`<workdir>/sam_baseline_labels`), complete.

  Raises:
    FileNotFoundError: after the barrier a training image has no label (its process failed:
      the message names the image and the process).
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  out = Layout.of(workdir).sam_baseline_labels
  shard = shard_indices(len(train_source), index, count)
  todo = [i for i in shard if not (out / f"{train_source.ids[i]}.png").is_file()]
  who = f"process {index} of {count}" if count > 1 else "this process"
  report.log(f"sam_baseline: {who} makes {len(todo)} of the {len(shard)} labels of its shard "
             f"({len(shard) - len(todo)} already in {out})")
  failure = None
  if todo:
    try:
      _make_baseline_labels(config, base.SubsetSource(train_source, todo), out)
    except Exception as e:  # pylint: disable=broad-except
      failure = e  # Raised after the barrier: the other processes must not wait for this one.
      report.log(f"sam_baseline: {who} failed to make its labels ({type(e).__name__}: {e}); "
                 "meeting the others before stopping")
  meet(BARRIER)
  if failure is not None:
    raise failure
  missing = [i for i, name in enumerate(train_source.ids) if not (out / f"{name}.png").is_file()]
  if missing:
    first = train_source.ids[missing[0]]
    raise FileNotFoundError(
        f"sam_baseline: {len(missing)} of {len(train_source)} labels are missing in {out}, e.g. "
        f"{out / (first + '.png')} (image {first!r}, made by process {missing[0] % count} of "
        f"{count}: see its log); run the same command again to make them.")
  return str(out)


def _make_baseline_labels(config: Any, source: base.SubsetSource, out: pathlib.Path) -> None:
  """Refines `source` (training images) naively into `out`, writing each label when made."""
  backend = resolver.from_config(config.sam, what=f"method={config.method}")
  weak_fn = None
  if config.get("weak_source", ""):  # The user's own weak labels prompt SAM.
    reader = weak_sources.training_reader(config.weak_source, source.source, config.weak,
                                          config.weak_options)

    def weak_fn(i: int, item: dict) -> np.ndarray:
      return reader(source.indices[i], item)  # The reader counts in the whole split.

  report.log(f"sam_baseline: prompting {backend.description} naively with the {config.weak} "
             f"labels of {len(source)} training images -> {out}")
  settings = dataclasses.asdict(resolver.refine_config(config, mode="naive"))
  settings.pop("weak_kind")
  # The loop checked the training split's files already (`dataset.check`).
  refine_dataset(source, weak_kind=config.weak, out_dir=out, backend=backend,
                 seed=config.weak_seed, weak_fn=weak_fn, check=False, staged=False, **settings)
