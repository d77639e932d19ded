"""The paper's published figures (val mIoU in %), for `sesam report` to print beside each cell.

From the SeSAM paper: Table 1 (PASCAL VOC, DeepLabV3+ ResNet-101), Table 2 (SegFormer-B0 and
DeepLabV3+ ResNet-101 on Cityscapes, ADE20K, VOC), Tables 3 and 4 (SegFormer-B0 on Cityscapes
coarse, by row label of `grid.TABLES`) and Table 5 (SAM versions: precision / recall / F1 of the
labels SAM adds to Cityscapes coarse). Rows of methods this project does not train (DeepLabV2
methods, DBFNet, TEL, AGMM) are kept so that a method added later finds its figure; "-" cells of
the paper are absent. Figure 4 is a plot: it has no figures here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from sesam_jax.experiments import grid

_SEGFORMER, _DEEPLAB = "segformer_b0", "deeplabv3plus_r101"
_METHODS = ("supervised", "fixmatch", "agmm", "sam_baseline", "sesam")

# Table 1: VOC, DeepLabV3+ (weak kind, method) -> mIoU.
TABLE1 = {("scribbles", "supervised"): 69.7, ("scribbles", "fixmatch"): 71.3,
          ("scribbles", "agmm"): 76.7, ("scribbles", "sam_baseline"): 70.3,
          ("scribbles", "sesam"): 78.1, ("points", "supervised"): 61.6,
          ("points", "fixmatch"): 68.4, ("points", "agmm"): 68.7,
          ("points", "sam_baseline"): 38.4, ("points", "sesam"): 75.3}


def _table2() -> dict[tuple[str, str, str, str], float]:
  """Table 2 as {(dataset, model, weak, method): mIoU}; AGMM is the paper's AGMM*."""
  columns = ((_SEGFORMER, "cityscapes"), (_SEGFORMER, "ade20k"), (_SEGFORMER, "voc"),
             (_DEEPLAB, "cityscapes"), (_DEEPLAB, "ade20k"))
  rows = {  # Per weak kind, the methods in _METHODS order; None where the paper has "-".
      "points": ((51.8, 26.5, 61.5, 52.2, 29.5), (53.1, 27.2, 63.6, 52.9, 29.8),
                 (53.4, None, 56.6, 52.4, None), (51.0, 29.3, 59.0, 50.0, 35.1),
                 (58.5, 32.6, 67.5, 61.7, 36.3)),
      "scribbles": ((62.6, 35.5, 66.4, 63.8, 39.6), (64.2, 35.8, 67.1, 64.8, 40.4),
                    (56.7, None, 68.1, 67.4, None), (24.2, 10.6, 34.8, 26.3, 11.2),
                    (71.5, 36.9, 71.4, 75.1, 43.5)),
      "coarse": ((65.2, 35.7, 62.8, 67.9, 40.9), (66.7, 36.7, 63.6, 68.9, 41.3),
                 (57.1, None, 58.6, 70.6, None), (42.4, 23.5, 22.3, 47.9, 26.9),
                 (69.9, 37.4, 70.1, 72.4, 43.2)),
  }
  out = {}
  for weak, per_method in rows.items():
    for method, values in zip(_METHODS, per_method):
      for (model, dataset), value in zip(columns, values):
        if value is not None:
          out[(dataset, model, weak, method)] = value
  for (model, dataset), value in zip(columns, (76.0, 38.1, 73.5, 80.2, 44.6)):
    out[(dataset, model, "fine", "supervised")] = value
  return out


TABLE2 = _table2()
# Table 6: Cityscapes coarse, DeepLabV3+-R101, batch 4, crop 1024, one GPU; method ->
# (seconds per iteration, GPU memory in GB as printed, mIoU).
TABLE6 = {"fixmatch": (0.24, 22.3, 68.9), "agmm": (1.56, 60.8, 70.6), "sesam": (0.81, 22.7, 72.4)}
# Tables 3 and 4: row label of grid.TABLES -> mIoU (Cityscapes coarse, SegFormer-B0).
ROWS = {"3a base (FixMatch)": 65.2, "3a +instance": 68.6, "3a +instance +mask selection": 68.9,
        "3a +instance +prompt sampling": 69.1,
        "3a +instance +mask selection +prompt sampling": 69.4,
        "3a all (+refined sampling)": 69.9, "3b without instance": 67.9,
        "3b with instance": 69.9, "3c without refined sampling": 69.4,
        "3c with refined sampling": 69.9,
        "4a high confidence": 68.6, "4a center": 68.4, "4a boundary": 68.8, "4a random": 69.4,
        "4a ours": 69.9, "4b best score": 69.0, "4b random": 68.8, "4b ours": 69.9,
        "4c bbox": 68.3, "4c mask": 63.4, "4c point": 69.9}
# Table 5: SAM version -> (precision, recall, F1) in % of the labels SAM adds.
TABLE5 = {"sam": (92.2, 62.7, 74.7), "sam2": (92.8, 61.8, 74.2), "sam3": (92.1, 61.9, 73.9)}

_TABLE_DIR = re.compile(r"^(table\d+|fig\d+)$")


def table_of(workdir: str | os.PathLike) -> str | None:
  """The table a workdir of `sesam reproduce` belongs to (its `tableN` folder), or None."""
  names = [p for p in str(workdir).split(os.sep) if _TABLE_DIR.match(p)]
  return names[-1] if names else None


def _short(fields: Sequence[tuple[str, Any]]) -> frozenset:
  return frozenset((name.rsplit(".", 1)[-1], value) for name, value in fields)


def paper_miou(table: str | None, dataset: str, model: str, weak: str, method: str,
               variant: Sequence[tuple[str, Any]] = (), budget: int = 0) -> float | None:
  """The paper's mIoU (%) for a cell, or None where the paper has none.

  Args:
    table: "table1" ... (None: the run is not under a table folder; Tables 1-2 are looked up).
    dataset, model: the column (`config.dataset.name`, `config.model`).
    weak, method: the row.
    variant: the ablation fields that differ from the defaults, ((short name, value), ...).
    budget: `dataset.max_train_images` (0 = all).
  """
  if budget:
    return None  # Figure 4 is a plot.
  spec = grid.TABLES.get(table or "")
  if spec is not None and spec.variants:
    if (dataset, model) != ("cityscapes", _SEGFORMER):
      return None
    for row in spec.variants:
      if row.method == method and _short(row.fields) == _short(variant) and (
          row.weak is None or weak in row.weak):
        figures = [ROWS[r] for r in row.rows if r in ROWS]
        return figures[0] if figures and weak == "coarse" else None
    return None
  if variant or table not in (None, "table1", "table2"):
    return None
  if table in (None, "table1") and (dataset, model) == ("voc", _DEEPLAB):
    return TABLE1.get((weak, method)) if weak != "fine" else None
  return TABLE2.get((dataset, model, weak, method))
