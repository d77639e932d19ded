"""Figure 4 of the paper for the user's runs: annotation hours against val mIoU.

Each run is one point: x = the hours its training labels cost (`sesam_jax.cost`: minutes per
image of its label kind times its number of training images), y = its student's val mIoU. Runs of
one label kind and method form a line (over budgets, i.e. numbers of training images); runs on
fine labels with supervised training are the reference (dashed, black).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from sesam_jax import cost, report
from sesam_jax.plots import output, runs as runs_lib

KIND_ORDER = ("points", "scribbles", "coarse", "fine")


def cost_lines(points: Sequence[dict]) -> list[dict]:
  """`runs.cost_points` grouped into lines: one per (label kind, method), sorted by hours."""
  lines: dict[str, dict] = {}
  for p in points:
    line = lines.setdefault(p["kind"], {"label": p["kind"], "weak": p["weak"],
                                        "method": p["method"], "reference": p["kind"] == "fine",
                                        "points": []})
    line["points"].append({k: p[k] for k in ("hours", "val_miou", "train_images", "workdir",
                                             "val_miou_from")})
  for line in lines.values():
    line["points"].sort(key=lambda q: q["hours"])
  order = {k: i for i, k in enumerate(KIND_ORDER)}
  return sorted(lines.values(), key=lambda l: (l["reference"], order.get(l["weak"], 9),
                                               l["method"]))


def plot_cost(paths: Sequence[str | os.PathLike], *, out: str | os.PathLike,
              minutes_per_image: Mapping[str, float] | None = None, dpi: int = 100) -> dict:
  """Draws hours vs mIoU for the runs under `paths` (`sesam plot cost`).

  Args:
    paths: workdirs, or folders holding workdirs.
    out: the PNG to write (data beside it as JSON).
    minutes_per_image: the cost model (default `sesam_jax.cost.MINUTES_PER_IMAGE`).
    dpi: resolution of the PNG.

  Returns:
    {"figure", "data", "runs", "lines": [{"label", "points"}]}.
  """
  plt = output.pyplot()
  runs = runs_lib.read_runs(paths)
  minutes = dict(minutes_per_image or cost.MINUTES_PER_IMAGE)
  lines = cost_lines(runs_lib.cost_points(runs, minutes))
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  cycle = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
  for line in lines:
    hours = [p["hours"] for p in line["points"]]
    miou = [p["val_miou"] for p in line["points"]]
    style = (dict(color="black", linestyle="--", marker="s") if line["reference"]
             else dict(color=next(cycle), marker="o"))
    ax.plot(hours, miou, label=line["label"] + (" (reference)" if line["reference"] else ""),
            **style)
    for p in line["points"]:
      ax.annotate(f"{p['train_images']} img", (p["hours"], p["val_miou"]), fontsize=6,
                  textcoords="offset points", xytext=(3, 3))
  ax.set_xscale("log")
  from matplotlib import ticker
  ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))  # 0.5, 20, 100
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set_xlabel("annotation hours (log scale)")
  ax.set_ylabel("val mIoU (student)")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  data = {"x": "annotation hours", "y": "val mIoU (student)", "minutes_per_image": minutes,
          "lines": lines}
  paths_out = output.save(fig, out, data, dpi=dpi)
  report.log(f"cost: {len(runs)} runs, {len(lines)} lines -> {paths_out['figure']}")
  return {**paths_out, "runs": len(runs),
          "lines": [{"label": l["label"], "points": [[p["hours"], p["val_miou"]]
                                                     for p in l["points"]]} for l in lines]}
