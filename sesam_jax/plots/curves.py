"""Training curves of one or more runs from their metrics.jsonl: loss, val mIoU, label coverage.

Three panels against the step: `train/loss`; the validation mIoU of the student and of the EMA
teacher (`val/student_miou`, `val/ema_miou`); and the share of pixels each label source covers
in the logged training batch (`train/coverage_weak`, `_sam`, `_pseudo`). One colour per run,
one line style per metric.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from sesam_jax import report
from sesam_jax.plots import output, runs as runs_lib

# (panel title, y label, which metrics: exact names or a prefix ending in "_").
PANELS = (
    ("training loss", "loss", ("train/loss",)),
    ("validation mIoU", "mIoU", ("val/student_miou", "val/ema_miou")),
    ("label coverage (share of pixels)", "coverage", ("train/coverage_",)),
)
STYLES = ("-", "--", ":", "-.")


def _keys(rows: Sequence[dict], wanted: Sequence[str]) -> list[str]:
  present = sorted({k for row in rows for k in row})
  keys = []
  for w in wanted:
    if w.endswith("_"):
      keys += [k for k in present if k.startswith(w)]
    elif w in present:
      keys.append(w)
  return keys


def plot_curves(paths: Sequence[str | os.PathLike], *, out: str | os.PathLike,
                dpi: int = 100) -> dict:
  """Draws the curves of the runs under `paths` (`sesam plot curves`).

  Args:
    paths: workdirs, or folders holding workdirs.
    out: the PNG to write (data beside it as JSON).
    dpi: resolution of the PNG.

  Returns:
    {"figure", "data", "runs"}.
  """
  plt = output.pyplot()
  workdirs = runs_lib.find_workdirs(paths)
  fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4), squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  data_runs = []
  for r, workdir in enumerate(workdirs):
    run = runs_lib.read_run(workdir)
    rows = runs_lib.read_metrics(workdir)
    label = f"{workdir.name} ({run.kind})"
    entry = {"workdir": str(workdir), "label": label, "series": {}}
    for ax, (_, _, wanted) in zip(axes[0], PANELS):
      for k, key in enumerate(_keys(rows, wanted)):
        points = runs_lib.series(rows, key)
        entry["series"][key] = points
        ax.plot([p[0] for p in points], [p[1] for p in points], color=colors[r % len(colors)],
                linestyle=STYLES[k % len(STYLES)], marker="o" if len(points) < 3 else None,
                markersize=3, label=f"{label}: {key.split('/')[-1]}")
    data_runs.append(entry)
  for ax, (title, ylabel, _) in zip(axes[0], PANELS):
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=6)
    else:
      ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
  fig.tight_layout()
  data = {"x": "step", "panels": [{"title": t, "metrics": list(w)} for t, _, w in PANELS],
          "runs": data_runs}
  paths_out = output.save(fig, out, data, dpi=dpi)
  report.log(f"curves: {len(workdirs)} runs -> {paths_out['figure']}")
  return {**paths_out, "runs": len(workdirs)}
