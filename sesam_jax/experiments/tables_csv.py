"""`sesam report`'s records: the table as CSV rows, and the cost-vs-mIoU data (Figure 4).

`csv_rows` gives one record per cell (`run_groups.Group`: every seed of one configuration).
Fractions are 0-1 and percentages `_pct`, rounded to 4 decimals; empty where undefined:

  dataset, model                 the column
  weak                           the training labels' kind (also `labels`, as before)
  labels, method, prior,         the row: `prior` is the SAM backend of a SAM method
  variant, budget, init,         (`config.sam.backend`: superpixel, oracle, transformers, ...;
  labels from                    empty without SAM), `variant` the ablation fields
  seeds                          finished runs averaged (one per seed)
  miou_mean, miou_std            val mIoU (student, or EMA teacher with `ema`): mean, sample std
  wvf                            miou_mean over the weak=fine supervised cell's (fraction)
  final_coverage_sam,            SAM-labelled share of the last logged batch, and the share of
  final_precision_sam            those pixels whose SAM label matches the fine label (means)
  cpu_seconds                    CPU seconds of the training process and its children (mean)
  miou_pct, miou_std_pct, ...    the same in %, the paper's figure and the difference, WvF in %,
                                 training images, annotation hours, coverage of each source in %
  wall_seconds                   train + SAM pre-warm + eval seconds (mean)
  runs, finished, status,        how many runs the cell has and how far they are
  unfinished_workdirs, workdirs
  command                        the `sesam train` command of the cell's first seed, as
                                 `sesam reproduce --run` ran it (its reproduce.log; empty for
                                 runs started by hand)

The cost-vs-mIoU data's format is in `summary`'s docstring.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

from sesam_jax import cost
from sesam_jax.atomic import write_atomic
from sesam_jax.experiments import run_groups
from sesam_jax.run.layout import RESULT


def csv_rows(groups: Sequence[run_groups.Group], *, ema: bool = False,
             minutes_per_image: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
  """The table as flat records (one per cell; columns in the module docstring)."""
  out = []
  for g in groups:
    fields = run_groups.row_fields(g)
    coverage = {f"coverage_{k}_pct": _scaled(g.mean(f"final_coverage_{k}"))
                for k in run_groups.COVERAGE}
    out.append({"dataset": g.column[0], "model": g.column[1], "weak": g.row[0], **fields,
                "seeds": len(g.miou), "miou_mean": _round(g.miou_mean),
                "miou_std": _round(g.miou_std),
                "wvf": _round(None if g.wvf is None else g.wvf / 100.0),
                "final_coverage_sam": _round(g.mean("final_coverage_sam")),
                "final_precision_sam": _round(g.mean("final_precision_sam")),
                "cpu_seconds": _round(g.mean("cpu_seconds")),
                "miou_pct": _scaled(g.miou_mean), "miou_std_pct": _scaled(g.miou_std),
                "miou_of": "ema" if ema else "student", "paper_miou_pct": g.paper(),
                "miou_diff_pct": _round(g.paper_diff()), "wvf_pct": _round(g.wvf),
                "train_images": g.train_images(), "hours": _round(g.hours(minutes_per_image)),
                **coverage, "wall_seconds": _round(g.wall_seconds()), "runs": len(g.runs),
                "finished": len(g.finished),
                "status": "finished" if not g.unfinished else
                          ("unfinished" if not g.finished else "partly finished"),
                "unfinished_workdirs": ";".join(str(r.workdir) for r in g.unfinished),
                "workdirs": ";".join(str(r.workdir) for r in g.runs),
                "command": g.command()})
  return out


def write_csv(path: str, records: Sequence[Mapping[str, Any]]) -> None:
  """The records as CSV (one header line, then one line per cell), written atomically."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(records[0]) if records else ["dataset"])
  writer.writeheader()
  writer.writerows(records)
  write_atomic(path, buffer.getvalue())


def _round(value: float | None) -> float | None:
  return None if value is None else round(value, 4)


def _scaled(value: float | None) -> float | None:
  return None if value is None else round(100.0 * value, 4)


def cost_points(groups: Sequence[run_groups.Group], *, ema: bool = False,
                minutes_per_image: Mapping[str, float] | None = None) -> dict[str, Any]:
  """The data of the cost-vs-mIoU plot (Figure 4), in the format of the module docstring."""
  minutes = dict(minutes_per_image or cost.MINUTES_PER_IMAGE)
  lines: dict[tuple, dict] = {}
  mixed = len({g.row[4:] for g in groups}) > 1  # Several inits or label sources: name them.
  for g in groups:
    hours = g.hours(minutes)
    if not g.miou or hours is None:
      continue
    weak, method, variant, _, init, source, prior = g.row
    reference = weak == "fine" and method == "supervised" and not variant
    label = "fine" if reference else f"{weak}, {method}"
    if variant:
      label += f" ({run_groups.variant_text(variant)})"
    if prior:
      label += f" ({prior})"
    if mixed:
      label += f" [{init}, {source}]"
    line = lines.setdefault((g.column, weak, method, variant, init, source, prior), {
        "label": label, "weak": weak, "method": method, "variant": run_groups.variant_text(variant),
        "dataset": g.column[0], "model": g.column[1], "reference": reference, "points": []})
    line["points"].append({
        "hours": round(hours, 4), "val_miou": g.miou_mean, "val_miou_std": g.miou_std,
        "seeds": len(g.miou), "train_images": g.train_images(),
        "workdir": str(g.finished[0].workdir), "workdirs": [str(r.workdir) for r in g.finished],
        "val_miou_from": RESULT})
  for line in lines.values():
    line["points"].sort(key=lambda p: p["hours"])
  if len({key[0] for key in lines}) > 1:  # Several datasets/students: say which in the label.
    for (column, *_), line in lines.items():
      line["label"] = f"{column[1]} {column[0]}: {line['label']}"
  return {"format": "sesam-cost-points/1", "x": "annotation hours",
          "y": f"val mIoU ({'EMA teacher' if ema else 'student'})",
          "minutes_per_image": minutes, "lines": list(lines.values()),
          "unfinished": [str(r.workdir) for g in groups for r in g.unfinished]}
