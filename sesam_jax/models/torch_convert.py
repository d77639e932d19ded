"""PyTorch state dicts -> Flax variables for the students (pure functions).

Formats (`fmt`):
  "hf"          `transformers` SegFormer (`nvidia/mit-b0` style encoder-only
                `SegformerModel`/`SegformerForImageClassification`, or the full
                `SegformerForSemanticSegmentation`; hub names such as
                `encoder.block.0.0.attention.self.query` and the current in-memory
                names `stages.0.blocks.0.attention.q_proj` both work), or
                `transformers` `ResNetModel`/`ResNetForImageClassification`.
  "mmseg"       the original SegFormer/mmseg MiT layout (`mit_b0.pth`:
                `patch_embed1.proj.weight`, `block1.0.attn.q.weight`,
                `block1.0.attn.kv.weight`, `norm1.weight`, ...; an optional
                `backbone.` prefix is stripped). Encoder only.
  "torchvision" torchvision `resnet50`/`resnet101` (`conv1.weight`, `bn1.*`,
                `layer1.0.conv1.weight`, `layer1.0.downsample.0.weight`, ...).

Every source key is first renamed to a Flax path; the array layout follows
from the target's shape (OIHW conv -> HWIO, (out, in) Linear -> (in, out),
a 1x1 conv feeding a Dense -> (in, out)). The expected tree comes from
`jax.eval_shape` of the target model, so a missing or misshapen key is an
error naming the key, and keys that map nowhere are reported as not loaded.

Checkpoints written by `save_converted` are msgpack files
(`flax.serialization.msgpack_serialize`) holding {"meta": {...},
"variables": {"params": ..., "batch_stats": ...}}; `load_converted` reads
them and `merge_pretrained` lays them over freshly initialised variables
(configs' `init`). torch is imported only by `read_state_dict`, for .pth/.bin.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import tempfile
from typing import Any, Callable, Iterator

import numpy as np

Path = tuple[str, ...]
# (collection, path inside it, leaf kind): kind "weight" becomes kernel or scale.
Target = tuple[str, Path, str]

FORMATS = ("hf", "mmseg", "torchvision")
# Source keys that carry no weights (BatchNorm's step counter).
_IGNORED_SUFFIXES = (".num_batches_tracked",)


# ----------------------------------------------------------------------------
# Renaming: source key -> list of (target, array in PyTorch layout).

_LEAF = {"weight": "weight", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _leaf_target(module_path: Path, leaf: str) -> Target | None:
  if leaf not in _LEAF:
    return None
  collection = "batch_stats" if leaf.startswith("running_") else "params"
  return collection, module_path, _LEAF[leaf]


# transformers' own renaming of hub SegFormer checkpoints (conversion_mapping.py).
_SEGFORMER_HF_LEGACY = [
    (r"encoder\.patch_embeddings\.(\d+)\.", r"stages.\1.patch_embeddings."),
    (r"encoder\.block\.(\d+)\.", r"stages.\1.blocks."),
    (r"encoder\.layer_norm\.(\d+)\.", r"stages.\1.layer_norm."),
    (r"attention\.self\.query\.", "attention.q_proj."),
    (r"attention\.self\.key\.", "attention.k_proj."),
    (r"attention\.self\.value\.", "attention.v_proj."),
    (r"attention\.self\.sr\.", "attention.sequence_reduction.sequence_reduction."),
    (r"attention\.self\.layer_norm\.", "attention.sequence_reduction.layer_norm."),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"mlp\.dense1\.", "mlp.fc1."),
    (r"mlp\.dense2\.", "mlp.fc2."),
    (r"layer_norm_1\.", "layernorm_before."),
    (r"layer_norm_2\.", "layernorm_after."),
    (r"decode_head\.linear_c\.", "decode_head.linear_projections."),
]


def _indexed_path(parts: list[str], listed: set[str]) -> Path:
  """["stages", "0", "blocks", "1", "mlp"] -> ("stages_0", "blocks_1", "mlp")."""
  out: list[str] = []
  i = 0
  while i < len(parts):
    if parts[i] in listed and i + 1 < len(parts) and parts[i + 1].isdigit():
      out.append(f"{parts[i]}_{parts[i + 1]}")
      i += 2
    else:
      out.append(parts[i])
      i += 1
  return tuple(out)


def rename_segformer_hf(key: str, array: np.ndarray) -> list[tuple[Target, np.ndarray]]:
  """One `transformers` SegFormer key -> Flax targets (empty when it maps nowhere)."""
  for pattern, repl in _SEGFORMER_HF_LEGACY:
    key = re.sub(pattern, repl, key)
  key = key.removeprefix("segformer.")
  parts = key.split(".")
  if parts[0] == "stages":
    root = ("encoder",)
  elif parts[0] == "decode_head":
    root, parts = ("decode_head",), parts[1:]
  else:
    return []  # e.g. an image-classification head.
  # The Mix-FFN's dwconv wraps a Conv2d called dwconv; proj wraps the head's Linear.
  key_path = ".".join(parts).replace("mlp.dwconv.dwconv.", "mlp.dwconv.")
  key_path = re.sub(r"linear_projections\.(\d+)\.proj\.", r"linear_projections.\1.", key_path)
  parts = key_path.split(".")
  module = _indexed_path(parts[:-1], {"stages", "blocks", "linear_projections"})
  target = _leaf_target(root + module, parts[-1])
  return [(target, array)] if target else []


def rename_segformer_mmseg(key: str, array: np.ndarray) -> list[tuple[Target, np.ndarray]]:
  """One original-SegFormer/mmseg MiT key (`mit_b0.pth`) -> Flax targets."""
  key = key.removeprefix("backbone.")
  parts = key.split(".")
  leaf = parts[-1]
  if m := re.fullmatch(r"patch_embed(\d)", parts[0]):
    stage = f"stages_{int(m[1]) - 1}"
    sub = {"proj": "proj", "norm": "layer_norm"}.get(parts[1])
    module = ("encoder", stage, "patch_embeddings", sub) if sub else None
  elif m := re.fullmatch(r"norm(\d)", parts[0]):
    module = ("encoder", f"stages_{int(m[1]) - 1}", "layer_norm")
  elif m := re.fullmatch(r"block(\d)", parts[0]):
    block = ("encoder", f"stages_{int(m[1]) - 1}", f"blocks_{parts[1]}")
    inner = ".".join(parts[2:-1])
    if inner == "attn.kv":
      # One Linear holds keys then values: split into k_proj and v_proj.
      k, v = np.split(array, 2, axis=0)
      return [(("params", block + ("attention", "k_proj"), _LEAF[leaf]), k),
              (("params", block + ("attention", "v_proj"), _LEAF[leaf]), v)]
    names = {"norm1": ("layernorm_before",), "norm2": ("layernorm_after",),
             "attn.q": ("attention", "q_proj"), "attn.proj": ("attention", "o_proj"),
             "attn.sr": ("attention", "sequence_reduction", "sequence_reduction"),
             "attn.norm": ("attention", "sequence_reduction", "layer_norm"),
             "mlp.fc1": ("mlp", "fc1"), "mlp.fc2": ("mlp", "fc2"),
             "mlp.dwconv.dwconv": ("mlp", "dwconv")}
    module = block + names[inner] if inner in names else None
  else:
    module = None  # e.g. the ImageNet head, or a decode head in a full checkpoint.
  target = _leaf_target(module, leaf) if module else None
  return [(target, array)] if target else []


def rename_resnet_hf(key: str, array: np.ndarray) -> list[tuple[Target, np.ndarray]]:
  """One `transformers` ResNetModel key -> Flax ResNet targets."""
  key = key.removeprefix("resnet.")
  parts = key.split(".")
  if parts[:2] == ["embedder", "embedder"]:
    module = ("embedder",) + tuple(parts[2:-1])
  elif parts[:2] == ["encoder", "stages"]:
    module = _indexed_path(parts[1:-1], {"stages", "layers", "layer"})
  else:
    return []
  target = _leaf_target(module, parts[-1])
  return [(target, array)] if target else []


def rename_resnet_torchvision(key: str, array: np.ndarray) -> list[tuple[Target, np.ndarray]]:
  """One torchvision ResNet key -> Flax ResNet targets."""
  parts = key.split(".")
  if parts[0] in ("conv1", "bn1"):
    module = ("embedder", "convolution" if parts[0] == "conv1" else "normalization")
  elif m := re.fullmatch(r"layer(\d)", parts[0]):
    block = (f"stages_{int(m[1]) - 1}", f"layers_{parts[1]}")
    if c := re.fullmatch(r"(conv|bn)(\d)", parts[2]):
      kind = "convolution" if c[1] == "conv" else "normalization"
      module = block + (f"layer_{int(c[2]) - 1}", kind)
    elif parts[2] == "downsample":
      module = block + ("shortcut", "convolution" if parts[3] == "0" else "normalization")
    else:
      return []
  else:
    return []  # fc.*
  target = _leaf_target(module, parts[-1])
  return [(target, array)] if target else []


RENAMERS: dict[tuple[str, str], Callable[[str, np.ndarray], list]] = {
    ("segformer", "hf"): rename_segformer_hf,
    ("segformer", "mmseg"): rename_segformer_mmseg,
    ("resnet", "hf"): rename_resnet_hf,
    ("resnet", "torchvision"): rename_resnet_torchvision,
}


# ----------------------------------------------------------------------------
# Layout and checking against the expected tree.

def _to_flax_layout(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """PyTorch layout -> the layout of a Flax leaf of `shape` (None if impossible)."""
  if array.ndim == 4 and len(shape) == 4:  # Conv2d OIHW (depthwise: C1HW) -> HWIO.
    array = array.transpose(2, 3, 1, 0)
  elif array.ndim == 2 and len(shape) == 2:  # Linear (out, in) -> Dense (in, out).
    array = array.T
  elif array.ndim == 4 and len(shape) == 2 and array.shape[2:] == (1, 1):  # 1x1 conv -> Dense.
    array = array[:, :, 0, 0].T
  return array if array.shape == tuple(shape) else None


def _get(tree: dict, path: Path) -> Any:
  for name in path:
    if not isinstance(tree, dict) or name not in tree:
      return None
    tree = tree[name]
  return tree


def _set(tree: dict, path: Path, value: Any) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def _leaves(tree: dict, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
  for name, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, prefix + (name,))
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
      module_tree = _get(expected.get(collection, {}), module)
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
      _set(variables, (collection,) + module + (name,), converted.astype(np.float32))
      loaded[key] = "/".join((collection,) + module + (name,))
      placed = True
    if not placed and not key.endswith(_IGNORED_SUFFIXES):
      not_loaded.append(key)
  for collection in expected:
    subtree = _get(expected[collection], scope)
    if not isinstance(subtree, dict):
      continue
    for path, _ in _leaves(subtree):
      if _get(variables.get(collection, {}), scope + path) is None:
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
  from sesam_jax.models import mit, resnet
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
  import jax
  import jax.numpy as jnp

  from sesam_jax.models import create_model
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

def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch checkpoint (.pth/.pt/.bin via torch, .safetensors without).

  Nested {"state_dict": ...} / {"model": ...} wrappers (mmseg, classification
  trainers) are unwrapped; bf16/fp16 tensors become float32.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: the file holds no tensor dict.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such checkpoint file.")
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file
    return {k: np.asarray(v) for k, v in load_file(str(path)).items()}
  import torch  # Only here: the training path never imports torch.
  obj = torch.load(str(path), map_location="cpu", weights_only=True)
  for wrapper in ("state_dict", "model"):
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
    raise ValueError(f"{path}: expected a dict of tensors (a state dict), got {type(obj).__name__}.")
  return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in obj.items()}


def save_converted(conversion: Conversion, path: str | os.PathLike, *, source: str = "",
                   fmt: str = "", extra_meta: dict | None = None) -> None:
  """Writes {"meta", "variables"} as msgpack, atomically (temp file, then rename).

  `extra_meta` adds fields to meta (e.g. the SAM converter's "sam_spec").
  """
  from flax import serialization
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  payload = {"meta": {"model": conversion.model, "scope": conversion.scope,
                      "source": str(source), "format": fmt, **(extra_meta or {})},
             "variables": conversion.variables}
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(serialization.msgpack_serialize(payload))
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def load_converted(path: str | os.PathLike) -> tuple[dict, dict]:
  """Reads a file written by `save_converted` -> (variables, meta)."""
  from flax import serialization
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such converted checkpoint (make one with `sesam convert`).")
  try:
    payload = serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # msgpack raises several types for corrupt files.
    raise ValueError(f"{path}: not a `sesam convert` checkpoint ({e}).") from e
  if not isinstance(payload, dict) or "variables" not in payload:
    raise ValueError(f"{path}: not a `sesam convert` checkpoint (no 'variables').")
  return payload["variables"], payload.get("meta", {})


def merge_pretrained(variables: Any, pretrained: dict, *,
                     skip_mismatched: bool = False) -> tuple[dict, list[str]]:
  """Lays converted leaves over initialised variables (configs' `init`).

  Args:
    variables: {"params": ..., "batch_stats": ...} from model.init.
    pretrained: variables of a converted checkpoint (a subtree is fine).
    skip_mismatched: keep the initialised leaf where shapes differ (e.g. a
      classifier for another number of classes) instead of failing.

  Returns:
    (new variables as nested dicts, paths that were skipped).

  Raises:
    ValueError: naming a pretrained path missing from the model, or of another
      shape (unless skip_mismatched).
  """
  import jax.numpy as jnp
  out = _to_dicts(variables)
  skipped = []
  for collection, subtree in pretrained.items():
    for path, value in _leaves(subtree):
      name = "/".join((collection,) + path)
      current = _get(out.get(collection, {}), path)
      if current is None:
        raise ValueError(f"pretrained leaf {name} does not exist in this model: the checkpoint "
                         "was converted for another model.")
      if tuple(current.shape) != tuple(np.shape(value)):
        if skip_mismatched:
          skipped.append(name)
          continue
        raise ValueError(f"pretrained leaf {name} has shape {np.shape(value)}, the model wants "
                         f"{tuple(current.shape)} (another num_classes? convert encoder-only).")
      _set(out[collection], path, jnp.asarray(value, current.dtype))
  return out, skipped


def _to_dicts(tree: Any) -> Any:
  if hasattr(tree, "items"):
    return {k: _to_dicts(v) for k, v in tree.items()}
  return tree


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, fmt: str, *,
                 model: str | None = None) -> dict:
  """`sesam convert`: reads a PyTorch checkpoint, converts it, writes `dst`.

  Args:
    src: .pth/.pt/.bin/.safetensors state dict.
    dst: output msgpack file (see `save_converted`); written only on success.
    fmt: "hf", "mmseg" or "torchvision".
    model: target student name; inferred when None.

  Returns:
    {"model", "scope", "dst", "num_loaded", "loaded" (source key -> Flax
    path), "not_loaded" (source keys left out)}.
  """
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}.")
  try:
    conversion = convert_checkpoint(read_state_dict(src), fmt, model=model)
  except ValueError as e:
    raise ValueError(f"{src}: {e}") from e
  save_converted(conversion, dst, source=str(src), fmt=fmt)
  return {"model": conversion.model, "scope": conversion.scope or "full", "dst": str(dst),
          "num_loaded": len(conversion.loaded), "loaded": conversion.loaded,
          "not_loaded": conversion.not_loaded}


def init_from_converted(variables: Any, path: str | os.PathLike, *,
                        skip_mismatched: bool = False) -> tuple[dict, list[str]]:
  """Configs' `init`: lays a `sesam convert` checkpoint over initialised variables.

  Args:
    variables: {"params": ..., "batch_stats": ...} from model.init.
    path: file written by `sesam convert` (encoder-only or full).
    skip_mismatched: keep initialised leaves whose shapes differ (e.g. the
      classifier of a checkpoint trained for another number of classes).

  Returns:
    (variables, skipped paths).
  """
  pretrained, _ = load_converted(path)
  try:
    return merge_pretrained(variables, pretrained, skip_mismatched=skip_mismatched)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e
