"""`config.init`: converted ImageNet weights laid over a fresh student, before its EMA copy.

The paper's students start from ImageNet weights (MiT-B0 for SegFormer, ResNet-101 for
DeepLabV3+). `sesam convert` turns the PyTorch file into Flax variables (an encoder or backbone,
or a whole SegFormer with its decode head); a fresh run then builds its train state as

    variables = model.init(...)                       # every leaf, randomly initialised
    variables <- the file's leaves, except `config.init_skip` subtrees (the classifiers)
    EMA teacher = copy of variables; optimizer state initialised on them

so at step 0 student and teacher both equal the file where it has a leaf. A leaf of another shape
(e.g. a checkpoint converted for another variant) stops the run with its path; the classifier,
whose width is the dataset's class count, stays freshly initialised by default. A resumed run
restores its own checkpoint and never reads `init`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections

from sesam_jax import report
from sesam_jax.models import conversion
from sesam_jax.train import train_state


def _split(path: str) -> tuple[str, ...]:
  return tuple(p for p in path.strip("/").split("/") if p)


def drop_subtrees(variables: dict, skip: Sequence[str]) -> tuple[dict, list[str]]:
  """`variables` without the subtrees named in `skip`.

  Args:
    variables: {"params": {...}, "batch_stats": {...}} nested dicts.
    skip: paths inside every collection ("decode_head/classifier") or of one collection
      ("params/decode_head/classifier").

  Returns:
    (the kept variables as new dicts, "collection/path" of each subtree left out).
  """
  paths = [_split(p) for p in skip if _split(p)]
  dropped: list[str] = []

  def keep(tree: Any, where: tuple[str, ...]) -> Any:
    if not isinstance(tree, dict):
      return tree
    out = {}
    for name, value in tree.items():
      here = where + (name,)
      if any(here[1:] == p or here == p for p in paths):
        dropped.append("/".join(here))
        continue
      out[name] = keep(value, here)
    return out

  return keep(variables, ()), dropped


def load_init(config: ml_collections.ConfigDict) -> dict | None:
  """The variables of `config.init` to lay over a fresh student, or None without `init`.

  Raises:
    FileNotFoundError / ValueError: the file is missing, not a `sesam convert` output, or was
      converted for another model than `config.model` (each names the file and the fix).
  """
  if not config.get("init", ""):
    return None
  variables, meta = conversion.load_converted(config.init)
  converted_for = meta.get("model", "")
  if converted_for and converted_for != config.model:
    raise ValueError(f"--config.init={config.init} was converted for {converted_for}, but "
                     f"config.model is {config.model}: convert the weights with `sesam convert "
                     f"--model {config.model}` or train --config.model={converted_for}.")
  kept, dropped = drop_subtrees(variables, config.get("init_skip", ()))
  count = sum(1 for _ in _leaves(kept))
  report.log(f"init: {count} tensors from {config.init} ({converted_for or 'unknown model'}, "
             f"{meta.get('scope') or 'full'}); freshly initialised: "
             f"{', '.join(dropped) if dropped else 'nothing else'}")
  return kept


def _leaves(tree: Any):
  if isinstance(tree, dict):
    for value in tree.values():
      yield from _leaves(value)
  else:
    yield tree


def create_state(config: ml_collections.ConfigDict, model: Any, tx: Any, rng: Any,
                 mesh: Any) -> Any:
  """A fresh run's train state, with `config.init` laid over it before the EMA copy.

  Returns:
    The `train_state.TrainState` at step 0.
  """
  init = load_init(config)
  try:
    return train_state.create_train_state(model, tx, rng, mesh, pretrained=init)
  except ValueError as e:
    if init is None or not str(e).startswith("pretrained leaf"):
      raise
    raise ValueError(f"--config.init={config.init}: {e} A subtree listed in --config.init_skip "
                     f"(now {','.join(config.init_skip) or 'empty'}) stays freshly initialised."
                     ) from None
