"""The workdir layout (`sesam_jax.run.layout`) is the one place its names are spelled."""

import ast
import pathlib

from sesam_jax.run import layout

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "sesam_jax"


def test_paths_of_a_workdir(tmp_path):
  lay = layout.Layout.of(tmp_path)
  assert lay.root == tmp_path and lay.result == tmp_path / "result.json"
  assert lay.checkpoint(4, layout.STATE_ITEM) == tmp_path / "checkpoints" / "4" / "state"
  assert not lay.is_run()
  lay.config.write_text("{}")
  assert lay.is_run()


def test_no_module_outside_run_spells_a_workdir_name():
  # config.json is left out: transformers' model folders have one too (sam_convert).
  names = {layout.RESULT, layout.METRICS, layout.CHECKPOINTS, layout.TENSORBOARD, layout.LOCK,
           layout.UNREADABLE_CHECKPOINTS, layout.TRAIN_IMAGES, layout.SAM_EMBEDDINGS,
           layout.SAM_BASELINE_LABELS, layout.REPRODUCE_LOG, layout.BENCH_RECORDS,
           layout.SAM_BANK_ITEM}
  found = []
  for path in PACKAGE.rglob("*.py"):
    if path.parent.name == "run" and path.parent.parent == PACKAGE:
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Constant) and node.value in names:
        found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
  assert not found, "use sesam_jax.run.layout instead: " + ", ".join(found)


def test_orbax_is_used_only_in_run_and_conversion():
  users = []
  for path in PACKAGE.rglob("*.py"):
    rel = path.relative_to(PACKAGE).as_posix()
    if rel.startswith(("run/", "models/conversion/")):
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      if any(m.split(".")[0] == "orbax" for m in modules):
        users.append(rel)
  assert not users, users
