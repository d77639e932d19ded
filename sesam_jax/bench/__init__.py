"""Benchmarks behind `sesam bench --what NAME`.

Each target is a module with `add_arguments(parser)` (its own flags) and
`run(args) -> dict` (the figures, printed as the last-line JSON). Targets are
imported only when chosen, so one target's heavy imports (torch) never slow
another. Ratios are always measured side by side in one run: these machines
are shared and noisy, so absolute seconds from different runs do not compare.
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
    "bank": "sesam_jax.bench.bank",
}


def load_target(name: str) -> ModuleType:
  """Imports the module of benchmark `name`, with a clear error for unknown names."""
  if name not in TARGETS:
    raise ValueError(f"unknown benchmark {name!r}; choose one of: {', '.join(sorted(TARGETS))}.")
  return importlib.import_module(TARGETS[name])
