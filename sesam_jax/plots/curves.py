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
from sesam_jax.plots import output
from sesam_jax.run import logs, runs as runs_lib

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
  from matplotlib.lines import Line2D
  plt = output.pyplot()
  workdirs = runs_lib.find_workdirs(paths)
  data_runs = []
  for workdir in workdirs:
    rows = logs.read_metrics(workdir)
    kind = runs_lib.open_run(workdir).kind
    entry = {"workdir": str(workdir), "label": f"{workdir.name} ({kind})", "series": {}}
    for _, _, wanted in PANELS:
      for key in _keys(rows, wanted):
        entry["series"][key] = logs.series(rows, key)
    data_runs.append(entry)
  fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6), squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, (title, ylabel, wanted) in zip(axes[0], PANELS):
    # One line style per metric across runs, one colour per run.
    keys = _keys([{k: 0 for run in data_runs for k in run["series"]}], wanted)
    styles = {k: STYLES[i % len(STYLES)] for i, k in enumerate(keys)}
    for r, run in enumerate(data_runs):
      for key in keys:
        points = run["series"].get(key, [])
        ax.plot([p[0] for p in points], [p[1] for p in points], color=colors[r % len(colors)],
                linestyle=styles[key], marker="o" if len(points) < 3 else None, markersize=3)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if not keys:
      ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    elif len(keys) > 1:
      ax.legend(handles=[Line2D([], [], color="grey", linestyle=s, label=k.split("/")[-1])
                         for k, s in styles.items()], fontsize=6)
  fig.legend(handles=[Line2D([], [], color=colors[r % len(colors)], label=run["label"])
                      for r, run in enumerate(data_runs)], loc="lower center", fontsize=7,
             ncol=min(len(data_runs), 4), frameon=False)
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  data = {"x": "step", "panels": [{"title": t, "metrics": list(w)} for t, _, w in PANELS],
          "runs": data_runs}
  paths_out = output.save(fig, out, data, dpi=dpi)
  report.log(f"curves: {len(workdirs)} runs -> {paths_out['figure']}")
  return {**paths_out, "runs": len(workdirs)}
