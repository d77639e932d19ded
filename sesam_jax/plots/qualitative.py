"""Figure 5 of the paper for the user's runs: one row per image, one column per label map.

Columns: the image, its weak label, the SeSAM label refined from it now (validation images have
no label-bank entries, so they are refined on the fly with the runs' SAM backend and settings),
each run's prediction (`sesam predict`'s code, the run's own evaluation settings) and the fine
label. Each label panel is titled with its mIoU against the fine label on that image.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from sam_bridge.api import RefineRequest
from sam_bridge.refine import RefineConfig, refine
from sesam_jax import report
from sesam_jax.data import weak_labels
from sesam_jax.evaluate import metrics, predict
from sesam_jax.plots import output
from sesam_jax.run import runs as runs_lib
from sesam_jax.sam import resolver


def sam_settings(configs: Sequence[Any]) -> tuple[str | None, Any]:
  """The weak kind and the config whose SAM settings refine it: the first run that used SAM
  (method sesam or sam_baseline), else the first trained on weak labels; (None, None) if all
  runs were trained on fine labels."""
  for wanted in (lambda c: c.method in ("sesam", "sam_baseline"), lambda c: c.weak != "fine"):
    for config in configs:
      if wanted(config) and config.weak != "fine":
        return config.weak, config
  return None, None


def _refine_fn(config: Any, backend: str | None, weak_kind: str) -> Any:
  """(backend object, refine(request)) with the SAM settings of `config.sam` (and `backend`
  instead, if given), checked and built as training builds them (`sesam_jax.sam.resolver`: the
  PyTorch SAM family, the Flax SAM, or the SAM-free priors)."""
  s = config.sam if config is not None else None
  if backend is not None:
    kw = {} if s is None else dict(device=s.device, dtype=s.dtype, decoder_dtype=s.decoder_dtype)
    sam = resolver.resolve(backend, **kw)
  elif s is not None:
    sam = resolver.from_config(s)
  else:
    raise ValueError("--weak given but no run used SAM: name the prior with --backend "
                     "(e.g. superpixel, oracle or transformers:/path/to/sam).")
  bk = sam.build()
  if config is None:
    cfg = RefineConfig(weak_kind=weak_kind).validate()
  else:
    # Validation images have no teacher confidence: "confidence" sampling falls back to SeSAM's.
    cfg = resolver.refine_config(config, weak_kind=weak_kind,
                                 sampling="sesam" if s.sampling == "confidence" else s.sampling)
  return bk, lambda request: refine(bk, request, cfg)


def plot_qualitative(workdirs: Sequence[str | os.PathLike], *, out: str | os.PathLike,
                     dataset: str | None = None, data_dir: str | None = None,
                     split: str | None = None, images: int = 4, weak: str | None = None,
                     backend: str | None = None, ema: bool = False, seed: int | None = None,
                     dpi: int = 100) -> dict:
  """Draws the qualitative grid (`sesam plot qualitative`).

  Args:
    workdirs: the runs whose predictions are shown, one column each.
    out: the PNG to write (its data goes to the same name with `.json`).
    dataset, data_dir, split: the images (default: the first run's dataset and val split).
    images: rows (the first N images of the split).
    weak: weak-label kind of the weak and SeSAM columns (default: from the runs; see
      `sam_settings`); "none" leaves both columns out.
    backend: SAM backend spec for the SeSAM column (default: the run's `config.sam`).
    ema: show the EMA teachers' predictions instead of the students'.
    seed: weak-label seed (default: the run's `weak_seed`).
    dpi: resolution of the PNG.

  Returns:
    {"figure", "data", "images", "runs": [{"workdir", "label", "miou"}], "columns"}.
  """
  if not workdirs:
    raise ValueError("sesam plot qualitative needs at least one --workdirs run.")
  runs = [predict.load_run(w, ema=ema) for w in workdirs]
  source = runs_lib.dataset_source(runs[0].config, dataset=dataset, data_dir=data_dir,
                                   split=split)
  info = source.info
  for run in runs:
    if run.info.num_classes != info.num_classes:
      raise ValueError(f"run {run.workdir} predicts {run.info.num_classes} classes, the dataset "
                       f"{info.name} has {info.num_classes}; show runs of one dataset.")
  weak_kind, sam_config = sam_settings([r.config for r in runs])
  if weak is not None:
    weak_kind = None if weak == "none" else weak
  count = min(images, len(source))
  items = [source[i] for i in range(count)]
  columns: list[dict] = [{"title": "image", "kind": "image"}]
  maps: list[list[np.ndarray]] = [[] for _ in items]
  if weak_kind is not None:
    seed = (sam_config.weak_seed if sam_config is not None else 0) if seed is None else seed
    bk, refine_one = _refine_fn(sam_config, backend, weak_kind)
    columns += [{"title": f"weak ({weak_kind})", "kind": "weak", "seed": seed,
                 "drawn": "points 5 px wide" if weak_kind == "points" else "as is"},
                {"title": f"SeSAM ({bk.name})", "kind": "sesam", "backend": bk.name,
                 "oracle": bool(bk.is_oracle)}]
    for item, row in zip(report.progress(items, desc="refine", unit="img"), maps):
      weak_map = weak_labels.make_weak_label(item["label"], weak_kind, seed=seed,
                                             image_id=item["id"], num_classes=info.num_classes,
                                             ignore_index=info.ignore_index)
      fine = item["label"] if bk.is_oracle else None
      row += [weak_map, refine_one(RefineRequest(item["id"], item["image"], weak_map,
                                                 fine=fine)).label]
  run_summaries = []
  for run in runs:
    settings = predict.settings_from_config(run.config)
    label = _run_label(run)
    columns.append({"title": label, "kind": "prediction", "workdir": str(run.workdir),
                    "step": run.step, "weights": run.weights})
    confusion = np.zeros((info.num_classes, info.num_classes + 1), np.int64)
    examples = ({"image": item["image"]} for item in items)
    for (_, pred), item, row in zip(predict.predict_examples(run, examples, settings), items,
                                    maps):
      row.append(pred)
      confusion += _confusion(pred, item["label"], info.num_classes)
    run_summaries.append({"workdir": str(run.workdir), "label": label, "step": run.step,
                          "miou": _miou(confusion)})
  columns.append({"title": "fine", "kind": "fine"})
  for item, row in zip(items, maps):
    row.append(item["label"])
  titles = [c["title"] for c in columns[1:]]
  data = {
      "dataset": info.name, "split": split or runs[0].config.dataset.val_split,
      "class_names": list(info.class_names), "colors": info.colors, "columns": columns,
      "runs": run_summaries,
      "rows": [{"id": item["id"], "labels": {t: output.rle_encode(m) for t, m in zip(titles, row)},
                "miou": {t: output.per_image_miou(m, item["label"], info.num_classes)
                         for t, m in zip(titles[:-1], row[:-1])}}
               for item, row in zip(items, maps)]}
  paths = _draw(data, items, maps, out, dpi=dpi)
  report.log(f"qualitative: {count} images x {len(columns)} columns -> {paths['figure']}")
  return {**paths, "images": count, "runs": run_summaries, "columns": [c["title"] for c in columns]}


def _run_label(run: Any) -> str:
  c = run.config
  name = pathlib.Path(run.workdir).name
  return f"{name}: {c.method}, {c.weak}" + (" (EMA)" if run.weights == "ema" else "")


def _confusion(pred: np.ndarray, fine: np.ndarray, num_classes: int) -> np.ndarray:
  keep = fine < num_classes
  index = fine[keep].astype(np.int64) * (num_classes + 1) + pred[keep]
  return np.bincount(index, minlength=num_classes * (num_classes + 1)).reshape(
      num_classes, num_classes + 1)


def _miou(confusion: np.ndarray) -> float | None:
  value = metrics.miou(confusion)
  return None if np.isnan(value) else round(value, 4)


def _draw(data: dict, items: list[dict], maps: list[list[np.ndarray]], out: str | os.PathLike, *,
          dpi: int) -> dict:
  plt = output.pyplot()
  colors = np.asarray(data["colors"], np.uint8)
  ncols = len(data["columns"])
  h, w = items[0]["image"].shape[:2]
  width = 2.4 * ncols
  fig, axes = plt.subplots(len(items), ncols, squeeze=False,
                           figsize=(width, len(items) * 2.4 * h / w + 0.8))
  for r, (item, row, rec) in enumerate(zip(items, maps, data["rows"])):
    shown = [output.thicken(m) if column.get("drawn") == "points 5 px wide" else m
             for m, column in zip(row, data["columns"][1:])]
    panels = [item["image"]] + [output.colorize(m, colors) for m in shown]
    for c, (ax, panel, column) in enumerate(zip(axes[r], panels, data["columns"])):
      ax.imshow(panel, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      score = rec["miou"].get(column["title"])
      if r == 0:
        ax.set_title(column["title"], fontsize=7)
      if c == 0:
        ax.set_ylabel(item["id"], fontsize=6)
      if score is not None:
        ax.set_xlabel(f"mIoU {score:.3f}", fontsize=6, labelpad=1)
  present = sorted({int(v) for m in (item["label"] for item in items) for v in np.unique(m)
                    if v < len(data["class_names"])})
  output.legend(fig, data["class_names"], colors, present, loc="lower center",
                ncol=min(len(present), 11))
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  return output.save(fig, out, data, dpi=dpi)
