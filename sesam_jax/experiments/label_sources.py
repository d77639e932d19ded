"""Which weak labels a cell of `sesam reproduce` trains on: the paper's, where the user has them.

`--weak-labels` decides per weak kind:

  auto (default)  Cityscapes coarse from gtCoarse when it is under the dataset's --data-dir;
                  scribbles from `--scribbles [DATASET=]DIR` when given (ScribbleSup's XML files
                  for VOC, Scribbles4All's PNGs for Cityscapes and ADE20K: the folder's content
                  tells which reader); otherwise made from the fine labels (`sesam weak-labels`)
  paper           as auto, but a missing folder is an error naming it and the flag to give
  generated       always made from the fine labels (the project's protocols)

Points are always made from the fine labels: the paper's protocol, as no click release exists
for these datasets. The choice becomes the cell's `config.weak_source` (a reader spec of
`sesam_jax.data.weak_sources`; "" = generated), so config.json records it and `sesam report`
shows it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

MODES = ("auto", "paper", "generated")
GENERATED = "generated"
SCRIBBLE_RELEASES = {"voc": "ScribbleSup (scribblesup_xml)",
                     "cityscapes": "Scribbles4All (scribble_png)",
                     "ade20k": "Scribbles4All (scribble_png)"}


@dataclasses.dataclass(frozen=True)
class Choice:
  """The weak labels of one (dataset, weak kind).

  Attributes:
    spec: `config.weak_source` ("" = made from the fine labels).
    note: one line saying where they come from and why.
    missing: what `--weak-labels paper` (or an explicit folder) lacks, with the flag to give;
      "" when nothing is missing.
  """
  spec: str
  note: str
  missing: str = ""


def source_name(spec: str) -> str:
  """A weak_source spec as a report shows it: "generated", "cityscapes_coarse", ..."""
  return spec.partition(":")[0] if spec else GENERATED


def _scribble_spec(folder: str) -> str:
  """`scribblesup_xml:DIR` when DIR holds XML files (ScribbleSup), else `scribble_png:DIR`."""
  try:
    names = os.listdir(folder)
  except OSError:
    names = []
  if any(n.endswith(".xml") for n in names):
    return f"scribblesup_xml:{folder}"
  return f"scribble_png:{folder}"


def choose(dataset: str, kind: str, *, mode: str = "auto", data_dir: str | None = None,
           scribbles: str | None = None, split: str = "train") -> Choice:
  """The weak labels of `kind` on `dataset`.

  Args:
    dataset: config-file suffix ("cityscapes", ...).
    kind: points | scribbles | coarse (fine has no weak source).
    mode: one of MODES.
    data_dir: the dataset's root folder, or None when not known yet (a placeholder).
    scribbles: the scribble folder given for this dataset, or None.
    split: the split whose labels are read (gtCoarse has train and val folders).
  """
  if mode not in MODES:
    raise ValueError(f"--weak-labels {mode}: choose one of {', '.join(MODES)}.")
  if kind == "fine" or mode == GENERATED:
    return Choice("", f"{kind}: made from the fine labels" if kind != "fine" else "fine labels")
  if kind == "points":
    return Choice("", "points: made from the fine labels, one click per class and image, as the "
                      "paper's protocol (no click release is read)")
  if kind == "coarse":
    if dataset != "cityscapes":
      return Choice("", f"coarse on {dataset}: made from the fine labels (only Cityscapes "
                        "publishes coarse labels)")
    folder = os.path.join(data_dir, "gtCoarse", split) if data_dir else None
    if folder is None:
      return Choice("cityscapes_coarse", "coarse: Cityscapes gtCoarse, expected under the data "
                                         "dir once --data-dir cityscapes=DIR is given")
    if os.path.isdir(folder):
      return Choice("cityscapes_coarse", f"coarse: Cityscapes gtCoarse from {folder}")
    missing = (f"Cityscapes gtCoarse ({folder}: extract gtCoarse.zip into the folder of "
               "--data-dir cityscapes=DIR)")
    if mode == "paper":
      return Choice("cityscapes_coarse", "coarse: Cityscapes gtCoarse (missing)", missing)
    return Choice("", f"coarse: made from the fine labels (no {folder}; extract gtCoarse.zip "
                      "there for the paper's labels)")
  if kind == "scribbles":
    release = SCRIBBLE_RELEASES.get(dataset, "a scribble release")
    if scribbles:
      spec = _scribble_spec(scribbles)
      missing = "" if os.path.isdir(scribbles) else (
          f"scribbles of {dataset} ({scribbles}: no such folder; --scribbles {dataset}=DIR)")
      return Choice(spec, f"scribbles: {release} from {scribbles}", missing)
    if mode == "paper":
      return Choice("", "scribbles: the paper's (missing)",
                    f"scribbles of {dataset} ({release}: give --scribbles {dataset}=DIR)")
    return Choice("", f"scribbles: made from the fine labels (give --scribbles {dataset}=DIR "
                      f"for {release})")
  raise ValueError(f"weak kind {kind!r}: choose points, scribbles, coarse or fine.")


def parse_scribbles(items: Sequence[str] | None, datasets: Sequence[str]) -> dict[str, str]:
  """`--scribbles voc=/data/scribblesup` (repeatable), or `--scribbles DIR` for every dataset
  of the selection (`datasets`)."""
  out: dict[str, str] = {}
  for item in items or ():
    name, sep, path = item.partition("=")
    if sep and name and "/" not in name:
      out[name] = path
    else:
      out.update({d: item for d in datasets})
  return out


def choices(pairs: Sequence[tuple[str, str]], *, mode: str, data_dirs: Mapping[str, str],
            scribbles: Mapping[str, str], split: str = "train"
            ) -> dict[tuple[str, str], Choice]:
  """`choose` for every (dataset, weak kind) of a selection."""
  return {(d, k): choose(d, k, mode=mode, data_dir=data_dirs.get(d), scribbles=scribbles.get(d),
                         split=split) for d, k in dict.fromkeys(pairs)}
