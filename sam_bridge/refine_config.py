"""RefineConfig: the one schema of the refinement's settings (fields, defaults, meanings).

Every setting of `sam_bridge.refine.refine()` is written once, here, as a field with its
default (the paper's where it gives one), a one-line meaning with its unit, its choices, and
how each front end gets it:

  trainer   `IN_CONFIG`: the training config has `config.sam.<name>` with this default
            (`sesam_jax.configs_common` builds `config.sam` from `config_defaults()`);
            otherwise the sentence says where training takes the value from instead.
  flag      `GENERATED`: `sesam refine` has `--<name with dashes>` with this type, default and
            meaning (booleans also as `--no-<name>`); a "--flag" is the hand-written flag that
            sets it; any other text says why the command has none.

The module is light (no scipy, torch or jax) so that the `sesam` command and the configs can
read the schema without loading the refinement itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sam_bridge.api import UNLABELED

MODES = ("sesam", "naive")
WEAK_KINDS = ("coarse", "points", "scribbles")
PROMPT_TYPES = ("points", "box", "mask")
SAMPLING_STRATEGIES = ("sesam", "center", "boundary", "random", "confidence")
SELECTION_STRATEGIES = ("sesam", "best_score", "random", "smallest")

IN_CONFIG = "config.sam"  # Training reads config.sam.<name>.
GENERATED = "generated"   # `sesam refine --<name>` is made from the field.


def setting(default: Any, doc: str, *, choices: tuple[str, ...] = (), trainer: str = IN_CONFIG,
            flag: str = GENERATED) -> Any:
  """A RefineConfig field: default, one-line meaning (with unit), choices, front ends.

  Args:
    default: the default value; its type (bool, int, float, str) is the setting's type.
    doc: what the value means, with its unit.
    choices: the allowed values of a string setting (checked by `RefineConfig.validate`).
    trainer: IN_CONFIG, or where training takes the value from instead.
    flag: GENERATED, the hand-written `sesam refine` flag that sets it, or why it has none.
  """
  return dataclasses.field(default=default, metadata=dict(doc=doc, choices=tuple(choices),
                                                          trainer=trainer, flag=flag))


@dataclasses.dataclass(frozen=True)
class RefineConfig:
  """Every knob of refinement, with the paper's defaults where it gives one (see `settings()`)."""
  mode: str = setting(
      "sesam", "sesam: the paper's refinement (section 3.2); naive: the SAM baseline, the weak "
      "label prompts SAM directly, one prompt per class", choices=MODES,
      trainer="config.method (sam_baseline refines naively, sesam as sesam)")
  weak_kind: str = setting(
      "coarse", "kind of weak label refined: coarse, points or scribbles", choices=WEAK_KINDS,
      trainer="config.weak (fine counts as coarse)",
      flag="--weak")
  k: int = setting(5, "K: prompt points per instance (paper: 5)")
  sampling: str = setting(
      "sesam", "point sampling (Table 4a); confidence samples the teacher's confident pixels, so "
      "training only", choices=SAMPLING_STRATEGIES)
  selection: str = setting("sesam", "choice among SAM's 3 candidates per prompt (Table 4b)",
                           choices=SELECTION_STRATEGIES)
  prompt: str = setting("points", "prompt of an instance: K points, its box or its mask (Table 4c)",
                        choices=PROMPT_TYPES)
  instances: bool = setting(
      True, "split each class into connected components, one prompt set each (off: one per "
      "class, Table 3b)")
  refined_sampling: bool = setting(
      True, "instances, prompts and selection over the weak label extended by the teacher's "
      "theta2 pseudo-labels (Table 3c; off: the weak label alone)")
  tau1: float = setting(0.3, "coverage threshold: a candidate must cover >= tau1 of the weak "
                        "instance (fraction)")
  tau2: float = setting(0.7, "compatibility threshold: >= tau2 of a candidate must lie in the "
                        "weak instance (fraction)")
  min_area: int = setting(16, "instances smaller than this are skipped (working-resolution pixels)")
  stroke_k: int = setting(5, "points per scribble stroke in the sparse-to-coarse stage")
  point_extent: int = setting(7, "a weak blob no wider than this is one point (pixels)")
  work_long_side: int = setting(1024, "working resolution: longest side (pixels; SAM's input is "
                                "1024)")
  ignore_index: int = setting(
      UNLABELED, "label value of unlabeled pixels",
      trainer="fixed: 255, the project's ignore value",
      flag="none: weak labels use 255 for unlabeled")
  cache_embeddings: bool = setting(
      False, "with a cache passed to refine(): keep each image's encoder state under its example "
      "id (ids must name one full-resolution image, not an augmented crop)",
      trainer="on wherever the service has a cache: training gives it one with "
      "config.sam.view=full (refreshes of the full image; weak_aug crops are encoded each time)",
      flag="none: sesam refine encodes each image once anyway")
  lowres_selection: bool = setting(
      True, "SAM backends: compare candidates at the decoder's 256x256 resolution and upsample "
      "only the chosen mask of each prompt set")
  trace: bool = setting(
      False, "record what refinement computed per prompt set in RefineResult.trace (for "
      "figures; costs memory and, for SAM, upsampling every candidate)",
      trainer="off: training draws no figures",
      flag="--visualize N (traces the images it draws)")

  def validate(self) -> "RefineConfig":
    """Checks every string setting against its choices; returns self."""
    for s in settings():
      value = getattr(self, s.name)
      if s.choices and value not in s.choices:
        raise ValueError(f"refine {s.name}={value!r}; choose one of {s.choices}")
    return self


@dataclasses.dataclass(frozen=True)
class Setting:
  """One RefineConfig field as the front ends read it (see the module docstring)."""
  name: str
  default: Any
  doc: str
  choices: tuple[str, ...]
  trainer: str
  flag: str

  @property
  def in_config(self) -> bool:
    """Whether the training config holds it as `config.sam.<name>`."""
    return self.trainer == IN_CONFIG

  @property
  def flag_name(self) -> str:
    """The `sesam refine` flag that sets it ("" where there is none)."""
    if self.flag == GENERATED:
      return "--" + self.name.replace("_", "-")
    return self.flag.split()[0] if self.flag.startswith("--") else ""


def settings() -> tuple[Setting, ...]:
  """Every RefineConfig field, in declaration order."""
  return tuple(Setting(f.name, f.default, f.metadata["doc"], f.metadata["choices"],
                       f.metadata["trainer"], f.metadata["flag"])
               for f in dataclasses.fields(RefineConfig))


def config_defaults() -> dict[str, Any]:
  """{name: default} of the settings the training config holds (`config.sam.<name>`)."""
  return {s.name: s.default for s in settings() if s.in_config}


def from_config(sam: Mapping[str, Any], **overrides: Any) -> RefineConfig:
  """The RefineConfig of a training config's `sam` group, checked.

  Args:
    sam: `config.sam` (or any mapping): its IN_CONFIG settings are taken where present (a
      config saved before a setting existed gets the setting's default).
    **overrides: further fields (e.g. weak_kind, mode), applied last.
  """
  fields = {s.name: sam[s.name] for s in settings() if s.in_config and s.name in sam}
  return RefineConfig(**{**fields, **overrides}).validate()
