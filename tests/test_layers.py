"""The layers of docs/architecture: imports point down, never up, and form no cycle.

The graph is read from the source (tests/import_graph.py): every import statement of every
module of `sesam_jax` and `sam_bridge`, at module level and inside functions. `LAYERS` is the one
table of which module sits in which layer; a new module falls under its package's entry, and a
new top-level module must be added here (the test says so).
"""

from __future__ import annotations

import ast
import pathlib

from tests import import_graph

# Module or package prefix -> layer, lowest first. A module imports only from its own layer or
# below. The longest matching prefix wins.
LAYERS: dict[str, int] = {
    # 1: the torch-side bridge, and sesam_jax's base: names, files, reports, configs' presets.
    "sam_bridge": 1,
    "sesam_jax": 1,  # The package's own __init__.
    "sesam_jax.names": 1,  # The ignore value's neighbours: method, weak-kind, file names.
    "sesam_jax.atomic": 1,
    "sesam_jax.cost": 1,
    "sesam_jax.report": 1,
    "sesam_jax.outputs": 1,
    "sesam_jax.configs_common": 1,
    "sesam_jax.config_lib": 1,
    # 2: students and their converters; datasets, weak labels, the host input pipeline and feed.
    "sesam_jax.models": 2,
    "sesam_jax.data": 2,
    # 3: a run's directory; the trainer's SAM side; pure training maths.
    "sesam_jax.run": 3,
    "sesam_jax.sam": 3,
    "sesam_jax.train": 3,
    # Pure confusion-matrix maths (jax and numpy only): sam/refine_labels scores SAM labels with
    # it, so it sits below the rest of evaluate/.
    "sesam_jax.evaluate.metrics": 3,
    # 4: the method table; evaluation and prediction.
    "sesam_jax.methods": 4,
    "sesam_jax.evaluate": 4,
    # 5: the training loop.
    "sesam_jax.loop": 5,
    # 6: leaves.
    "sesam_jax.plots": 6,
    "sesam_jax.experiments": 6,
    "sesam_jax.bench": 6,
    "sesam_jax.demo": 6,
    # 7: the command line.
    "sesam_jax.main": 7,
    "sesam_jax.commands": 7,
}

# Packages that import jax (or are jax): the torch side never imports them.
JAX_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax", "chex", "grain")


def layer_of(module: str) -> int | None:
  """The layer of a module of the repository by its longest prefix in LAYERS (None: unlisted)."""
  parts = module.split(".")
  while parts:
    name = ".".join(parts)
    if name in LAYERS:
      # "sesam_jax" is the package's __init__ only: a new top-level module must be listed.
      if name == "sesam_jax" and module != name:
        return None
      return LAYERS[name]
    parts.pop()
  return None


def _internal(imports):
  modules = set(import_graph.module_files())
  return [i for i in imports if i.target in modules and i.target != i.module]


def test_every_module_has_a_layer():
  missing = [m for m in import_graph.module_files() if layer_of(m) is None]
  assert not missing, (
      f"modules with no layer: {missing}; add each (or its package) to LAYERS in "
      "tests/test_layers.py and to the layer table of docs/architecture")


def test_no_import_points_upward():
  upward = []
  for imp in _internal(import_graph.all_imports()):
    low, high = layer_of(imp.module), layer_of(imp.target)
    if low is not None and high is not None and high > low:
      upward.append(f"{imp.where()}: layer {low} imports layer {high}")
  assert not upward, "imports from a lower layer to a higher one:\n  " + "\n  ".join(upward)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan), each sorted."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in sorted(edges.get(node, ())):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = []
      while True:
        top = stack.pop()
        on_stack.discard(top)
        component.append(top)
        if top == node:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for node in sorted(edges):
    if node not in index:
      visit(node)
  return out


def _path(edges, start, goal):
  """One shortest import path start -> ... -> goal (breadth first)."""
  previous, frontier = {start: None}, [start]
  while frontier:
    nxt_frontier = []
    for node in frontier:
      for nxt in sorted(edges.get(node, ())):
        if nxt == goal:
          path = [goal, node]
          while previous[path[-1]] is not None:
            path.append(previous[path[-1]])
          return path[::-1]
        if nxt not in previous:
          previous[nxt] = node
          nxt_frontier.append(nxt)
    frontier = nxt_frontier
  return []


def test_no_import_cycle():
  edges: dict[str, set[str]] = {}
  for imp in _internal(import_graph.all_imports()):
    edges.setdefault(imp.module, set()).add(imp.target)
  cycles = _cycles(edges)
  shown = []
  for component in cycles:
    members = set(component)
    sub = {m: edges[m] & members for m in component}
    loop = _path(sub, component[0], component[0])
    shown.append(" -> ".join(loop) + f"  (component: {component})")
  assert not cycles, "import cycles:\n  " + "\n  ".join(shown)


def test_sam_bridge_imports_neither_jax_nor_sesam_jax():
  bad = [imp.where() for imp in import_graph.all_imports()
         if import_graph.top_package(imp.module) == "sam_bridge"
         and import_graph.top_package(imp.target) in JAX_PACKAGES + ("sesam_jax",)]
  assert not bad, "sam_bridge must not import jax or sesam_jax:\n  " + "\n  ".join(bad)


def test_configs_import_only_ml_collections_and_configs_common():
  allowed = {"__future__", "ml_collections", "sesam_jax.configs_common"}
  bad = []
  for path in sorted((import_graph.REPO_ROOT / "configs").glob("*.py")):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [f"{node.module}.{alias.name}" if node.module == "sesam_jax" else node.module
                 for alias in node.names]
      else:
        continue
      for name in names:
        if not any(name == a or name.startswith(a + ".") for a in allowed):
          rel = pathlib.Path(path).relative_to(import_graph.REPO_ROOT)
          bad.append(f"{rel}:{node.lineno} imports {name}")
  assert not bad, ("configs/*.py import only ml_collections and sesam_jax.configs_common:\n  "
                   + "\n  ".join(bad))


def test_configs_common_imports_only_names():
  # The presets every config file loads stay free of training code (and of jax).
  allowed = {"sesam_jax.names"}
  bad = [imp.where() for imp in import_graph.all_imports()
         if imp.module == "sesam_jax.configs_common"
         and (import_graph.top_package(imp.target) in JAX_PACKAGES
              or (import_graph.top_package(imp.target) == "sesam_jax"
                  and imp.target not in allowed))]
  assert not bad, ("sesam_jax.configs_common imports only sesam_jax.names of the package:\n  "
                   + "\n  ".join(bad))


def test_the_ignore_value_is_defined_once_per_package():
  # sesam_jax.names.IGNORE_INDEX (re-exported as sesam_jax.data.base.IGNORE_INDEX) and
  # sam_bridge.api.UNLABELED; every other module imports one of them.
  found = []
  for module, path in import_graph.module_files().items():
    for node in ast.parse(path.read_text()).body:
      targets = (node.targets if isinstance(node, ast.Assign)
                 else [node.target] if isinstance(node, ast.AnnAssign) else [])
      value = getattr(node, "value", None)
      if isinstance(value, ast.Constant) and value.value == 255:
        found += [f"{module}.{t.id}" for t in targets if isinstance(t, ast.Name)]
  assert sorted(found) == ["sam_bridge.api.UNLABELED", "sesam_jax.names.IGNORE_INDEX"], found
