"""The paper's tables as data: which `sesam train` runs fill each cell (Tables 1-4, 6, Figure 4).

A cell is one run: the config file `configs/<student>_<dataset>.py` with `weak=...,method=...`,
ablation fields set with `--config.a.b=value` (Tables 3-4), a training-set budget
(`dataset.max_train_images`, Figure 4) and a seed. `expand()` turns a table into its cells for
the chosen columns (dataset x student), weak kinds, methods, budgets and seeds. What this project
cannot run (DeepLabV2, prior methods other than the baselines and AGMM*) is named in
`Table.left_out`; cells the paper leaves empty (AGMM* on ADE20K) in `Table.not_on`.

  table   paper columns (student, dataset)                     rows
  table1  DeepLabV3+ on VOC                                    {scribbles, points} x method + fine
  table2  SegFormer: Cityscapes, ADE20K, VOC; DeepLabV3+:      {points, scribbles, coarse} x method
          Cityscapes, ADE20K                                   + fine (16 per column; 13 on
                                                               ADE20K: no AGMM*)
  table3  SegFormer on Cityscapes, coarse (3c: and points)     FixMatch base, SeSAM components
  table4  SegFormer on Cityscapes, coarse                      sampling, selection, prompt choices
  table5  SAM versions (label level)                           `sesam refine` of Cityscapes
                                                               val coarse with SAM, SAM 2.1, SAM 3
  table6  DeepLabV3+ on Cityscapes, coarse, batch 4, crop 1024  FixMatch, AGMM, SeSAM: `sesam
                                                               bench` cells (s/iter, memory);
                                                               mIoU from Table 2's runs
  fig4    SegFormer on Cityscapes                              {points, scribbles, coarse} x SeSAM
                                                               + fine, at 100/500/1500/all images
  camvid  CamVid, the CPU protocol's deeplabv3plus_tiny (not  {points, scribbles, coarse} x
          a paper table: issue 25's evidence that SeSAM learns) baselines, SeSAM with superpixel /
                                                               oracle prior, AGMM* + fine (26 runs)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from sesam_jax import configs_common
from sesam_jax.methods import METHODS, WEAK_KINDS

# Rows of every weak kind; "fine" with `supervised` is the WvF reference (the upper bound).
FINE = "fine"
REFERENCE_METHOD = "supervised"
# `dataset.max_train_images` of 0: the whole training split.
ALL_IMAGES = 0
# The paper's students (section 4.1: SegFormer MiT-B0, DeepLabV3+ ResNet-101) and datasets.
PAPER_MODELS = {"segformer": "segformer_b0", "deeplabv3plus": "deeplabv3plus_r101"}
PAPER_DATASETS = ("cityscapes", "ade20k", "voc")
# The config field that names a cell's SAM backend (its prior), when the cell sets it.
SAM_BACKEND_FIELD = "sam.backend"
# Tables whose cells train students at the paper's schedules: they start from ImageNet weights.
PAPER_TABLES = ("table1", "table2", "table3", "table4", "table6", "fig4")


@dataclasses.dataclass(frozen=True)
class Variant:
  """One run of an ablation table: a method with config fields set.

  Attributes:
    rows: the paper's row labels this run fills (one run can fill several rows).
    method: `config.method`.
    fields: ((dotted config field, value), ...) set on the command line.
    weak: the weak kinds this run is made for (None: every weak kind of the table).
    seeds: the seeds of this row when the user gives none (None: seed 0).
  """
  rows: tuple[str, ...]
  method: str
  fields: tuple[tuple[str, Any], ...] = ()
  weak: tuple[str, ...] | None = None
  seeds: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Table:
  """One table (or figure) of the paper as a grid of runs.

  Attributes:
    name: "table1" ... "fig4" (also the first folder of its workdirs).
    title: one line saying what the paper measures there.
    columns: the paper's (student, dataset) columns; the student is a config-file prefix.
    weak_kinds: the weak kinds of the rows.
    methods: the methods of the weak rows (None: every method of `METHODS`).
    variants: for ablation tables, the runs of the rows instead of plain methods.
    fine_reference: whether the weak=fine supervised run belongs to each column (WvF needs it).
    budgets: `dataset.max_train_images` values crossed with the rows (0 = all images).
    left_out: ((what, why), ...): the paper's rows this project cannot run.
    notes: what still differs from the paper in the rows it runs.
    kind: "train" (each cell a `sesam train` run), "labels" (each cell a `sesam refine` of a
      split, scored at label level: `label_grid`; the column's "student" is the labeler) or
      "bench" (each cell `sesam bench` runs of one method: `bench_grid`).
    not_on: ((method, dataset), ...): cells the paper leaves empty (no run), named in left_out.
    config_args: `key=val,flag` arguments of every cell's config file (e.g. "cpu"), before the
      user's (`sesam reproduce --runlocal` / `--tiny`).
    shared_sam_cache: the SAM cells share one embedding cache, `ROOT/<table>/sam_cache`
      (`config.sam.cache_dir`): the same images encoded (or segmented) once for the grid.
  """
  name: str
  title: str
  columns: tuple[tuple[str, str], ...]
  weak_kinds: tuple[str, ...]
  methods: tuple[str, ...] | None = None
  variants: tuple[Variant, ...] = ()
  fine_reference: bool = True
  budgets: tuple[int, ...] = (ALL_IMAGES,)
  left_out: tuple[tuple[str, str], ...] = ()
  notes: tuple[str, ...] = ()
  kind: str = "train"
  not_on: tuple[tuple[str, str], ...] = ()
  config_args: str = ""
  shared_sam_cache: bool = False


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of a table.

  Attributes:
    table: the table's name.
    student: config-file prefix ("segformer", "deeplabv3plus").
    dataset: config-file suffix ("cityscapes", ...).
    weak: training labels (`config.weak`).
    method: `config.method`.
    fields: ablation fields set on the command line, ((dotted name, value), ...).
    budget: `dataset.max_train_images` (0 = all images).
    seed: `config.seed`.
    rows: the paper's row labels the run fills (ablation tables).
  """
  table: str
  student: str
  dataset: str
  weak: str
  method: str
  fields: tuple[tuple[str, Any], ...] = ()
  budget: int = ALL_IMAGES
  seed: int = 0
  rows: tuple[str, ...] = ()

  def relpath(self, model: str) -> str:
    """The workdir under the sweep's root, e.g. `table2/cityscapes/segformer_b0/points/sesam/seed0`.

    Args:
      model: the student the config trains (`config.model`), so that the path names it.
    """
    parts = [self.table, self.dataset, model, self.weak, self.method]
    if self.fields:
      parts.append(variant_slug(self.fields))
    if self.budget != ALL_IMAGES or self.table == "fig4":
      parts.append(f"n{self.budget}" if self.budget else "nall")
    parts.append(f"seed{self.seed}")
    return "/".join(parts)

  @property
  def sam_backend(self) -> str | None:
    """The SAM backend (prior) the cell names itself (`sam.backend` field), else None."""
    return next((str(v) for f, v in self.fields if f == SAM_BACKEND_FIELD), None)


def variant_slug(fields: Sequence[tuple[str, Any]]) -> str:
  """A folder name for ablation fields, e.g. `refined_sampling-off+sampling-center`."""
  def text(value: Any) -> str:
    if isinstance(value, bool):
      return "on" if value else "off"
    return str(value)
  return "+".join(f"{name.rsplit('.', 1)[-1]}-{text(value)}" for name, value in sorted(fields))


_SAM_DEFAULTS = configs_common.base_config().sam  # What a cell does not set (stated in notes).
_NO_REFINED = ("sam.refined_sampling", False)  # Table 3c: prompts from the weak label alone.
_COARSE = ("coarse",)  # Rows the paper reports on coarse labels only.
_SEGFORMER_CITYSCAPES = (("segformer", "cityscapes"),)
_BASELINES_ONLY = ("prior methods", "not implemented in this project; it trains the paper's "
                   "baselines (Supervised, FixMatch, SAM baseline), AGMM* and SeSAM")
# The CamVid protocol (issue 25): priors named on each SAM cell's command line.
_SUPERPIXEL = ((SAM_BACKEND_FIELD, "superpixel"),)
_ORACLE = ((SAM_BACKEND_FIELD, "oracle"),)
_THREE_SEEDS = (0, 1, 2)
_SPREAD_KINDS = ("points", "coarse")  # Where supervised and SeSAM get three seeds.

TABLES: dict[str, Table] = {t.name: t for t in (
    Table("table1", "PASCAL VOC 2012, DeepLabV3+: scribbles and points, mIoU and WvF",
          columns=(("deeplabv3plus", "voc"),), weak_kinds=("scribbles", "points"),
          left_out=(("Pan et al., SPML, A2GNN (DeepLabV2 rows)",
                     "DeepLabV2 is not a student here (DeepLabV3+ and SegFormer are)"),
                    ("DBFNet, TEL", _BASELINES_ONLY[1]),
                    ("AGMM (its authors' row)", "the published figures of AGMM's own recipe "
                     "(SGD); the AGMM* row (method agmm, this project's recipe) is run"))),
    Table("table2", "Cityscapes, ADE20K, VOC with SegFormer-B0 and DeepLabV3+: every weak kind "
          "and method, and fine labels",
          columns=(("segformer", "cityscapes"), ("segformer", "ade20k"), ("segformer", "voc"),
                   ("deeplabv3plus", "cityscapes"), ("deeplabv3plus", "ade20k")),
          weak_kinds=("points", "scribbles", "coarse"),
          left_out=(("AGMM* on ADE20K", "the paper has no AGMM* cells for ADE20K (out of "
                     "memory at 150 classes in the public code)"),),
          not_on=(("agmm", "ade20k"),)),
    Table("table3", "SeSAM components on Cityscapes coarse (a), instance separation (b), "
          "refined-mask sampling (c)",
          columns=_SEGFORMER_CITYSCAPES, weak_kinds=("coarse", "points"), fine_reference=False,
          variants=(
              Variant(("3a base (FixMatch)",), "fixmatch", weak=_COARSE),
              Variant(("3a +instance",), "sesam",
                      (("sam.sampling", "confidence"), ("sam.selection", "best_score"),
                       _NO_REFINED), weak=_COARSE),
              Variant(("3a +instance +mask selection",), "sesam",
                      (("sam.sampling", "confidence"), _NO_REFINED), weak=_COARSE),
              Variant(("3a +instance +prompt sampling",), "sesam",
                      (("sam.selection", "best_score"), _NO_REFINED), weak=_COARSE),
              Variant(("3a +instance +mask selection +prompt sampling",
                       "3c without refined sampling"), "sesam", (_NO_REFINED,)),
              Variant(("3a all (+refined sampling)", "3b with instance",
                       "3c with refined sampling"), "sesam"),
              Variant(("3b without instance",), "sesam", (("sam.instances", False),),
                      weak=_COARSE),
          ),
          notes=("3c's points column: the paper gives only the gain of refined sampling "
                 "(+2.5 mIoU), no absolute figure; the points runs fill 3c only",
                 "3a's base row is FixMatch on coarse labels; the paper prints 65.2 here and "
                 "66.7 for the same set-up in Table 2")),
    Table("table4", "SeSAM design choices on Cityscapes coarse: point sampling (a), mask "
          "selection (b), prompt type (c)",
          columns=_SEGFORMER_CITYSCAPES, weak_kinds=("coarse",), fine_reference=False,
          variants=(
              Variant(("4a high confidence",), "sesam", (("sam.sampling", "confidence"),)),
              Variant(("4a center",), "sesam", (("sam.sampling", "center"),)),
              Variant(("4a boundary",), "sesam", (("sam.sampling", "boundary"),)),
              Variant(("4a random",), "sesam", (("sam.sampling", "random"),)),
              Variant(("4b best score",), "sesam", (("sam.selection", "best_score"),)),
              Variant(("4b random",), "sesam", (("sam.selection", "random"),)),
              Variant(("4c bbox",), "sesam", (("sam.prompt", "box"),)),
              Variant(("4c mask",), "sesam", (("sam.prompt", "mask"),)),
              Variant(("4a ours", "4b ours", "4c point"), "sesam"),
          )),
    Table("table5", "SAM versions: precision / recall / F1 of the labels SAM adds to Cityscapes "
          "coarse labels (validation split)",
          columns=(("sam", "cityscapes"),), weak_kinds=("coarse",), fine_reference=False,
          kind="labels", variants=tuple(
              Variant((row,), "refine", (("sam_version", version),)) for version, row in (
                  ("sam", "SAM (ViT-B)"), ("sam2", "SAM 2.1 (Hiera-B+)"), ("sam3", "SAM 3"))),
          notes=("each cell runs `sesam refine` of the whole validation split with the "
                 "transformers backend on `sesam refine --device` (cpu unless `--device cuda` "
                 "follows the flags); its refinement is SeSAM's first round, from the weak "
                 "label alone (no teacher extension), as the paper describes Table 5",
                 "the paper names SAM 3's checkpoint only as 'the only publicly released model'")),
    Table("table6", "runtime and memory on Cityscapes coarse with DeepLabV3+-R101, batch 4, "
          "crop 1024: FixMatch, AGMM and SeSAM (s/iter and memory: `sesam bench`; mIoU: "
          "Table 2's DeepLabV3+ Cityscapes coarse runs)",
          columns=(("deeplabv3plus", "cityscapes"),), weak_kinds=("coarse",),
          fine_reference=False, kind="bench",
          variants=(Variant(("Fixmatch",), "fixmatch"), Variant(("AGMM",), "agmm"),
                    Variant(("Ours",), "sesam"))),
    Table("fig4", "annotation cost vs mIoU on Cityscapes: each weak kind with SeSAM and fine "
          "labels at 100, 500, 1500 and all (2975) training images",
          columns=_SEGFORMER_CITYSCAPES, weak_kinds=("points", "scribbles", "coarse"),
          methods=("sesam",), budgets=(100, 500, 1500, ALL_IMAGES)),
    Table("camvid", "CamVid with the CPU protocol's student (configs/segformer_camvid.py:cpu, "
          "a random-init deeplabv3plus_tiny): every weak kind with the baselines, SeSAM with "
          "the SAM-free superpixel prior and with the oracle prior (its upper bound), and fine "
          "labels",
          columns=(("segformer", "camvid"),), weak_kinds=("points", "scribbles", "coarse"),
          config_args="cpu", shared_sam_cache=True,
          variants=(
              Variant(("Supervised",), "supervised", weak=_SPREAD_KINDS, seeds=_THREE_SEEDS),
              Variant(("Supervised",), "supervised", weak=("scribbles",)),
              Variant(("FixMatch",), "fixmatch"),
              Variant(("SAM baseline (superpixel)",), "sam_baseline", _SUPERPIXEL),
              Variant(("SeSAM (superpixel)",), "sesam", _SUPERPIXEL, weak=_SPREAD_KINDS,
                      seeds=_THREE_SEEDS),
              Variant(("SeSAM (superpixel)",), "sesam", _SUPERPIXEL, weak=("scribbles",)),
              Variant(("SeSAM (oracle)",), "sesam", _ORACLE),
              Variant(("AGMM*",), "agmm", weak=("points", "scribbles")),
          ),
          left_out=(("AGMM* on coarse", "AGMM is a method for sparse labels (points, "
                     "scribbles); the paper's Table 2 runs it on coarse too"),),
          notes=("not a paper table: a random-init CPU-sized student on the CPU protocol; the "
                 "paper's claim checked is its ordering (SeSAM > FixMatch > Supervised per "
                 "weak kind)",
                 "every SAM cell names its prior: superpixel (the SAM-free stand-in, no SAM "
                 "weights) or oracle (components of the fine label: the refinement rules' upper "
                 "bound)",
                 "every SeSAM cell refreshes with the CPU protocol's settings, sam.refresh="
                 f"{_SAM_DEFAULTS.refresh} and sam.view=full (the prior segments each image "
                 "once; the cache, sam.cache_dir, is shared by the table's cells), every "
                 f"M={_SAM_DEFAULTS.refresh_every} steps",
                 "seeds 0, 1, 2 for supervised and SeSAM (superpixel) on points and coarse, "
                 "seed 0 elsewhere (--seeds gives every row the same seeds)")),
)}


def parse_budgets(text: str) -> tuple[int, ...]:
  """`--budgets 8,16,all` -> (8, 16, 0)."""
  out = []
  for item in text.split(","):
    item = item.strip()
    if item == "all":
      out.append(ALL_IMAGES)
    elif item.isdigit() and int(item) > 0:
      out.append(int(item))
    elif item:
      raise ValueError(f"--budgets {text!r}: {item!r} is not a positive number of training "
                       "images or 'all'.")
  if not out:
    raise ValueError("--budgets is empty; give e.g. --budgets 100,500,1500,all.")
  return tuple(dict.fromkeys(out))


def parse_seeds(text: str) -> tuple[int, ...]:
  """`--seeds 0,1,2` -> (0, 1, 2)."""
  items = [t.strip() for t in text.split(",") if t.strip()]
  if not items or not all(t.isdigit() for t in items):
    raise ValueError(f"--seeds {text!r}: give non-negative integers, e.g. --seeds 0,1,2.")
  return tuple(dict.fromkeys(int(t) for t in items))


def select_columns(table: Table, datasets: Sequence[str] | None,
                   students: Sequence[str] | None) -> tuple[list[tuple[str, str]], list[str]]:
  """The (student, dataset) columns to run, and the paper's columns not selected.

  With neither given: the paper's columns of the table's first student. `students=["all"]`:
  every student of the table. Datasets the paper does not use in this table are allowed (the
  same grid on other data), crossed with the chosen students.
  """
  paper_students = list(dict.fromkeys(s for s, _ in table.columns))
  if not students:
    chosen = paper_students[:1]
  elif list(students) == ["all"]:
    chosen = paper_students
  else:
    chosen = list(students)
  if datasets:
    columns = [(s, d) for s in chosen for d in datasets]
  else:
    columns = [(s, d) for s, d in table.columns if s in chosen]
    if not columns:
      raise ValueError(f"--student {','.join(students or [])}: the paper's {table.name} has "
                       f"columns for {', '.join(paper_students)} only; add --dataset to run "
                       "this student anyway.")
  # The paper's other students for the same datasets, when the student was not chosen.
  others = [] if students else [f"{s} {d}" for s, d in table.columns if s not in chosen and
                                (not datasets or d in datasets)]
  return columns, others


def expand(table_name: str, *, datasets: Sequence[str] | None = None,
           students: Sequence[str] | None = None, weak: Sequence[str] | None = None,
           methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
           budgets: Sequence[int] | None = None) -> tuple[list[Cell], list[str]]:
  """The cells of a table for the chosen columns and rows, in the paper's row order.

  Args:
    table_name: a key of TABLES.
    datasets: dataset columns (default: the paper's).
    students: config-file prefixes, or ["all"] (default: the table's first student).
    weak: weak kinds of the rows (default: the table's); the weak=fine reference stays in
      (WvF needs it), and `["fine"]` selects it alone.
    methods: methods of the rows (default: the table's); for ablation tables, a filter.
    seeds: one run per seed, every row (default: each row's own `Variant.seeds`, else seed 0).
    budgets: `dataset.max_train_images` values (0 = all; default: the table's).

  Returns:
    (cells, the paper's columns not selected, as "student dataset").
  """
  if table_name not in TABLES:
    raise ValueError(f"--table {table_name}: choose one of {', '.join(TABLES)}.")
  table = TABLES[table_name]
  columns, others = select_columns(table, datasets, students)
  for kind in weak or ():
    if kind not in WEAK_KINDS:
      raise ValueError(f"--weak {kind}: choose from {', '.join(WEAK_KINDS)}.")
  for name in methods or ():
    if name not in METHODS:
      raise ValueError(f"--methods {name}: choose from {', '.join(METHODS)}.")
  kinds = [k for k in (weak or table.weak_kinds) if k != FINE]
  if table.variants:
    rows = [v for v in table.variants if not methods or v.method in methods]
  else:
    rows = [Variant((), m) for m in (methods or table.methods or tuple(METHODS))]
  if not rows:
    raise ValueError(f"--methods {','.join(methods or [])}: {table.name} has no such rows "
                     f"(its methods: {', '.join(sorted({v.method for v in table.variants}))}).")
  cells = []
  for student, dataset in columns:
    for budget in (budgets or table.budgets):
      for kind in kinds:
        for row in rows:
          if ((row.weak is not None and kind not in row.weak)
              or (row.method, dataset) in table.not_on):
            continue
          cells += [Cell(table.name, student, dataset, kind, row.method, row.fields, budget, seed,
                         row.rows) for seed in (seeds or row.seeds or (0,))]
      if table.fine_reference:
        cells += [Cell(table.name, student, dataset, FINE, REFERENCE_METHOD, (), budget, seed,
                       ("fine",)) for seed in (seeds or (0,))]
  return cells, others
