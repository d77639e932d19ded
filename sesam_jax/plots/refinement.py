"""Figures 2 / 12 of the paper for the user's images: how one weak label became a SeSAM label.

Per image, one figure: a top row with the image, the weak label, the stage-1 coarse label (points
and scribbles), the SeSAM label and the fine label; then one row per drawn instance (the
largest few): the instance with the sampling grid (eq. 2) and the K sampled points, the
probability field the points were drawn from, and the backend's three candidates, each titled
with its coverage r and compatibility p, the chosen one framed green. Everything comes from
`refine(..., RefineConfig(trace=True))`, the same call `sesam refine` makes.

`visualize_refinement` loops over the first N images of a split (`sesam refine --visualize N`).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from sam_bridge.api import RefineRequest
from sam_bridge.refine import RefineConfig, refine
from sesam_jax import report
from sesam_jax.plots import output
from sesam_jax.sam import refine_labels, resolver

CHOSEN_COLOR = "#1a9850"  # Frame of the chosen candidate.
MARGIN = 0.5  # Instance panels show the box grown by this fraction of its size on each side.


def _view(bbox: tuple[int, int, int, int], hw: tuple[int, int]) -> tuple[int, int, int, int]:
  """The instance box grown by MARGIN on each side, clipped to the image."""
  y0, x0, y1, x1 = bbox
  dy, dx = int((y1 - y0) * MARGIN) + 2, int((x1 - x0) * MARGIN) + 2
  return max(0, y0 - dy), max(0, x0 - dx), min(hw[0], y1 + dy), min(hw[1], x1 + dx)


def figure_data(item: dict, weak: np.ndarray, result: Any, info: Any, *, weak_kind: str,
                max_instances: int = 3) -> dict:
  """The JSON of one image's figure, from a traced RefineResult.

  Args:
    item: the source example {"id", "image", "label"} (full resolution).
    weak: its weak label (full resolution).
    result: refine()'s result with `trace`.
    info: the dataset's DatasetInfo.
    weak_kind: "points", "scribbles" or "coarse".
    max_instances: how many stage-2 instances to draw (the largest).

  Returns:
    {"id", "weak_kind", "backend", "oracle", "working_hw", "class_names", "colors",
     "labels": {"weak", "coarse"?, "refined", "fine": rle}, "miou": {...},
     "instances_total", "instances": [{stage, class_id, class_name, bbox, view, mask (rle, in
     bbox), points, grid, grid_edges, cells, field_at_points, candidates (rle, working image),
     scores, coverage, compatibility, chosen, qualified, lowres}]}.
  """
  trace = result.trace
  fine = item["label"]
  c = info.num_classes
  labels = {"weak": weak, "refined": result.label, "fine": fine}
  if result.coarse is not None:
    labels = {"weak": weak, "coarse": result.coarse, "refined": result.label, "fine": fine}
  stage2 = [t for t in trace.instances if t.stage != "sparse"]
  drawn = sorted(stage2, key=lambda t: -int(t.mask.sum()))[:max_instances]
  instances = []
  for t in drawn:
    index = next(k for k, u in enumerate(trace.instances) if u is t)
    y0, x0 = t.bbox[:2]
    xs, ys = (np.asarray(t.points) - np.float32([x0, y0])).astype(int).T
    instances.append({
        "trace_index": index, "stage": t.stage, "class_id": t.class_id,
        "class_name": info.class_names[t.class_id],
        "bbox": list(t.bbox), "view": list(_view(t.bbox, trace.working_hw)),
        "mask": output.rle_encode(t.mask), "area": int(t.mask.sum()),
        "points": np.asarray(t.points).tolist(), "grid": t.grid,
        "grid_edges": t.grid_edges, "cells": t.cells,
        "field_at_points": None if t.field is None else t.field[ys, xs].round(4),
        "candidates": [output.rle_encode(m) for m in t.candidates],
        "scores": np.round(t.scores, 4), "coverage": t.coverage, "compatibility": t.compatibility,
        "chosen": t.chosen, "qualified": t.qualified, "lowres": t.lowres})
  return {
      "id": item["id"], "weak_kind": weak_kind, "backend": result.info.get("backend"),
      "oracle": bool(result.info.get("oracle")), "working_hw": list(trace.working_hw),
      "class_names": list(info.class_names), "colors": info.colors,
      "labels": {k: output.rle_encode(v) for k, v in labels.items()},
      "miou": {k: output.per_image_miou(v, fine, c) for k, v in labels.items() if k != "fine"},
      "instances_total": len(stage2), "instances": instances}


def draw(data: dict, trace: Any, image: np.ndarray, path: str | os.PathLike, *,
         dpi: int = 100) -> dict:
  """Draws one image's figure and saves it with `data` beside it.

  Args:
    data: `figure_data`'s dict.
    trace: the RefineTrace it was made from (working-resolution image, sampling fields).
    image: the full-resolution image (HxWx3 uint8).
    path: the PNG to write.
    dpi: resolution of the PNG.
  """
  plt = output.pyplot()
  colors = np.asarray(data["colors"], np.uint8)
  names = data["class_names"]
  labels = {k: output.rle_decode(v) for k, v in data["labels"].items()}
  # Row heights follow the panels' aspect ratios (columns are 3 inches wide).
  h, w = image.shape[:2]
  ratios = [h / w] + [min(max((v[2] - v[0]) / (v[3] - v[1]), 0.4), 1.2)
                      for v in (inst["view"] for inst in data["instances"])]
  fig, axes = plt.subplots(len(ratios), 5, squeeze=False,
                           figsize=(15, 3 * sum(ratios) + 0.35 * len(ratios)),
                           gridspec_kw={"height_ratios": ratios})
  for ax in axes.ravel():
    ax.set_axis_off()
  titles = {"weak": f"weak ({data['weak_kind']})", "coarse": "stage 1: coarse",
            "refined": f"SeSAM label ({data['backend']})", "fine": "fine"}
  axes[0, 0].imshow(image)
  axes[0, 0].set_title(data["id"], fontsize=8)
  for ax, (key, label) in zip(axes[0, 1:], labels.items()):
    if key == "weak" and data["weak_kind"] == "points":
      label = output.thicken(label)  # Single-pixel clicks drawn 5 px wide.
    ax.imshow(output.colorize(label, colors), interpolation="nearest")
    score = data["miou"].get(key)
    ax.set_title(titles[key] + ("" if score is None else f", mIoU {score:.3f}"), fontsize=8)
  present = [int(v) for v in np.unique(labels["fine"]) if v < len(names)]
  output.legend(axes[0, -1], names, colors, present, loc="upper left",
                bbox_to_anchor=(1.0, 1.0))
  for row, inst in enumerate(data["instances"], start=1):
    _draw_instance(axes[row], inst, trace.instances[inst["trace_index"]], trace.image, colors)
  fig.tight_layout()
  return output.save(fig, path, data, dpi=dpi)


def _draw_instance(axes: Any, inst: dict, traced: Any, work: np.ndarray,
                   colors: np.ndarray) -> None:
  """One instance row: mask + grid + points, field + points, the three candidates."""
  vy0, vx0, vy1, vx1 = inst["view"]
  y0, x0, y1, x1 = inst["bbox"]
  crop = work[vy0:vy1, vx0:vx1]
  extent = (vx0 - 0.5, vx1 - 0.5, vy1 - 0.5, vy0 - 0.5)  # Image coordinates on the axes.
  mask = np.zeros(work.shape[:2], bool)
  mask[y0:y1, x0:x1] = output.rle_decode(inst["mask"])
  colour = np.asarray(colors[inst["class_id"]], np.float32) / 255.0
  points = np.asarray(inst["points"]).reshape(-1, 2)

  def show_points(ax):
    ax.scatter(points[:, 0], points[:, 1], s=28, c="white", edgecolors="black", linewidths=0.8,
               zorder=3)

  def shade(ax, m, rgb, alpha=0.55):
    layer = np.zeros((*m.shape, 4), np.float32)
    layer[m] = [*rgb, alpha]
    ax.imshow(layer[vy0:vy1, vx0:vx1], extent=extent, interpolation="nearest")

  ax = axes[0]
  ax.imshow(crop, extent=extent)
  shade(ax, mask, colour)
  if inst["grid_edges"] is not None:
    edges_y, edges_x = inst["grid_edges"]
    for e in edges_y:
      ax.plot([x0 - 0.5, x1 - 0.5], [y0 + e - 0.5] * 2, color="yellow", lw=0.7)
    for e in edges_x:
      ax.plot([x0 + e - 0.5] * 2, [y0 - 0.5, y1 - 0.5], color="yellow", lw=0.7)
  show_points(ax)
  grid = "" if inst["grid"] is None else f", grid {inst['grid'][0]}x{inst['grid'][1]}"
  ax.set_title(f"{inst['class_name']} instance ({inst['area']} px){grid}, "
               f"K={len(points)}", fontsize=8)
  ax = axes[1]
  if traced.field is not None:
    field = np.zeros(work.shape[:2], np.float32)
    field[y0:y1, x0:x1] = traced.field
    ax.imshow(field[vy0:vy1, vx0:vx1], extent=extent, cmap="magma", vmin=0, vmax=1)
    show_points(ax)
    ax.set_title("sampling probability (distance field)", fontsize=8)
  else:
    ax.set_title("no sampling field (this sampling strategy has none)", fontsize=8)
  for k, ax in enumerate(axes[2:5]):
    cand = output.rle_decode(inst["candidates"][k])
    ax.imshow(crop, extent=extent)
    shade(ax, cand, (0.1, 0.45, 0.95), alpha=0.5)
    ax.contour(np.arange(vx0, vx1), np.arange(vy0, vy1), mask[vy0:vy1, vx0:vx1].astype(float),
               levels=[0.5], colors="white", linewidths=0.8)
    show_points(ax)
    chosen = k == inst["chosen"]
    ax.set_title(f"candidate {k}: r={inst['coverage'][k]:.2f} p={inst['compatibility'][k]:.2f}"
                 f"{' (chosen)' if chosen else ''}", fontsize=8,
                 color=CHOSEN_COLOR if chosen else "black")
    if chosen:
      ax.set_axis_on()
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_edgecolor(CHOSEN_COLOR)
        spine.set_linewidth(3)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])


def visualize_refinement(source: Any, *, count: int, out_dir: str | os.PathLike, weak_kind: str,
                         backend: Any = "oracle", seed: int = 0,
                         weak_dir: str | os.PathLike | None = None, weak_fn: Any = None,
                         max_instances: int = 3, dpi: int = 100, **config_kw: Any) -> dict:
  """Figure 2 / 12 for the first `count` images of `source` (`sesam refine --visualize N`).

  Refines each image again in this process with `RefineConfig(trace=True)` and the same
  settings as `refine_labels.refine_dataset` (results are deterministic in seed and image id,
  so the figure shows the label `sesam refine` wrote).

  Args:
    source: the dataset source.
    count: number of images (the first ones).
    out_dir: folder for `<id>.png` figures and `<id>.json` data.
    weak_kind, backend, seed, weak_dir, weak_fn, **config_kw: as `refine_dataset`.
    max_instances: instances drawn per image (the largest).
    dpi: resolution of the PNGs.

  Returns:
    {"figures": [PNG paths], "data": [JSON paths]}.
  """
  cfg = RefineConfig(weak_kind=weak_kind, trace=True, **config_kw).validate()
  bk = (resolver.resolve(backend) if isinstance(backend, str) else backend).build()
  out = pathlib.Path(out_dir)
  written: dict[str, list[str]] = {"figures": [], "data": []}
  count = min(count, len(source))
  for i in report.progress(range(count), desc="visualize", total=count, unit="img"):
    item = source[i]
    weak = refine_labels.weak_label_of(source, i, item, weak_kind=weak_kind, seed=seed,
                                       weak_dir=weak_dir, weak_fn=weak_fn)
    request = RefineRequest(item["id"], item["image"], weak,
                            fine=item["label"] if bk.is_oracle else None)
    result = refine(bk, request, cfg, seed=seed)
    data = figure_data(item, weak, result, source.info, weak_kind=weak_kind,
                       max_instances=max_instances)
    paths = draw(data, result.trace, item["image"], out / f"{item['id']}.png", dpi=dpi)
    written["figures"].append(paths["figure"])
    written["data"].append(paths["data"])
  report.log(f"visualize: {count} figures -> {out}")
  return written
