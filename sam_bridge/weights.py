"""SAM weights checked before a model is built, without torch: `check_weights(path, kind)`.

Only what describes the weights is read: a PyTorch checkpoint's pickled index (tensor names and
shapes, never the tensor data), a weights directory's `config.json` and safetensors header, a
msgpack file's first byte. A file that cannot be SAM weights raises `SamSetupError` with one line
naming the file and the fix:

  - a missing path;
  - a file that is not a PyTorch checkpoint (the unpickling fails: garbage, a truncated download,
    an HTML error page saved under a .pth name);
  - a state dict without the official SAM keys (the message names the first missing key);
  - a ViT width that disagrees with the variant in the file's name (`sam_vit_l_*.pth` holding a
    ViT-B).
`sesam_jax.sam.resolver` calls it for every command before any work starts, so a bad file stops
a training run in a second with nothing written, and the trainer never imports torch for it. The
pickle is read by a restricted unpickler that builds no object other than dicts and lists: a
checkpoint from an untrusted source is not executed by this check.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import pickle
import re
import struct
import zipfile
from typing import Any

from sam_bridge.api import SamSetupError

# Official ViT widths -> (variant, depth): sam_vit_{b,l,h}_*.pth.
OFFICIAL_WIDTHS = {768: ("vit_b", 12), 1024: ("vit_l", 24), 1280: ("vit_h", 32)}
# The magic number a legacy (non-zip) torch.save stream starts with.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Weight files of a transformers directory, in the order from_pretrained looks for them.
_DIR_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
_GET_WEIGHTS = ("download sam_vit_b_01ec64.pth (or sam_vit_l_0b3195.pth / sam_vit_h_4b8939.pth) "
                "from the segment-anything release again")


def official_sam_keys(depth: int) -> list[str]:
  """Every key of an official SAM state dict whose image encoder has `depth` blocks, in order.

  These are the names `segment_anything`'s `Sam` module gives its parameters (the same for
  ViT-B/L/H; only the block count differs); `sam_convert.convert_official_sam` maps them all.
  """
  keys = ["image_encoder.pos_embed", "image_encoder.patch_embed.proj.weight",
          "image_encoder.patch_embed.proj.bias"]
  for b in range(depth):
    p = f"image_encoder.blocks.{b}."
    keys += [p + "norm1.weight", p + "norm1.bias", p + "attn.rel_pos_h", p + "attn.rel_pos_w",
             p + "attn.qkv.weight", p + "attn.qkv.bias", p + "attn.proj.weight",
             p + "attn.proj.bias", p + "norm2.weight", p + "norm2.bias",
             p + "mlp.lin1.weight", p + "mlp.lin1.bias", p + "mlp.lin2.weight",
             p + "mlp.lin2.bias"]
  keys += ["image_encoder.neck.0.weight", "image_encoder.neck.1.weight",
           "image_encoder.neck.1.bias", "image_encoder.neck.2.weight",
           "image_encoder.neck.3.weight", "image_encoder.neck.3.bias",
           "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
  keys += [f"prompt_encoder.point_embeddings.{i}.weight" for i in range(4)]
  keys += ["prompt_encoder.not_a_point_embed.weight"]
  for i in (0, 1, 3, 4, 6):
    keys += [f"prompt_encoder.mask_downscaling.{i}.weight",
             f"prompt_encoder.mask_downscaling.{i}.bias"]
  keys += ["prompt_encoder.no_mask_embed.weight"]

  def attention(prefix: str) -> list[str]:
    return [f"{prefix}.{proj}_proj.{w}" for proj in ("q", "k", "v", "out")
            for w in ("weight", "bias")]

  for layer in range(2):  # The two-way transformer of the mask decoder.
    p = f"mask_decoder.transformer.layers.{layer}"
    keys += attention(p + ".self_attn") + [p + ".norm1.weight", p + ".norm1.bias"]
    keys += attention(p + ".cross_attn_token_to_image")
    keys += [p + ".norm2.weight", p + ".norm2.bias", p + ".mlp.lin1.weight",
             p + ".mlp.lin1.bias", p + ".mlp.lin2.weight", p + ".mlp.lin2.bias",
             p + ".norm3.weight", p + ".norm3.bias", p + ".norm4.weight", p + ".norm4.bias"]
    keys += attention(p + ".cross_attn_image_to_token")
  keys += attention("mask_decoder.transformer.final_attn_token_to_image")
  keys += ["mask_decoder.transformer.norm_final_attn.weight",
           "mask_decoder.transformer.norm_final_attn.bias", "mask_decoder.iou_token.weight",
           "mask_decoder.mask_tokens.weight"]
  for i in (0, 1, 3):
    keys += [f"mask_decoder.output_upscaling.{i}.weight", f"mask_decoder.output_upscaling.{i}.bias"]
  for head in [f"output_hypernetworks_mlps.{m}" for m in range(4)] + ["iou_prediction_head"]:
    keys += [f"mask_decoder.{head}.layers.{i}.{w}" for i in range(3) for w in ("weight", "bias")]
  return keys


# ------------------------------------------------------------------ reading a torch index


class _Opaque:
  """Anything a checkpoint's pickle names that the index does not need (never imported)."""

  def __init__(self, *args: Any, **kwargs: Any) -> None:
    pass

  def __setstate__(self, state: Any) -> None:
    pass


class TensorInfo(tuple):
  """A tensor's shape, as the pickle describes it (no data is read)."""


def _rebuild_tensor(storage: Any, offset: Any, size: Any, *rest: Any) -> TensorInfo:
  return TensorInfo(int(s) for s in size)


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
  return data


class _IndexUnpickler(pickle.Unpickler):
  """Reads a torch.save pickle into dicts of `TensorInfo`; builds nothing else it names."""

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in (("collections", "OrderedDict"), ("builtins", "dict")):
      return collections.OrderedDict
    if module.startswith("torch") and name in ("_rebuild_tensor", "_rebuild_tensor_v2",
                                               "_rebuild_tensor_v3"):
      return _rebuild_tensor
    if module.startswith("torch") and name in ("_rebuild_parameter",
                                               "_rebuild_parameter_with_state"):
      return _rebuild_parameter
    return type(f"{module}.{name}", (_Opaque,), {})  # A fresh inert class per name.

  def persistent_load(self, pid: Any) -> Any:
    return _Opaque()  # A tensor's storage: its bytes stay in the file.


def read_torch_index(path: str | os.PathLike, fix: str = "") -> Any:
  """The object a `torch.save` file holds, with every tensor replaced by its shape.

  Args:
    path: a .pth / .pt / .bin file (the zip format of torch >= 1.6, or the legacy stream).
    fix: what to add to the message (e.g. the flag that names the file).

  Returns:
    Usually a dict name -> `TensorInfo` (a state dict).

  Raises:
    SamSetupError: the file is not a PyTorch checkpoint or cannot be read to its end.
  """
  path = pathlib.Path(path)
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
        if name is None:
          raise ValueError("a zip archive without data.pkl")
        with archive.open(name) as f:
          return _IndexUnpickler(f).load()
    with open(path, "rb") as f:
      if f.read(4) == b"PK\x03\x04":  # A zip's first entry without the zip's end: cut short.
        raise ValueError("a zip archive cut short, e.g. an interrupted download")
      f.seek(0)
      unpickler = _IndexUnpickler(f)
      if unpickler.load() != _LEGACY_MAGIC:
        raise ValueError("neither a torch zip archive nor a legacy torch.save stream")
      unpickler.load()  # protocol version
      unpickler.load()  # sys info
      return unpickler.load()
  except Exception as e:  # Any failure of the format: name it in one line.
    reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    raise SamSetupError(f"SAM weights {path} are not a PyTorch checkpoint ({reason}); "
                        f"{_GET_WEIGHTS}{fix}") from None


# ------------------------------------------------------------------ checks


def _variant_in_name(name: str) -> str | None:
  m = re.search(r"vit_([blh])(?![a-z])", name.lower())
  return f"vit_{m.group(1)}" if m else None


def check_official_sam(index: Any, path: str | os.PathLike, fix: str = "") -> str:
  """Checks a torch index (`read_torch_index`) against the official SAM layout.

  Args:
    index: the checkpoint's object (a state dict of shapes).
    path: the file (for the message).
    fix: what to add to messages (e.g. the flag that names the file).

  Returns:
    The variant ("vit_b", "vit_l", "vit_h", or "width N" for a non-official size).

  Raises:
    SamSetupError: not a state dict, a missing key (the first one is named), or a width that
      disagrees with the variant in the file's name.
  """
  path = pathlib.Path(path)
  if not isinstance(index, dict):
    raise SamSetupError(f"SAM weights {path} hold a {type(index).__name__}, not a state dict of "
                        f"tensors: {_GET_WEIGHTS}{fix}")
  patch = index.get("image_encoder.patch_embed.proj.weight")
  blocks = {int(m.group(1)) for k in index
            if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", str(k)))}
  width = int(patch[0]) if isinstance(patch, TensorInfo) and len(patch) == 4 else None
  variant, depth = OFFICIAL_WIDTHS.get(width, (None, max(blocks, default=-1) + 1))
  named = _variant_in_name(path.name)
  if width is not None and named is not None and named != variant:
    holds = {"vit_b": "a ViT-B SAM", "vit_l": "a ViT-L SAM", "vit_h": "a ViT-H SAM"}.get(
        variant, "a ViT")
    raise SamSetupError(f"SAM weights {path} hold {holds} (image encoder width {width}), not the "
                        f"{named} its name says: the file was renamed or mixed up; give the "
                        f"{named} checkpoint, or name this one for what it is{fix}")
  missing = [k for k in official_sam_keys(depth) if k not in index]
  if missing:
    first = ", ".join(str(k) for k in list(index)[:3]) or "none"
    raise SamSetupError(f"SAM weights {path} are not an official SAM checkpoint: key "
                        f"{missing[0]!r} is missing ({len(missing)} missing; its first keys: "
                        f"{first}); {_GET_WEIGHTS}{fix}")
  return variant or f"width {width}"


def _check_safetensors(path: pathlib.Path, fix: str) -> None:
  """A safetensors file whose header (8-byte length, then JSON) names at least one tensor."""
  try:
    with open(path, "rb") as f:
      (length,) = struct.unpack("<Q", f.read(8))
      if length > os.path.getsize(path):
        raise ValueError("its header is longer than the file")
      header = json.loads(f.read(length))
    if not any(k != "__metadata__" for k in header):
      raise ValueError("no tensors")
  except (ValueError, struct.error, UnicodeDecodeError) as e:
    raise SamSetupError(f"SAM weights {path} are not a readable safetensors file ({e}); the file "
                        f"is truncated or corrupt: save or copy it again{fix}") from None


def _check_weights_dir(path: pathlib.Path, fix: str) -> None:
  """A transformers weights directory: config.json of a SAM family, a readable weights file."""
  cfg = path / "config.json"
  if not cfg.is_file():
    raise SamSetupError(f"SAM weights directory {path} has no config.json: save the model with "
                        f"save_pretrained() (or give an official sam_vit_*.pth){fix}")
  try:
    model_type = json.loads(cfg.read_text()).get("model_type")
  except (ValueError, AttributeError) as e:
    raise SamSetupError(f"{cfg} is not valid JSON ({e}); save the model again with "
                        f"save_pretrained(){fix}") from None
  families = ("sam", "sam_hq", "sam2", "sam3_tracker")
  if model_type not in families:
    raise SamSetupError(f"{cfg}: model_type {model_type!r} is not a SAM; give a directory of "
                        f"one of {', '.join(families)}{fix}")
  weights = next((path / n for n in _DIR_WEIGHTS if (path / n).is_file()), None)
  if weights is None:
    raise SamSetupError(f"SAM weights directory {path} holds no weights file (one of "
                        f"{', '.join(_DIR_WEIGHTS)}); save the model with save_pretrained(){fix}")
  if weights.name == "model.safetensors":
    _check_safetensors(weights, fix)
  elif weights.name == "pytorch_model.bin":
    read_torch_index(weights, fix)


def check_weights(path: str | os.PathLike, kind: str, *, flag: str = "") -> str:
  """Raises `SamSetupError` unless `path` can be the weights of backend `kind`.

  Args:
    path: a file or directory.
    kind: "transformers" (a weights directory or an official .pth), "segment_anything" (an
      official .pth), or "jax" (a converted .msgpack, a transformers directory or .safetensors
      file, or an official .pth, as the Flax SAM's loader reads them).
    flag: how the calling command names the path (e.g. "--checkpoint"), for the message.

  Returns:
    What the weights are ("vit_b", "transformers directory (sam)", ...).
  """
  path = pathlib.Path(path)
  fix = f" ({flag})" if flag else ""
  if not path.exists():
    raise SamSetupError(f"SAM weights {path} not found{fix}; give the path of a sam_vit_*.pth, "
                        "a converted .msgpack or a weights directory.")
  if path.is_dir():
    if kind == "segment_anything":
      raise SamSetupError(f"backend segment_anything takes an official sam_vit_*.pth file, not "
                          f"the directory {path}{fix}")
    if kind == "jax":
      return "directory"  # The Flax SAM's own loader reads it.
    _check_weights_dir(path, fix)
    return f"transformers directory ({json.loads((path / 'config.json').read_text())['model_type']})"
  if path.stat().st_size == 0:
    raise SamSetupError(f"SAM weights {path} are an empty file: {_GET_WEIGHTS}{fix}")
  if kind == "jax" and path.suffix == ".msgpack":
    with open(path, "rb") as f:
      first = f.read(1)[0]
    if not (0x80 <= first <= 0x8F or first in (0xDE, 0xDF)):  # A msgpack map.
      raise SamSetupError(f"SAM weights {path} are not a msgpack file of SAM parameters; convert "
                          f"the official .pth again with `sesam convert`{fix}")
    return "msgpack"
  if path.suffix == ".safetensors":
    if kind != "jax":
      raise SamSetupError(f"backend {kind} reads a weights directory (config.json beside "
                          f"{path.name}) or an official sam_vit_*.pth, not a lone .safetensors "
                          f"file: give its directory{fix}")
    _check_safetensors(path, fix)
    return "safetensors"
  if kind == "segment_anything" and _variant_in_name(path.name) is None:
    raise SamSetupError(f"{path.name}: cannot tell the SAM variant; name the file "
                        f"sam_vit_b/l/h_*.pth as released{fix}")
  return check_official_sam(read_torch_index(path, fix), path, fix)
