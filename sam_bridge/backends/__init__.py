"""The table of backend kinds (`KINDS`) and `create_backend(spec, **kw)`.

A spec is a kind, optionally followed by ':' and its argument:

  oracle                          masks from the fine label (upper bound; named as an oracle)
  superpixel                      scikit-image superpixels at three scales (SAM-free)
  transformers:/path/to/dir       SamModel / SamHQModel / Sam2Model / Sam3TrackerModel weights dir
  transformers:/path/sam_vit_b_01ec64.pth   official checkpoint, converted on load
  random:vit_b                    randomly initialised SamModel (vit_b, vit_l, vit_h, tiny)
  segment_anything:/path/sam_vit_b.pth      the official package (needs torchvision)

Each kind is one `BackendKind` row: where it runs, whether it needs weights, which settings it
takes, what it is in reports, and how it is built. `sesam_jax.sam.resolver.BACKENDS` is this
table plus the Flax SAM's kinds (`sesam_jax.sam.jax_backend.KINDS`); everything that asks what
a backend is (the resolver, the trainer's GPU sharing, the benchmarks) reads these rows.
torch and transformers load only when a PyTorch SAM backend is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from sam_bridge.api import Backend
from sam_bridge.backends.official import OfficialSamBackend
from sam_bridge.backends.oracle import OracleBackend
from sam_bridge.backends.superpixel import SuperpixelBackend
from sam_bridge.backends.transformers_sam import RANDOM_VARIANTS, TransformersSamBackend

RUNS_ON = ("torch", "jax", "numpy")
WEIGHTS = ("checkpoint", "random", "")
OPTIONS = ("device", "dtype", "decoder_dtype", "attention")  # every setting a kind may take
TORCH_OPTIONS = ("device", "dtype", "decoder_dtype")  # torch SAMs keep their own attention


@dataclasses.dataclass(frozen=True)
class BackendKind:
  """One kind of backend: what the part of a spec before ':' names.

  Attributes:
    name: the kind ("oracle", "transformers", ...).
    usage: the spec's forms, for help and error messages.
    runs_on: "torch" (a PyTorch SAM, in the bridge's worker process on torch's device),
      "jax" (the Flax SAM, on a thread of the training process and its JAX devices) or
      "numpy" (no model: numpy/scikit-image in the bridge's worker process).
    weights: "checkpoint" (needs a weights path, after ':' or from the checkpoint setting),
      "random" (random weights of a variant named after ':') or "" (no weights).
    build: (the spec's part after ':', **backend keywords) -> Backend.
    variants: the variants of a "random" kind; the first is the default.
    options: the SAM settings the kind takes as keywords (device, dtype, decoder_dtype,
      attention).
    note: what it is, said in every report, where it is not SAM with its own weights.
  """
  name: str
  usage: str
  runs_on: str
  weights: str
  build: Callable[..., Backend]
  variants: tuple[str, ...] = ()
  options: tuple[str, ...] = ()
  note: str = ""

  def __post_init__(self):
    if self.runs_on not in RUNS_ON or self.weights not in WEIGHTS or (
        not set(self.options) <= set(OPTIONS)) or (self.weights == "random") != bool(self.variants):
      raise ValueError(f"backend kind {self.name}: runs_on {self.runs_on!r} / weights "
                       f"{self.weights!r} / options {self.options} / variants {self.variants}")

  def describe(self, spec: str) -> str:
    """`spec` with what it is where that is not SAM with its own weights (logs, results)."""
    return f"{spec} ({self.note})" if self.note else spec


def _random_torch_sam(variant: str, **kw) -> Backend:
  return TransformersSamBackend.random(variant or "vit_b", **kw)


KINDS: dict[str, BackendKind] = {k.name: k for k in (
    BackendKind("oracle", "oracle", "numpy", "", lambda _, **kw: OracleBackend(**kw),
                note="oracle: masks cut from the fine labels, an upper bound, no SAM"),
    BackendKind("superpixel", "superpixel", "numpy", "", lambda _, **kw: SuperpixelBackend(**kw),
                note="SAM-free prior: superpixels, no SAM"),
    BackendKind("random", "random:VARIANT", "torch", "random", _random_torch_sam,
                variants=tuple(RANDOM_VARIANTS), options=TORCH_OPTIONS,
                note="random weights: for timing and tests only"),
    BackendKind("transformers", "transformers:PATH (a transformers SAM folder or sam_vit_*.pth)",
                "torch", "checkpoint", TransformersSamBackend.from_path,
                options=TORCH_OPTIONS),
    BackendKind("segment_anything", "segment_anything:PATH (sam_vit_*.pth; needs torchvision)",
                "torch", "checkpoint", OfficialSamBackend, options=("device", "dtype")),
)}


def lookup(spec: str, kinds: Mapping[str, BackendKind] = KINDS, *,
           flag: str = "backend") -> BackendKind:
  """The row of `spec`'s kind; a one-line ValueError naming `flag` and the known kinds."""
  kind = spec.partition(":")[0]
  if kind not in kinds:
    forms = ", ".join(k.usage.split()[0] for k in kinds.values())  # "random:VARIANT", ...
    raise ValueError(f"{flag}={spec!r}: unknown backend; choose one of {forms}.")
  return kinds[kind]


def create_backend(spec: str, *, kinds: Mapping[str, BackendKind] = KINDS, **kw) -> Backend:
  """Builds the backend that `spec` names.

  Args:
    spec: "oracle", "superpixel", "transformers:PATH", "random:VARIANT" or
      "segment_anything:PATH" (see the module docstring).
    kinds: the table to read (sesam_jax's resolver passes its own, with the JAX kinds).
    **kw: backend keywords (device, dtype, batch_size, seed, scales, ...).

  Returns:
    A Backend; its `name` says what it is (oracle and random included).
  """
  kind = lookup(spec, kinds)
  arg = spec.partition(":")[2]
  if kind.weights == "checkpoint" and not arg:
    raise ValueError(f"backend {kind.name!r} needs a path: {kind.usage}")
  return kind.build(arg, **kw)
