"""`sesam refine`: SeSAM labels for a dataset split, written as PNGs and scored.

Weak labels are made exactly as `sesam weak-labels` makes them (same kind and
seed) or read from a folder; each image is refined by the SAM bridge (in this
process, or in its worker process with `use_service`); `<image stem>.png` is
written under `out_dir` (temp name, then rename). Scores (paper Table 5): over
pixels unlabeled in the weak label, "added" = labeled in the refined label;
precision = correct added / added, recall = correct added / (unlabeled in the
weak label but labeled in the fine label), F1 their harmonic mean. Added pixels
on void ground truth (255) cannot be judged and are left out of both. `miou` of
the refined labels and `weak_miou` of the weak labels are scored like
`sesam eval-labels` (255 in a scored map is a miss).
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import time

import numpy as np
from PIL import Image


def _write_png(path: pathlib.Path, label: np.ndarray) -> None:
  fd, tmp = tempfile.mkstemp(suffix=".png.tmp", dir=path.parent)
  os.close(fd)
  try:
    Image.fromarray(label, mode="L").save(tmp, format="PNG")
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def refine_dataset(source, *, weak_kind: str, out_dir: str | os.PathLike, backend: str = "oracle",
                   backend_kwargs: dict | None = None, seed: int = 0,
                   weak_dir: str | os.PathLike | None = None, limit: int | None = None,
                   use_service: bool = False, fallback: bool = False, **config_kw) -> dict:
  """Refines every image of `source` and scores the result.

  Args:
    source: a dataset source (`sesam_jax.data.get_source`).
    weak_kind: "points", "scribbles" or "coarse".
    out_dir: folder for the refined `<image stem>.png` labels (created).
    backend: a `sam_bridge.backends.create_backend` spec, or jax:PATH / jax-random:VARIANT
      (the Flax SAM, in this process; not with use_service).
    backend_kwargs: backend keywords (device, dtype, ...).
    seed: weak-label seed (as `sesam weak-labels --seed`) and sampling seed.
    weak_dir: read weak labels from here instead of generating them.
    limit: only the first `limit` images.
    use_service: refine in the bridge's worker process (RefineService).
    fallback: with use_service, fall back to the weak label on a worker failure.
    **config_kw: sam_bridge.refine.RefineConfig fields (mode, sampling, selection,
      prompt, instances, k, tau1, tau2, ...).

  Returns:
    {"images", "backend", "oracle", "precision", "recall", "f1", "miou", "weak_miou",
    "coarse_*" (stage-1 scores for points/scribbles), "seconds_per_image",
    "fallbacks", "config"}.
  """
  from sam_bridge.api import RefineRequest
  from sam_bridge.backends import create_backend
  from sam_bridge.refine import RefineConfig, refine
  from sesam_jax import report
  from sesam_jax.data import weak_labels
  from sesam_jax.evaluate import metrics

  info = source.info
  cfg = RefineConfig(weak_kind=weak_kind, **config_kw).validate()
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  count = len(source) if limit is None else min(limit, len(source))
  c = info.num_classes
  conf = {k: np.zeros((c, c + 1), np.int64) for k in ("refined", "weak", "coarse")}
  counts = {k: np.zeros(3, np.int64) for k in ("refined", "coarse")}  # correct added, added, missing.

  pending: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # id -> (weak, fine), until scored.

  def requests():
    for i in range(count):
      item = source[i]
      if weak_dir is not None:
        weak = weak_labels.read_weak_label(weak_dir, item["id"], num_classes=c, shape=item["label"].shape)
      else:
        weak = weak_labels.make_weak_label(item["label"], weak_kind, seed=seed, image_id=item["id"],
                                           num_classes=c, ignore_index=info.ignore_index)
      pending[item["id"]] = (weak, item["label"])
      yield RefineRequest(item["id"], item["image"], weak, fine=item["label"])

  def add_counts(key, weak, label, fine):
    unl = weak == info.ignore_index
    judged = fine != info.ignore_index
    added = unl & (label != info.ignore_index) & judged
    counts[key] += [int((added & (label == fine)).sum()), int(added.sum()), int((unl & judged).sum())]

  t0 = time.perf_counter()
  fallbacks = 0
  name, is_oracle = backend, backend == "oracle"
  if use_service:
    from sam_bridge.service import RefineService
    service = RefineService(backend, backend_kwargs=backend_kwargs, config=cfg, seed=seed,
                            fallback=fallback)
    results = service.map(requests())
  else:
    service = None
    if backend.split(":")[0] in ("jax", "jax-random"):  # Flax SAM, in this process (issue 11).
      from sesam_jax.sam.jax_backend import create_jax_backend
      bk = create_jax_backend(backend, **(backend_kwargs or {}))
    else:
      bk = create_backend(backend, **(backend_kwargs or {}))
    name, is_oracle = bk.name, bk.is_oracle
    # Only an oracle ever sees the fine label.
    results = (refine(bk, r if bk.is_oracle else RefineRequest(r.example_id, r.image, r.weak), cfg,
                      seed=seed) for r in requests())
  try:
    for res in report.progress(results, desc=f"refine {weak_kind}", total=count, unit="img"):
      weak, fine = pending.pop(res.example_id)
      fallbacks += int(res.fallback)
      if res.info.get("backend"):
        name = res.info["backend"]
        is_oracle = bool(res.info.get("oracle", is_oracle))
      _write_png(out / f"{res.example_id}.png", res.label)
      conf["refined"] += np.asarray(metrics.confusion_matrix(fine, res.label, c, unlabeled_column=True))
      conf["weak"] += np.asarray(metrics.confusion_matrix(fine, weak, c, unlabeled_column=True))
      add_counts("refined", weak, res.label, fine)
      if res.coarse is not None:
        conf["coarse"] += np.asarray(metrics.confusion_matrix(fine, res.coarse, c, unlabeled_column=True))
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
