"""Methods and paper settings of `sesam bench --what memory` (Table 6, ADE20K).

`--method` takes one method or several (comma-separated) compiled side by side; besides the
methods table's names, `agmm_naive` is AGMM with its response computed for every class at once
(`config.agmm.class_chunk=0`, the public code's B x K x C x h x w broadcast). `--setting` fills
in the paper's cases:

  table6   Table 6: Cityscapes (19 classes), DeepLabV3+-R101, batch 4, crop 1024, bf16, 1 device
  ade20k   ADE20K (150 classes), DeepLabV3+-R101, crop 512, batch 8 on one device (the ADE20K
           config's global batch of 16 over 2 devices), bf16

each with FixMatch, AGMM, the naive AGMM and SeSAM. `compare` puts every method's total beside
FixMatch's (the AGMM goal: at most FixMatch + 10%).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from sesam_jax.models.deeplabv3plus import DEEPLAB_VARIANTS
from sesam_jax.models.mit import MIT_VARIANTS

METHODS = ("sesam", "fixmatch", "supervised", "agmm", "agmm_naive")
# A benchmark method that is a methods-table method with config fields set.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {"agmm_naive": ("agmm", {"class_chunk": 0})}
SETTINGS: dict[str, dict[str, Any]] = {
    "table6": dict(cases="deeplabv3plus_r101:4", crop=1024, dtypes="bf16", devices="1",
                   num_classes=19, method="fixmatch,agmm,agmm_naive,sesam"),
    "ade20k": dict(cases="deeplabv3plus_r101:8", crop=512, dtypes="bf16", devices="1",
                   num_classes=150, method="fixmatch,agmm,agmm_naive,sesam"),
}
AGMM_GOAL = 1.10  # AGMM's step may need at most this times FixMatch's memory
GIB = 2 ** 30


def parse_methods(text: str) -> list[str]:
  """"fixmatch,agmm" -> ["fixmatch", "agmm"], with the choices in the error."""
  names = [m.strip() for m in text.split(",") if m.strip()]
  bad = [m for m in names if m not in METHODS]
  if bad or not names:
    raise ValueError(f"--method {text!r}: choose from {', '.join(METHODS)} (comma-separated).")
  return names


def apply_setting(args: Any) -> None:
  """Overwrites `args`' cases, crop, dtypes, devices and classes with `--setting`'s (if any),
  and its methods unless `--method` was given (default: sesam)."""
  setting = dict(SETTINGS[args.setting]) if getattr(args, "setting", None) else {}
  method = setting.pop("method", "sesam")
  for key, value in setting.items():
    setattr(args, key, value)
  args.method = args.method or method


def step_config(method: str, config: ml_collections.ConfigDict
                ) -> tuple[str, ml_collections.ConfigDict]:
  """(methods-table name, `config` with the benchmark variant's fields set)."""
  name, fields = VARIANTS.get(method, (method, {}))
  for key, value in fields.items():
    config.agmm[key] = value
  return name, config


def feature_channels(model: str) -> int | None:
  """Channels of the feature AGMM reads (decoder / fused decode head), None if unknown."""
  variant = model.rsplit("_", 1)[-1]
  if model.startswith("deeplabv3plus") and variant in DEEPLAB_VARIANTS:
    return DEEPLAB_VARIANTS[variant]["aspp_channels"]
  if model.startswith("segformer") and variant.upper() in MIT_VARIANTS:
    return MIT_VARIANTS[variant.upper()]["decoder_hidden_size"]
  if model.startswith("segformer") and variant in MIT_VARIANTS:
    return MIT_VARIANTS[variant]["decoder_hidden_size"]
  return None


def broadcast_gib(model: str, num_classes: int, per_device_batch: int, crop: int) -> float | None:
  """GiB of one float32 B x K x C x (crop/4)^2 tensor: what the public code materialises for
  the response (and keeps for its backward pass) on each device."""
  channels = feature_channels(model)
  if channels is None:
    return None
  return per_device_batch * num_classes * channels * (crop // 4) ** 2 * 4 / GIB


def compare(cases: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
  """For every case key `<case>_<method>`: total / FixMatch's total of the same case."""
  out: dict[str, dict[str, float]] = {}
  for key, case in cases.items():
    base, _, method = key.rpartition("__")
    fixmatch = cases.get(f"{base}__fixmatch", {}).get("total_gib")
    if base and fixmatch and case.get("total_gib") is not None:
      out.setdefault(base, {})[method] = round(case["total_gib"] / fixmatch, 3)
  return out
