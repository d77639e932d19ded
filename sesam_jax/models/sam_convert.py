"""SAM state dicts (numpy) -> Flax parameters of `sesam_jax.models.sam`, and SAM weight files.

Formats (detected from the keys):
  "official"      `sam_vit_{b,l,h}_*.pth` (segment_anything:
                  `image_encoder.blocks.0.attn.qkv.weight`,
                  `prompt_encoder.pe_layer.positional_encoding_gaussian_matrix`, ...).
  "transformers"  a `transformers` SamModel (`save_pretrained` directory or its safetensors:
                  `vision_encoder.layers.0.attn.qkv.weight`, ...).

`convert_sam(state_dict)` is pure: every key is renamed to a Flax path (official names
first become transformers names by the rules in `_OFFICIAL_RULES`), laid out for Flax
(Linear (out, in) -> (in, out); Conv OIHW -> HWIO; ConvTranspose (in, out, kh, kw) ->
(kh, kw, in, out)) and checked against the parameter tree of the SamSpec the weights
imply (`infer_spec`: all sizes but the decoder's head count are in the shapes). A
missing, misshapen or unknown key is an error naming it.

Files: `sesam convert SRC DST --format sam` (`convert_file`) writes the msgpack format
of `conversion.save_converted` with the spec in its meta, atomically. `load_sam(path)`
reads such a file, a transformers directory or a .safetensors file without torch; only a
.pth/.bin source imports torch (to unpickle it).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any

import flax.traverse_util
import numpy as np

from sesam_jax.models import conversion, sam
from sesam_jax.models.conversion import tables

FORMATS = ("official", "transformers")
# Module names whose `.weight` is an embedding table kept as is (the Flax leaf is the module path).
_EMBEDDINGS = {"no_mask_embed", "not_a_point_embed", "iou_token", "mask_tokens",
               *(f"point_embed_{i}" for i in range(4))}
_CONV_TRANSPOSE = {"upscale_conv1", "upscale_conv2"}
# transformers ModuleLists: "layers.0" -> "layers_0".
_LISTS = ("layers", "point_embed", "output_hypernetworks_mlps")
_PE = "shared_image_embedding.positional_embedding"
_PE_TIED = "prompt_encoder.shared_embedding.positional_embedding"  # transformers' tied copy.

# Official segment_anything names -> transformers names (applied in order).
_OFFICIAL_RULES = [
    (r"^image_encoder\.", "vision_encoder."),
    (r"^vision_encoder\.blocks\.", "vision_encoder.layers."),
    (r"^vision_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection."),
    (r"^(vision_encoder\.layers\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
    (r"^vision_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
    (r"^vision_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
    (r"^vision_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
    (r"^vision_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
    (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$", _PE),
    (r"^prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^(mask_decoder\.transformer\.layers\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
    (r"^mask_decoder\.transformer\.norm_final_attn\.",
     "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
]
# The official decoder MLPs number their Linear layers 0..depth-1; transformers names them.
_OFFICIAL_MLP = re.compile(
    r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))"
    r"\.layers\.(\d+)\.(.*)$")


def detect_format(state_dict: dict[str, Any]) -> str:
  """"official" or "transformers" from the key names; ValueError if neither."""
  if any(k.startswith("image_encoder.") for k in state_dict):
    return "official"
  if any(k.startswith("vision_encoder.") for k in state_dict):
    return "transformers"
  some = ", ".join(sorted(state_dict)[:3])
  raise ValueError(f"not a SAM state dict (keys {some}, ...): expected official "
                   "`image_encoder.*` or transformers `vision_encoder.*` keys")


def official_to_transformers_names(state_dict: dict[str, Any]) -> dict[str, Any]:
  """Renames an official state dict to transformers SamModel names (values not copied)."""
  depth = 1 + max([int(m.group(2)) for k in state_dict if (m := _OFFICIAL_MLP.match(k))], default=2)
  out = {}
  for key, value in state_dict.items():
    new = key
    for pattern, repl in _OFFICIAL_RULES:
      new = re.sub(pattern, repl, new)
    if m := _OFFICIAL_MLP.match(new):
      i = int(m.group(2))
      layer = "proj_in" if i == 0 else "proj_out" if i == depth - 1 else f"layers.{i - 1}"
      new = f"{m.group(1)}.{layer}.{m.group(3)}"
    out[new] = value
  return out


def _flax_target(key: str, ndim: int) -> tuple[tuple[str, ...], str]:
  """A transformers key -> (Flax path, layout kind: raw, linear, conv, conv_t, norm, bias)."""
  # patch_embed.projection -> patch_embed (the Flax module is the conv itself).
  parts = key.replace("patch_embed.projection.", "patch_embed.").split(".")
  joined = tables.indexed_path(parts, _LISTS)
  *module, leaf = joined
  if leaf == "bias":
    return tuple(module) + ("bias",), "bias"
  if leaf != "weight":
    return tuple(joined), "raw"  # pos_embed, rel_pos_h/w, positional_embedding.
  if module[-1] in _EMBEDDINGS:
    return tuple(module), "raw"
  if module[-1] in _CONV_TRANSPOSE:
    return tuple(module) + ("kernel",), "conv_t"
  kind = {4: "conv", 2: "linear", 1: "norm"}.get(ndim, "raw")
  return tuple(module) + ("scale" if kind == "norm" else "kernel",), kind


def _layout(array: np.ndarray, kind: str) -> np.ndarray:
  if kind == "linear":
    return array.T
  if kind == "conv":  # O x I x kh x kw -> kh x kw x I x O.
    return array.transpose(2, 3, 1, 0)
  if kind == "conv_t":  # I x O x kh x kw -> kh x kw x I x O.
    return array.transpose(2, 3, 0, 1)
  return array


def infer_spec(state_dict: dict[str, Any], *, decoder_heads: int = 8) -> sam.SamSpec:
  """The SamSpec that a transformers-named SAM state dict's shapes imply.

  Args:
    state_dict: transformers SamModel names -> arrays (official_to_transformers_names first).
    decoder_heads: mask-decoder heads (8 in every official model; not in the shapes).

  Returns:
    SamSpec. The encoder's heads come from the relative-position tables' width (head dim).
  """
  def shape(key: str) -> tuple[int, ...]:
    if key not in state_dict:
      raise ValueError(f"missing key {key!r}: not a complete SAM checkpoint")
    return tuple(np.shape(state_dict[key]))

  def count(prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in state_dict if (m := pat.match(k))})

  width, _, patch, _ = shape("vision_encoder.patch_embed.projection.weight")
  grid = shape("vision_encoder.pos_embed")[1]
  depth = count("vision_encoder.layers.")
  if depth == 0:
    raise ValueError("missing keys vision_encoder.layers.*: not a complete SAM checkpoint")
  rel = [shape(f"vision_encoder.layers.{i}.attn.rel_pos_h") for i in range(depth)]
  global_idx = tuple(i for i, r in enumerate(rel) if r[0] == 2 * grid - 1)
  windowed = [r[0] for i, r in enumerate(rel) if i not in global_idx]
  prompt_dim = shape("vision_encoder.neck.conv1.weight")[0]
  mlp_dim = shape("vision_encoder.layers.0.mlp.lin1.weight")[0]
  return sam.SamSpec(
      encoder_width=width, encoder_depth=depth, encoder_heads=width // rel[0][1],
      global_attn_indexes=global_idx,
      window_size=(windowed[0] + 1) // 2 if windowed else sam.SamSpec.window_size,
      image_size=grid * patch, patch_size=patch,
      encoder_mlp_dim=0 if mlp_dim == 4 * width else mlp_dim,
      num_pos_feats=shape(_PE if _PE in state_dict else _PE_TIED)[1],
      prompt_dim=prompt_dim,
      mask_input_channels=shape("prompt_encoder.mask_embed.conv2.weight")[0],
      decoder_depth=count("mask_decoder.transformer.layers."),
      decoder_heads=decoder_heads,
      decoder_mlp_dim=shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
      iou_head_hidden_dim=shape("mask_decoder.iou_prediction_head.proj_in.weight")[0],
      iou_head_depth=2 + count("mask_decoder.iou_prediction_head.layers."),
      num_multimask_outputs=shape("mask_decoder.mask_tokens.weight")[0] - 1)


def convert_sam(state_dict: dict[str, Any], *, spec: sam.SamSpec | None = None,
                decoder_heads: int = 8) -> tuple[dict, sam.SamSpec, str]:
  """Converts an official or transformers SAM state dict to Flax parameters.

  Args:
    state_dict: key -> numpy array (torch tensors are not accepted: convert with .numpy()).
    spec: the target sizes; None = inferred from the shapes (`infer_spec`).
    decoder_heads: mask-decoder heads when the spec is inferred.

  Returns:
    ({"params": nested dict of float32 numpy arrays}, spec, detected format).

  Raises:
    ValueError: naming the key that is unknown, misshapen, or the parameter nobody fills.
  """
  fmt = detect_format(state_dict)
  sd = official_to_transformers_names(state_dict) if fmt == "official" else dict(state_dict)
  if _PE_TIED in sd:  # transformers ties the prompt encoder's copy to the shared one.
    tied = sd.pop(_PE_TIED)
    if _PE in sd and not np.array_equal(np.asarray(sd[_PE]), np.asarray(tied)):
      raise ValueError(f"{_PE_TIED} differs from {_PE}; SAM shares one Gaussian matrix")
    sd.setdefault(_PE, tied)
  spec = spec or infer_spec(sd, decoder_heads=decoder_heads)
  expected = flax.traverse_util.flatten_dict(sam.param_shapes(spec)["params"])
  flat: dict[tuple[str, ...], np.ndarray] = {}
  source_of: dict[tuple[str, ...], str] = {}
  for key in sorted(sd):
    array = np.asarray(sd[key])
    path, kind = _flax_target(key, array.ndim)
    if path not in expected:
      raise ValueError(f"state dict key {key!r} is not part of a SAM of this architecture "
                       f"(no Flax parameter {'/'.join(path)}); a SAM-HQ or SAM 2 checkpoint?")
    value = _layout(array, kind)
    want = tuple(expected[path].shape)
    if value.shape != want:
      raise ValueError(f"state dict key {key!r} has shape {array.shape}, which does not fit "
                       f"{'/'.join(path)} of shape {want}")
    if path in flat:
      raise ValueError(f"state dict keys {source_of[path]!r} and {key!r} both fill "
                       f"{'/'.join(path)}")
    flat[path] = value.astype(np.float32)
    source_of[path] = key
  missing = [p for p in expected if p not in flat]
  if missing:
    raise ValueError(f"no state dict key fills {'/'.join(missing[0])} ({len(missing)} parameters "
                     "missing): an incomplete or non-SAM checkpoint")
  return {"params": flax.traverse_util.unflatten_dict(flat)}, spec, fmt


# ----------------------------------------------------------------------------
# Files.

def read_sam_weights(src: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict | None]:
  """A SAM state dict from a file or transformers directory -> (numpy state dict, config.json).

  Accepts an official .pth, a .safetensors file, or a `save_pretrained` directory
  (model.safetensors, sharded safetensors, or pytorch_model.bin). Only .pth/.bin need torch.
  """
  path = pathlib.Path(src)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such SAM checkpoint (give sam_vit_*.pth, a .safetensors "
                            "file or a transformers save_pretrained directory)")
  if path.is_file():
    return _read_file(path), None
  config = None
  if (path / "config.json").is_file():
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type", "sam") != "sam":
      raise ValueError(f"{path / 'config.json'}: model_type {config.get('model_type')!r}; the Flax "
                       "SAM reads SamModel (model_type 'sam') weights")
  files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
  if not files:
    raise FileNotFoundError(f"{path}: no *.safetensors or pytorch_model*.bin weights in this "
                            "directory")
  state_dict: dict[str, np.ndarray] = {}
  for f in files:
    state_dict.update(_read_file(f) if f.suffix == ".safetensors" else
                      conversion.read_state_dict(f))
  return state_dict, config


def _read_file(path: pathlib.Path) -> dict[str, np.ndarray]:
  if path.suffix != ".safetensors":
    return conversion.read_state_dict(path)
  from safetensors import safe_open
  out = {}
  with safe_open(str(path), framework="flax") as f:  # jax arrays: bf16 files load too.
    for key in f.keys():
      out[key] = np.asarray(f.get_tensor(key).astype("float32"))
  return out


def _decoder_heads(config: dict | None) -> int:
  if not config:
    return 8
  return int(config.get("mask_decoder_config", {}).get("num_attention_heads", 8))


def convert_file(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
  """`sesam convert SRC DST --format sam`: writes a Flax SAM checkpoint (msgpack), atomically.

  Args:
    src: official sam_vit_*.pth, a .safetensors file or a transformers directory.
    dst: output file; written only when the conversion succeeded.

  Returns:
    {"model", "format", "dst", "num_params", "spec"}.
  """
  state_dict, config = read_sam_weights(src)
  try:
    params, spec, fmt = convert_sam(state_dict, decoder_heads=_decoder_heads(config))
  except ValueError as e:
    raise ValueError(f"{src}: {e}") from e
  model = _model_name(spec)
  converted = conversion.Conversion(params, loaded={}, not_loaded=[], scope="", model=model)
  conversion.save_converted(converted, dst, source=str(src), fmt=f"sam/{fmt}",
                            extra_meta={"sam_spec": spec.to_dict()})
  return {"model": model, "format": fmt, "dst": str(dst), "num_params": sam.num_params(params),
          "num_tensors": len(state_dict), "spec": spec.to_dict()}


def _model_name(spec: sam.SamSpec) -> str:
  for name, sizes in sam.SAM_VARIANTS.items():
    if sam.sam_spec(name) == spec:
      return f"sam_{name}"
  return f"sam_custom_w{spec.encoder_width}_d{spec.encoder_depth}"


def load_sam(src: str | os.PathLike) -> tuple[dict, sam.SamSpec, str]:
  """Flax SAM parameters from a `sesam convert` msgpack, a transformers dir or weights file.

  Returns:
    ({"params": ...}, spec, a short description of the source for names and reports).
  """
  path = pathlib.Path(src)
  if path.is_file() and path.suffix == ".msgpack":
    variables, meta = conversion.load_converted(path)
    if "sam_spec" not in meta:
      raise ValueError(f"{path}: not a SAM checkpoint (convert one with "
                       "`sesam convert sam_vit_b_01ec64.pth sam_vit_b.msgpack --format sam`)")
    spec = sam.SamSpec.from_dict(meta["sam_spec"])
    params = {"params": variables["params"]}
    # Check the tree before the first jit call would fail with a less readable error.
    expected = flax.traverse_util.flatten_dict(sam.param_shapes(spec)["params"])
    got = flax.traverse_util.flatten_dict(params["params"])
    for p, v in expected.items():
      if p not in got or tuple(np.shape(got[p])) != tuple(v.shape):
        raise ValueError(f"{path}: parameter {'/'.join(p)} missing or misshapen; convert again")
    return params, spec, f"{path.name} ({meta.get('model', 'sam')})"
  state_dict, config = read_sam_weights(path)
  try:
    params, spec, fmt = convert_sam(state_dict, decoder_heads=_decoder_heads(config))
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e
  return params, spec, f"{path.name} ({fmt}, converted on load)"
