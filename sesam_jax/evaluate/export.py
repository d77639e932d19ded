"""A trained run as a standalone predictor: a `jax.export` function plus its weights.

`sesam predict --workdir W --export DIR` writes three files:

  predict.jaxexport   the serialised function (variables, images BxHxWx3 uint8) -> BxHxW uint8
                      class ids: the run's inference (`predict.label_function`, whole image or
                      sliding window, `image_scale`) as StableHLO. The batch size B is symbolic,
                      H x W are fixed at export (the students' shapes are not polymorphic in H, W:
                      their attention and windows branch on sizes). Lowered for cpu, cuda and
                      tpu by default, so one file serves every backend.
  variables.msgpack   the weights the function takes ({"params", "batch_stats"}, flax msgpack).
  predictor.json      class names, colours, the input size, and the run, step and settings it
                      was made from (written last: its presence marks a complete export).

Loading is `sesam_jax.evaluate.predictor.load_predictor`, a module apart that needs jax, numpy,
Pillow and flax's msgpack reader only (this one imports the run's inference).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np
from flax import serialization

from sesam_jax import report
from sesam_jax.atomic import write_atomic
from sesam_jax.data import base
from sesam_jax.evaluate import predict
from sesam_jax.evaluate.predictor import FORMAT, FUNCTION_FILE, META_FILE, WEIGHTS_FILE
from sesam_jax.run import runs


def export_run(workdir: str | os.PathLike, out_dir: str | os.PathLike, *, ema: bool = False,
               image_hw: tuple[int, int] | None = None, input_path: str | os.PathLike | None = None,
               platforms: tuple[str, ...] = ("cpu", "cuda", "tpu"), **overrides: Any) -> dict:
  """Exports a run's latest checkpoint as a standalone predictor (`sesam predict --export`).

  Args:
    workdir: the run directory.
    out_dir: the export folder (created; its three files are replaced atomically).
    ema: export the EMA teacher's weights instead of the student's.
    image_hw: the (H, W) the function takes; default the size of the first `input_path` image,
      else of the run's first validation image.
    input_path: an image or folder (only for the default size).
    platforms: platforms to lower for ("cpu", "cuda", "tpu", "rocm").
    **overrides: inference settings (mode, window, stride, image_scale; batch_size unused).

  Returns:
    {"export", "files", "input_shape", "platforms", "weights", "step", "bytes", settings...}.
  """
  run = predict.load_run(workdir, ema=ema)
  settings = predict.settings_from_config(run.config, **overrides)
  if image_hw is None:
    image_hw = _default_hw(run, input_path)
  h, w = (int(v) for v in image_hw)
  if h < 1 or w < 1:
    raise ValueError(f"--export-size {h} {w}: sizes must be positive.")
  fn = jax.jit(predict.label_function(run.model, settings))
  (batch,) = jax.export.symbolic_shape("b")
  variables_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), run.variables)
  try:
    exported = jax.export.export(fn, platforms=tuple(platforms))(
        variables_spec, jax.ShapeDtypeStruct((batch, h, w, 3), np.uint8))
  except (ValueError, NotImplementedError) as e:
    raise ValueError(f"--export-platforms {' '.join(platforms)}: lowering failed ({e}); "
                     "export for fewer platforms.") from None
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / META_FILE).unlink(missing_ok=True)  # Incomplete until the new one is written.
  function_bytes = exported.serialize()
  weights_bytes = serialization.msgpack_serialize(run.variables)
  write_atomic(out / FUNCTION_FILE, function_bytes)
  write_atomic(out / WEIGHTS_FILE, weights_bytes)
  meta = {
      "format": FORMAT, "function": FUNCTION_FILE, "variables": WEIGHTS_FILE,
      "input": {"shape": ["b", h, w, 3], "dtype": "uint8", "layout": "BxHxWx3 RGB"},
      "output": {"shape": ["b", h, w], "dtype": "uint8", "values": "class ids"},
      "platforms": list(exported.platforms),
      "class_names": list(run.info.class_names), "colors": run.info.colors.tolist(),
      "ignore_index": run.info.ignore_index, "dataset": run.info.name,
      "model": run.config.model, "weights": run.weights, "step": run.step,
      "workdir": str(run.workdir.absolute()),
      "settings": {"mode": settings.mode, "window": settings.window, "stride": settings.stride,
                   "image_scale": settings.image_scale},
      "jax_version": jax.__version__}
  write_atomic(out / META_FILE, json.dumps(meta, indent=2))
  size = len(function_bytes) + len(weights_bytes)
  report.log(f"export: {run.weights} weights of {run.workdir} (step {run.step}) -> {out}: "
             f"B x {h} x {w} x 3 uint8 -> B x {h} x {w} class ids, "
             f"{', '.join(exported.platforms)}, {size / 1e6:.1f} MB")
  return {"export": str(out), "files": [FUNCTION_FILE, WEIGHTS_FILE, META_FILE],
          "input_shape": ["b", h, w, 3], "platforms": list(exported.platforms),
          "weights": run.weights, "step": run.step, "bytes": size, **meta["settings"]}


def _default_hw(run: Any, input_path: str | os.PathLike | None) -> tuple[int, int]:
  """The size of the first --input image, else of the run's first validation image."""
  if input_path is not None:
    return base.read_image(predict.list_input_images(input_path)[0]).shape[:2]
  try:
    source = runs.dataset_source(run.config)
    return source[0]["image"].shape[:2]
  except (FileNotFoundError, ValueError) as e:
    raise ValueError(f"--export needs an input size: pass --export-size H W (the run's "
                     f"validation images could not be read: {e})") from None
