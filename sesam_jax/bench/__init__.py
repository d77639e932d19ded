"""Benchmarks behind `sesam bench --what NAME`.

Each target is a module with `add_arguments(parser)` (its own flags) and
`run(args) -> dict` (the figures, printed as the last-line JSON). Targets are
imported only when chosen, so one target's heavy imports (torch) never slow
another. Ratios are always measured side by side in one run: these machines
are shared and noisy, so absolute seconds from different runs do not compare.
`records` keeps figures of different machines comparable (`--record`, `--compare`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module path; each module defines add_arguments(parser) and run(args).
TARGETS: dict[str, str] = {
    "input": "sesam_jax.bench.input",
    "weak_labels": "sesam_jax.bench.weak_labels",
    "sam": "sesam_jax.bench.sam",
    "iteration": "sesam_jax.bench.iteration",
    "parity": "sesam_jax.bench.parity",
    "train-step": "sesam_jax.bench.train_step",
    "memory": "sesam_jax.bench.memory",
    "bank": "sesam_jax.bench.bank",
    "sam_view": "sesam_jax.bench.sam_view",
    "sam_agreement": "sesam_jax.bench.sam_agreement",
}
# name -> one line for `sesam bench --help` (no target is imported to list them).
DESCRIPTIONS: dict[str, str] = {
    "input": "host input pipeline images/s (CamVid decode, synthetic at Cityscapes size)",
    "weak_labels": "ms per image for each weak-label kind",
    "sam": "SAM bridge: encoder, decoder per prompt set, geometry, cached refresh",
    "iteration": "seconds per training iteration, FixMatch vs SeSAM (ratio)",
    "parity": "Flax students vs transformers on the same random weights",
    "train-step": "Flax vs PyTorch SegFormer-B0 training step seconds (ratio), DeepLabV3+",
    "memory": "SeSAM step memory per device from XLA's compiled memory analysis (+ GPU peak)",
    "bank": "SAM label bank and caches at Cityscapes scale: bytes per image, peak RSS",
    "sam_view": "SAM refreshes of the weak-aug crop vs the full image: agreement, seconds",
    "sam_agreement": "Flax SAM refinement, bf16 vs fp32 encoder: shared label pixels, precision",
}


def load_target(name: str) -> ModuleType:
  """Imports the module of benchmark `name`, with a clear error for unknown names."""
  if name not in TARGETS:
    raise ValueError(f"unknown benchmark {name!r}; choose one of: {', '.join(sorted(TARGETS))}.")
  return importlib.import_module(TARGETS[name])


def describe_targets() -> str:
  """The list of targets shown by `sesam bench --help`."""
  width = max(len(name) for name in TARGETS)
  return "benchmarks (--what NAME):\n" + "\n".join(
      f"  {name:<{width}}  {DESCRIPTIONS.get(name, '')}" for name in TARGETS)
