"""Backend registry: `create_backend(spec, **kw)`.

Specs:
  oracle                          masks from the fine label (upper bound; named as an oracle)
  superpixel                      scikit-image superpixels at three scales (SAM-free)
  transformers:/path/to/dir       SamModel / SamHQModel / Sam2Model / Sam3TrackerModel weights dir
  transformers:/path/sam_vit_b_01ec64.pth   official checkpoint, converted on load
  random:vit_b                    randomly initialised SamModel (vit_b, vit_l, vit_h, tiny)
  segment_anything:/path/sam_vit_b.pth      the official package (needs torchvision)
Heavy imports (torch, transformers) happen only when such a backend is created.
"""

from __future__ import annotations

from sam_bridge.api import Backend
from sam_bridge.backends.official import OfficialSamBackend
from sam_bridge.backends.oracle import OracleBackend
from sam_bridge.backends.superpixel import SuperpixelBackend
from sam_bridge.backends.transformers_sam import TransformersSamBackend

BACKEND_KINDS = ("oracle", "superpixel", "transformers", "random", "segment_anything")


def create_backend(spec: str, **kw) -> Backend:
  """Builds the backend that `spec` names.

  Args:
    spec: "oracle", "superpixel", "transformers:PATH", "random:VARIANT" or
      "segment_anything:PATH" (see the module docstring).
    **kw: backend keywords (device, dtype, batch_size, seed, scales, ...).

  Returns:
    A Backend; its `name` says what it is (oracle and random included).
  """
  kind, _, arg = spec.partition(":")
  # torch and transformers load only when a SAM backend is built (inside its module).
  if kind == "oracle":
    return OracleBackend(**kw)
  if kind == "superpixel":
    return SuperpixelBackend(**kw)
  if kind == "transformers":
    if not arg:
      raise ValueError("backend 'transformers' needs a path: transformers:/path/to/weights_dir "
                       "or transformers:/path/sam_vit_b_01ec64.pth")
    return TransformersSamBackend.from_path(arg, **kw)
  if kind == "random":
    return TransformersSamBackend.random(arg or "vit_b", **kw)
  if kind == "segment_anything":
    return OfficialSamBackend(arg, **kw)
  raise ValueError(f"unknown backend {spec!r}; choose one of {', '.join(BACKEND_KINDS)} "
                   "(with ':PATH' or ':VARIANT' where needed)")
