"""The official `segment_anything` package as a backend (optional; needs torchvision).

Imported lazily. On hosts without torchvision (this project's CPU machines) use
`transformers:/path/sam_vit_b_01ec64.pth`, which converts the same checkpoint.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np

from sam_bridge.api import Prediction, PromptSet


class OfficialSamBackend:
  """`segment_anything.SamPredictor` behind the Backend protocol.

  Args:
    checkpoint: path to sam_vit_{b,l,h}_*.pth; the variant is read from the file name.
    device: torch device string.
  """

  is_oracle = False

  def __init__(self, checkpoint: str, *, device: str = "cpu", dtype: str = "float32", **_):
    try:
      import torchvision  # noqa: F401
    except ImportError as e:
      raise ImportError(
          "backend 'segment_anything' needs torchvision, which has no CPU wheel for this torch; "
          f"use 'transformers:{checkpoint}' (same checkpoint, converted on load) instead") from e
    from segment_anything import SamPredictor, sam_model_registry
    p = pathlib.Path(checkpoint)
    if not p.is_file():
      raise FileNotFoundError(f"{p}: official SAM checkpoint not found (sam_vit_b_01ec64.pth etc.)")
    variant = next((v for v in ("vit_b", "vit_l", "vit_h") if v in p.name), None)
    if variant is None:
      raise ValueError(f"{p.name}: cannot tell the variant; name it sam_vit_b/l/h_*.pth")
    if dtype not in ("float32", "fp32"):
      raise ValueError("backend 'segment_anything' runs float32 only; use 'transformers' for bf16")
    if str(device).startswith("cpu"):
      import torch
      torch.set_flush_denormal(True)  # Subnormals are ~10x slower on x86 (see transformers_sam).
    sam = sam_model_registry[variant](checkpoint=str(p)).to(device).eval().requires_grad_(False)
    self.predictor = SamPredictor(sam)
    self.name = f"segment_anything:{p.name}"

  def set_image(self, image: np.ndarray, *, fine_label: np.ndarray | None = None) -> None:
    self.predictor.set_image(image)

  def predict(self, prompts: Sequence[PromptSet]) -> list[Prediction]:
    out = []
    for p in prompts:
      if p.mask is not None:
        raise ValueError("backend 'segment_anything' takes point and box prompts here; use "
                         "'transformers:<same checkpoint>' for mask prompts")
      masks, scores, _ = self.predictor.predict(
          point_coords=p.points if len(p.points) else None,
          point_labels=p.point_labels if len(p.points) else None,
          box=p.box, multimask_output=True)
      out.append(Prediction(masks.astype(bool), scores.astype(np.float32)))
    return out
