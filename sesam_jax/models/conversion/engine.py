"""The conversion engine: renamed PyTorch arrays laid into a Flax variables tree, checked.

`convert_variables(state_dict, rename, expected)` applies a rename table (`conversion.tables`) and
puts each array in Flax layout from its target's shape (OIHW conv -> HWIO, (out, in) Linear ->
(in, out), a 1x1 conv feeding a Dense -> (in, out)); the expected tree comes from `jax.eval_shape`
of the target model, so a missing or misshapen key is an error naming the key, and keys that map
nowhere are reported as not loaded. `convert_checkpoint` infers the student and its class count
from the keys when they are not given.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from sesam_jax.models import create_model, mit, resnet
from sesam_jax.models.conversion.tables import FORMATS, RENAMERS, Path

# Source keys that carry no weights (BatchNorm's step counter).
_IGNORED_SUFFIXES = (".num_batches_tracked",)


def _to_flax_layout(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """PyTorch layout -> the layout of a Flax leaf of `shape` (None if impossible)."""
  if array.ndim == 4 and len(shape) == 4:  # Conv2d OIHW (depthwise: C1HW) -> HWIO.
    array = array.transpose(2, 3, 1, 0)
  elif array.ndim == 2 and len(shape) == 2:  # Linear (out, in) -> Dense (in, out).
    array = array.T
  elif array.ndim == 4 and len(shape) == 2 and array.shape[2:] == (1, 1):  # 1x1 conv -> Dense.
    array = array[:, :, 0, 0].T
  return array if array.shape == tuple(shape) else None


def tree_get(tree: dict, path: Path) -> Any:
  for name in path:
    if not isinstance(tree, dict) or name not in tree:
      return None
    tree = tree[name]
  return tree


def tree_set(tree: dict, path: Path, value: Any) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def tree_leaves(tree: dict, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
  for name, value in tree.items():
    if isinstance(value, dict):
      yield from tree_leaves(value, prefix + (name,))
    else:
      yield prefix + (name,), value


@dataclasses.dataclass
class Conversion:
  """Result of a conversion.

  Attributes:
    variables: {"params": ..., "batch_stats": ...} nested dicts of float32
      numpy arrays, only the converted scope (e.g. {"params": {"encoder": ...}}).
    loaded: source key -> Flax path ("params/encoder/stages_0/...").
    not_loaded: source keys that map to nothing in the target (reported, unused).
    scope: the subtree converted ("encoder", "backbone" or "" for the whole model).
    model: the target model name (or "" for a bare module).
  """
  variables: dict
  loaded: dict[str, str]
  not_loaded: list[str]
  scope: str = ""
  model: str = ""


def convert_variables(state_dict: dict[str, np.ndarray], rename: Callable,
                      expected: dict, *, prefix: Path = (), scope: Path = ()) -> Conversion:
  """Converts a state dict onto the expected variables tree of a module.

  Args:
    state_dict: PyTorch names -> numpy arrays (PyTorch layouts).
    rename: one of RENAMERS' functions (key, array) -> [(target, array)].
    expected: {"params": ..., "batch_stats": ...} of shape-bearing leaves
      (jax.ShapeDtypeStruct or arrays).
    prefix: path prepended to the renamed paths inside each collection (e.g.
      ("backbone",) when a ResNet state dict fills a DeepLabV3+).
    scope: the subtree to convert (e.g. ("encoder",)): every expected leaf
      under it must be filled; keys mapping outside it are not loaded.

  Returns:
    A Conversion whose variables hold exactly the expected leaves under scope.

  Raises:
    ValueError: naming the source key whose shape does not fit, or the Flax
      path that no source key fills.
  """
  variables: dict = {}
  loaded: dict[str, str] = {}
  not_loaded: list[str] = []
  for key in sorted(state_dict):
    array = np.asarray(state_dict[key])
    targets = [] if key.endswith(_IGNORED_SUFFIXES) else rename(key, array)
    placed = False
    for (collection, module, leaf), part in targets:
      module = prefix + module
      module_tree = tree_get(expected.get(collection, {}), module)
      if module[:len(scope)] != scope or not isinstance(module_tree, dict):
        continue
      name = {"weight": "kernel" if "kernel" in module_tree else "scale"}.get(leaf, leaf)
      if name not in module_tree:
        continue
      want = tuple(module_tree[name].shape)
      converted = _to_flax_layout(part, want)
      if converted is None:
        raise ValueError(
            f"state dict key {key!r} has shape {tuple(array.shape)}, which does not fit "
            f"{collection}/{'/'.join(module + (name,))} of shape {want}: wrong --model "
            "or --format for this checkpoint?")
      tree_set(variables, (collection,) + module + (name,), converted.astype(np.float32))
      loaded[key] = "/".join((collection,) + module + (name,))
      placed = True
    if not placed and not key.endswith(_IGNORED_SUFFIXES):
      not_loaded.append(key)
  for collection in expected:
    subtree = tree_get(expected[collection], scope)
    if not isinstance(subtree, dict):
      continue
    for path, _ in tree_leaves(subtree):
      if tree_get(variables.get(collection, {}), scope + path) is None:
        raise ValueError(
            f"no state dict key fills {collection}/{'/'.join(scope + path)}"
            f"{_missing_key_hint(loaded, scope + path)} (missing from the checkpoint, or wrong "
            "--model / --format for it).")
  return Conversion(variables, loaded, not_loaded, scope="/".join(scope))


_SOURCE_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                "var": "running_var"}


def _missing_key_hint(loaded: dict[str, str], path: Path) -> str:
  """Names the source key that would have filled `path`, from a loaded sibling leaf."""
  module = "/".join(path[:-1])
  for key, flax_path in loaded.items():
    if flax_path.split("/", 1)[1].rsplit("/", 1)[0] == module:
      return f": expected state dict key {key.rsplit('.', 1)[0]}.{_SOURCE_LEAF[path[-1]]!s}"
  return ""


# ----------------------------------------------------------------------------
# Model-level conversion.

def _family(model: str) -> str:
  return "segformer" if model.startswith("segformer") else "resnet"


def infer_model(state_dict: dict[str, np.ndarray], fmt: str) -> str:
  """Guesses the student name from block counts and widths in the state dict.

  Returns:
    e.g. "segformer_b0" or "deeplabv3plus_r101".

  Raises:
    ValueError: when no registered variant matches (pass --model then).
  """
  keys = list(state_dict)
  if fmt in ("hf", "mmseg") and any("patch_embed" in k for k in keys):
    depths, widths = [], []
    for i in range(4):
      if fmt == "mmseg":
        pat = re.compile(rf"(?:backbone\.)?block{i + 1}\.(\d+)\.")
        width_keys = [k for k in keys if re.fullmatch(rf"(?:backbone\.)?norm{i + 1}\.weight", k)]
      else:
        pat = re.compile(rf"(?:encoder\.block\.{i}|stages\.{i}\.blocks)\.(\d+)\.")
        width_keys = [k for k in keys if re.search(
            rf"(encoder\.layer_norm\.{i}|stages\.{i}\.layer_norm)\.weight$", k)]
      blocks = {m[1] for k in keys if (m := pat.search(k))}
      depths.append(len(blocks))
      widths.append(int(state_dict[width_keys[0]].shape[0]) if width_keys else 0)
    for name, sizes in mit.MIT_VARIANTS.items():
      if tuple(sizes["depths"]) == tuple(depths) and tuple(sizes["hidden_sizes"]) == tuple(widths):
        return f"segformer_{name.lower()}"
    raise ValueError(f"no MiT variant has depths {depths} and widths {widths}; pass --model.")
  if fmt in ("hf", "torchvision"):
    pat = (re.compile(r"encoder\.stages\.(\d)\.layers\.(\d+)\.") if fmt == "hf"
           else re.compile(r"^layer(\d)\.(\d+)\."))
    blocks: dict[int, set] = {}
    for k in keys:
      if m := pat.search(k):
        blocks.setdefault(int(m[1]), set()).add(m[2])
    depths = tuple(len(blocks[s]) for s in sorted(blocks))
    for name, sizes in resnet.RESNET_VARIANTS.items():
      if tuple(sizes["depths"]) == depths:
        return f"deeplabv3plus_{'r' + name if name != 'tiny' else 'tiny'}"
    raise ValueError(f"no ResNet variant has stage depths {depths}; pass --model.")
  raise ValueError(f"cannot tell the model of this {fmt!r} state dict; pass --model.")


def _num_classes_in(state_dict: dict[str, np.ndarray]) -> int | None:
  for key in ("decode_head.classifier.weight",):
    if key in state_dict:
      return int(state_dict[key].shape[0])
  return None


def convert_checkpoint(state_dict: dict[str, np.ndarray], fmt: str, *,
                       model: str | None = None) -> Conversion:
  """Converts a PyTorch state dict for a registered student.

  Args:
    state_dict: PyTorch names -> numpy arrays.
    fmt: "hf", "mmseg" or "torchvision" (see the module docstring).
    model: student name (create_model); inferred from the state dict if None.

  Returns:
    A Conversion of the encoder/backbone only, or of the whole SegFormer when
    the state dict holds a `transformers` decode head.

  Raises:
    ValueError: unknown format, format/model mismatch, missing or misshapen keys.
  """

  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}.")
  model = model or infer_model(state_dict, fmt)
  family = _family(model)
  if (family, fmt) not in RENAMERS:
    raise ValueError(f"format {fmt!r} holds no {family} weights; for {model} use "
                     f"{' or '.join(f for fam, f in RENAMERS if fam == family)}.")
  num_classes = _num_classes_in(state_dict) if (family, fmt) == ("segformer", "hf") else None
  module = create_model(model, num_classes or 2)
  expected = jax.eval_shape(
      lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32)))
  if family == "resnet":
    prefix, scope = ("backbone",), ("backbone",)
  else:
    prefix, scope = (), (() if num_classes else ("encoder",))
  result = convert_variables(state_dict, RENAMERS[(family, fmt)], expected, prefix=prefix,
                             scope=scope)
  result.model = model
  return result


# ----------------------------------------------------------------------------
# Files.
