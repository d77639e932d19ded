"""The import graph of `sesam_jax` and `sam_bridge`, read from the source with `ast`.

Shared by tests/test_layers.py (which layer may import which) and tests/test_local_imports.py
(which imports may sit inside a function). Nothing is imported: every `import` and
`from ... import` statement of every module is read, at module level and inside functions.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("sesam_jax", "sam_bridge")


@dataclasses.dataclass(frozen=True)
class Import:
  """One imported name as a statement in `module` names it.

  Attributes:
    module: the importing module, dotted ("sesam_jax.loop"; a package's `__init__` is the package).
    target: the imported module, dotted: for `from a.b import c` it is "a.b.c" when that is a
      module of the repository, else "a.b" (c is a name in it).
    line: the statement's line number in the importing file.
    local: True when the statement sits inside a function (a deferred import).
    path: the importing file, relative to the repository root.
  """
  module: str
  target: str
  line: int
  local: bool
  path: str

  def where(self) -> str:
    return f"{self.path}:{self.line} ({self.module} imports {self.target})"


def module_files() -> dict[str, pathlib.Path]:
  """Every module of the two packages: dotted name -> file."""
  out = {}
  for package in PACKAGES:
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
      parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      out[".".join(parts)] = path
  return out


def _resolve(base: str, modules: set[str]) -> str:
  """The longest prefix of `base` that is a module of the repository (else `base`)."""
  parts = base.split(".")
  while parts:
    name = ".".join(parts)
    if name in modules:
      return name
    parts.pop()
  return base


def _walk(tree: ast.AST, local: bool = False):
  """Yields (import node, inside a function) for every import statement in `tree`."""
  for node in ast.iter_child_nodes(tree):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node, local
    inner = local or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
    yield from _walk(node, inner)


def imports_of(module: str, path: pathlib.Path, modules: set[str]) -> list[Import]:
  """Every import statement of one file, one `Import` per imported module."""
  tree = ast.parse(path.read_text(), filename=str(path))
  rel = str(path.relative_to(REPO_ROOT))
  is_package = path.name == "__init__.py"
  out = []
  for node, local in _walk(tree):
    if isinstance(node, ast.Import):
      targets = [_resolve(alias.name, modules) for alias in node.names]
    else:
      base = node.module or ""
      if node.level:  # Relative: from the importing module's package.
        package = module.split(".")
        package = package if is_package else package[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
      targets = []
      for alias in node.names:
        full = f"{base}.{alias.name}"
        targets.append(full if full in modules else _resolve(base, modules))
    for target in dict.fromkeys(targets):
      out.append(Import(module, target, node.lineno, local, rel))
  return out


def all_imports() -> list[Import]:
  """Every import statement of every module of `sesam_jax` and `sam_bridge`."""
  files = module_files()
  names = set(files)
  out = []
  for module, path in files.items():
    out.extend(imports_of(module, path, names))
  return out


def top_package(name: str) -> str:
  return name.split(".")[0]
