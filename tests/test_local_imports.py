"""Function-local imports are for optional packages and the CLI's start-up deferrals only.

A function-local import hides a dependency from the reader and from tests/test_layers.py's
order of modules, so it is never used to dodge a cycle. Two kinds stay inside functions:

  optional packages  not in `install_requires` (torch, transformers, segment_anything, ...) or
                     heavy to load and needed by one feature (matplotlib for figures, tensorboardX
                     for event files, tensorflow_datasets for one source): the training path
                     imports none of them, so they load only in the function that needs them;
  CLI deferrals      `sesam_jax/main.py` and `commands.py` import a handler's jax-heavy modules
                     inside the handler, so `sesam --help` and `sesam cost` start in a fraction of
                     a second; each one is listed in CLI_DEFERRALS below.

scipy, scikit-image and Pillow are required dependencies that load in well under a second and
are used on the training path (augmentation, weak labels, SAM geometry): they are imported at
module level like numpy.
"""

from __future__ import annotations

from tests import import_graph

# Top-level package names (as imported) of the optional packages.
OPTIONAL_PACKAGES = frozenset({
    "torch", "torchvision", "transformers", "segment_anything", "safetensors", "matplotlib",
    "tensorflow_datasets", "tensorboardX"})

# CLI module -> the modules its handlers import when they run (each pulls jax, flax or the data
# readers, which `sesam --help` must not wait for).
CLI_DEFERRALS: dict[str, frozenset[str]] = {
    "sesam_jax.main": frozenset(),
    "sesam_jax.commands": frozenset({
        "sesam_jax.bench.records",
        "sesam_jax.config_lib",
        "sesam_jax.data",
        "sesam_jax.data.split_check",
        "sesam_jax.data.weak_sources",
        "sesam_jax.data.weak_splits",
        "sesam_jax.demo",
        "sesam_jax.evaluate.export",
        "sesam_jax.evaluate.label_scoring",
        "sesam_jax.evaluate.predict",
        "sesam_jax.experiments.grid",
        "sesam_jax.experiments.label_sources",
        "sesam_jax.experiments.summary",
        "sesam_jax.experiments.sweep",
        "sesam_jax.loop",
        "sesam_jax.models.conversion",
        "sesam_jax.models.sam_convert",
        "sesam_jax.plots.cost_quality",
        "sesam_jax.plots.curves",
        "sesam_jax.plots.qualitative",
        "sesam_jax.plots.refinement",
        "sesam_jax.run.compile_cache",
        "sesam_jax.run.runs",
        "sesam_jax.sam.refine_labels",
        "sesam_jax.sam.resolver",
    }),
}


def _allowed(imp: import_graph.Import) -> bool:
  if import_graph.top_package(imp.target) in OPTIONAL_PACKAGES:
    return True
  return imp.target in CLI_DEFERRALS.get(imp.module, ())


def test_function_local_imports_are_optional_packages_or_cli_deferrals():
  local = [imp for imp in import_graph.all_imports() if imp.local]
  bad = [imp.where() for imp in local if not _allowed(imp)]
  assert not bad, (
      "function-local imports that are neither an optional package nor a listed CLI deferral "
      "(move them to the module's top; a cycle they dodge is fixed by moving code, see "
      "tests/test_layers.py):\n  " + "\n  ".join(bad))


def test_cli_deferral_list_has_no_stale_entries():
  used = {(imp.module, imp.target) for imp in import_graph.all_imports() if imp.local}
  stale = [f"{module} -> {target}" for module, targets in CLI_DEFERRALS.items()
           for target in sorted(targets) if (module, target) not in used]
  assert not stale, "CLI_DEFERRALS names imports the CLI no longer defers:\n  " + "\n  ".join(
      stale)


def test_optional_packages_are_never_imported_at_module_level():
  # A module-level import would make every importer need the optional package (and load it).
  bad = [imp.where() for imp in import_graph.all_imports()
         if not imp.local and import_graph.top_package(imp.target) in OPTIONAL_PACKAGES]
  assert not bad, ("optional packages imported at module level (import them inside the "
                   "function that needs them):\n  " + "\n  ".join(bad))
