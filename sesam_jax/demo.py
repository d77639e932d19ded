"""`sesam demo`: the whole pipeline on the embedded `synthetic` dataset.

Generated scenes (no download, deterministic by seed) go through each stage
the project has, and every stage's figures land in one JSON summary:

  1. weak labels of the three kinds, made from the fine labels and scored
     (labeled fraction, purity, class coverage, mIoU against the fine label
     with unlabeled pixels counted as misses).

Outputs are written under `--out` (one folder per kind) so they can be
inspected or fed to the other commands.
"""

from __future__ import annotations

import pathlib
import time

from sesam_jax import report

KINDS = ("points", "scribbles", "coarse")


def weak_label_stage(source, out_dir: pathlib.Path, *, seed: int) -> dict:
  """Makes and scores weak labels of every kind for `source`."""
  from sesam_jax.data import weak_labels
  from sesam_jax.evaluate import label_scoring
  results = {}
  for kind in KINDS:
    folder = out_dir / f"weak_{kind}"
    made = weak_labels.generate_weak_labels(source, kind, seed=seed, out_dir=folder)
    scored = label_scoring.score_label_folder(source, folder)
    results[kind] = {
        "labeled_fraction": round(made["labeled_fraction"], 5),
        "purity": round(made["purity"], 4),
        "classes_covered": round(made["classes_covered"], 4),
        "miou": round(scored["miou"], 4),
        "ms_per_image": made["ms_per_image"],
    }
    report.log(f"{kind:>10}: labeled {made['labeled_fraction']:.3%}, purity "
               f"{made['purity']:.3f}, mIoU vs fine {scored['miou']:.3f}")
  return results


def run_demo(out_dir: str | pathlib.Path, *, num_images: int = 16,
             size: tuple[int, int] = (256, 512), seed: int = 0) -> dict:
  """Runs every stage on generated scenes and returns the figures.

  Args:
    out_dir: where labels (and later checkpoints) are written.
    num_images: scenes in the validation split.
    size: (H, W) of each scene.
    seed: seed of the dataset and of the weak-label protocols.
  """
  from sesam_jax.data import get_source
  start = time.perf_counter()
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  val = get_source("synthetic", split="val", num_images=num_images, size=size, seed=seed)
  report.log(f"demo: {val!r} -> {out_dir}")
  result = {"dataset": "synthetic", "images": num_images, "size": list(size), "out": str(out_dir)}
  result["weak"] = weak_label_stage(val, out_dir, seed=seed)
  result["seconds"] = round(time.perf_counter() - start, 1)
  return result
