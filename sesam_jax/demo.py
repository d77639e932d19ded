"""`sesam demo`: the whole pipeline on the embedded `synthetic` dataset.

Generated scenes (no download, deterministic by seed) go through each stage
the project has, and every stage's figures land in one JSON summary:

  1. weak labels of the three kinds, made from the fine labels and scored
     (labeled fraction, purity, class coverage, mIoU against the fine label
     with unlabeled pixels counted as misses);
  2. SeSAM label refinement of each kind with the SAM-free `superpixel` prior
     (or a real SAM given with `--sam-checkpoint`), scored as `sesam refine`
     scores it (Table 5's precision / recall / F1, mIoU);
  3. a tiny SegFormer trained twice on the `--train-weak` labels: on the weak
     labels alone ("supervised") and with SeSAM (teacher, SAM labels,
     pseudo-labels), both evaluated on the validation scenes;
  4. the figures (when matplotlib is installed): how the `--train-weak` labels
     of the first two scenes were refined (`sesam refine --visualize 2`), and
     for the two runs a qualitative grid (`sesam plot qualitative`) and their
     training curves (`sesam plot curves`), under `--out`/figures.

Re-running with the same `--out` resumes the training runs where they stopped.

Outputs are written under `--out` (one folder per kind) so they can be
inspected or fed to the other commands.
"""

from __future__ import annotations

import importlib.util
import pathlib
import time

from sesam_jax import configs_common, report
from sesam_jax.data import get_source, weak_splits
from sesam_jax.evaluate import label_scoring
from sesam_jax.plots import curves, qualitative, refinement
from sesam_jax.sam import resolver
from sesam_jax.sam.refine_labels import refine_dataset
from sesam_jax import loop

KINDS = ("points", "scribbles", "coarse")
REFINE_FIGURES = 2  # Scenes drawn by the refinement figure.
QUALITATIVE_ROWS = 3  # Validation scenes of the runs in the qualitative grid.
FIGURE_DPI = 80
EVAL_EVERY = 100  # Steps between the training runs' evaluations (and one at the end).


def weak_label_stage(source, out_dir: pathlib.Path, *, seed: int) -> dict:
  """Makes and scores weak labels of every kind for `source`."""
  results = {}
  for kind in KINDS:
    folder = out_dir / f"weak_{kind}"
    made = weak_splits.generate_weak_labels(source, kind, seed=seed, out_dir=folder)
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


def refine_stage(source, out_dir: pathlib.Path, *, backend, seed: int) -> dict:
  """SeSAM labels of every weak kind for `source`, scored against the fine labels."""
  results = {}
  for kind in KINDS:
    r = refine_dataset(source, weak_kind=kind, out_dir=out_dir / f"sesam_{kind}", backend=backend,
                       seed=seed, weak_dir=out_dir / f"weak_{kind}")
    results[kind] = {k: round(r[k], 4) for k in ("precision", "recall", "f1", "miou", "weak_miou")}
    report.log(f"{kind:>10}: SeSAM labels ({r['backend']}) mIoU {r['miou']:.3f} vs weak "
               f"{r['weak_miou']:.3f}, precision of added pixels {r['precision']:.3f}")
  return results


def train_config(method: str, weak: str, *, backend: str, checkpoint: str, num_steps: int,
                 seed: int):
  """The demo's training config: tiny SegFormer on synthetic scenes (configs/segformer_synthetic)."""
  config, _ = configs_common.student_dataset_config("segformer", "synthetic",
                                                f"tiny,weak={weak},method={method}")
  configs_common.synthetic_schedule(config, runlocal=False)
  config.num_steps = num_steps
  config.eval_every = EVAL_EVERY  # val mIoU (and TensorBoard images) along the curves
  config.seed = seed
  config.sam.backend = backend
  config.sam.checkpoint = checkpoint
  if method == "sesam":
    # A CPU demo: SAM refreshes 1/M of each batch per step without waiting, on full images
    # encoded once, instead of the paper's strict refreshes of each weakly augmented crop.
    config.sam.refresh, config.sam.view = "async", "full"
    report.log("demo: SAM refreshes sam.refresh=async, sam.view=full (cheaper on a CPU than "
               "the paper's strict, weak_aug; training.md, 'How SeSAM's SAM labels are made')")
  return config


def training_stage(out_dir: pathlib.Path, *, weak: str, backend: str, checkpoint: str,
                   num_steps: int, seed: int) -> dict:
  """Trains supervised and SeSAM students on `weak` labels; val mIoU of each."""
  results = {}
  for method in ("supervised", "sesam"):
    config = train_config(method, weak, backend=backend, checkpoint=checkpoint,
                          num_steps=num_steps, seed=seed)
    report.log(f"demo: training a tiny SegFormer, method={method}, weak={weak}, "
               f"{num_steps} steps")
    r = loop.train_and_evaluate(config, str(out_dir / f"train_{method}"))
    results[method] = r
    report.log(f"{method:>10}: val mIoU {r['val_miou']:.3f} ({r['train_seconds']:.0f} s)")
  return results


def figures_stage(out_dir: pathlib.Path, source, *, weak: str, backend, seed: int,
                  run_dirs: list[pathlib.Path]) -> dict:
  """The refinement of `weak` labels of the first scenes of `source`; with runs, the
  qualitative grid and the training curves of `run_dirs`.

  Returns:
    {"refinement": [PNG paths], "qualitative": PNG path, "curves": PNG path} (the runs' two
    only with `run_dirs`); each PNG has its data beside it as JSON.
  """
  folder = out_dir / "figures"
  drawn = refinement.visualize_refinement(
      source, count=REFINE_FIGURES, out_dir=folder / f"refine_{weak}", weak_kind=weak,
      backend=backend, seed=seed, weak_dir=out_dir / f"weak_{weak}", dpi=FIGURE_DPI)
  figures = {"refinement": drawn["figures"]}
  if run_dirs:
    figures["qualitative"] = qualitative.plot_qualitative(
        run_dirs, out=folder / "qualitative.png", images=QUALITATIVE_ROWS,
        dpi=FIGURE_DPI)["figure"]
    figures["curves"] = curves.plot_curves(run_dirs, out=folder / "curves.png",
                                           dpi=FIGURE_DPI)["figure"]
  report.log("demo: figures (PNG, with the data drawn beside each as JSON):")
  for name, paths in figures.items():
    for path in paths if isinstance(paths, list) else [paths]:
      report.log(f"{name:>12}: {path}")
  return figures


def run_demo(out_dir: str | pathlib.Path, *, num_images: int = 16,
             size: tuple[int, int] = (256, 512), seed: int = 0, train_weak: str = "points",
             train_steps: int = 300, sam_checkpoint: str | None = None,
             sam_backend: str | None = None, train: bool = True) -> dict:
  """Runs every stage on generated scenes and returns the figures.

  Args:
    out_dir: where labels, checkpoints and logs are written.
    num_images: scenes in the validation split of the label stages.
    size: (H, W) of each scene of the label stages.
    seed: seed of the dataset, the weak-label protocols and training.
    train_weak: weak-label kind of the training stage.
    train_steps: optimizer steps of each training run.
    sam_checkpoint: a SAM weights directory or sam_vit_*.pth for the `transformers`
      backend; None uses the SAM-free `superpixel` prior.
    sam_backend: a SAM backend spec instead (e.g. "jax:/w/sam_vit_b.msgpack" for the Flax SAM
      on this process's devices, "jax-random:tiny"); with `sam_checkpoint`, its weights.
    train: run the training stage.
  """
  start = time.perf_counter()
  spec = sam_backend or ("superpixel" if sam_checkpoint is None else "transformers")
  checkpoint = sam_checkpoint or ""
  # Checked before any work (the weights' content too); errors name the demo's own flags.
  backend = resolver.resolve(spec, checkpoint, flags={
      **resolver.CLI_FLAGS, "backend": "--sam-backend", "checkpoint": "--sam-checkpoint"})
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  val = get_source("synthetic", split="val", num_images=num_images, size=size, seed=seed)
  report.log(f"demo: {val!r} -> {out_dir}")
  result = {"dataset": "synthetic", "images": num_images, "size": list(size), "out": str(out_dir)}
  result["weak"] = weak_label_stage(val, out_dir, seed=seed)
  result["prior"] = backend.spec
  result["refined"] = refine_stage(val, out_dir, backend=backend, seed=seed)
  if train:
    runs = training_stage(out_dir, weak=train_weak, backend=spec, checkpoint=checkpoint,
                          num_steps=train_steps, seed=seed)
    result["train_weak"] = train_weak
    result["supervised_miou"] = round(runs["supervised"]["val_miou"], 4)
    result["sesam_miou"] = round(runs["sesam"]["val_miou"], 4)
    result["sesam_final_coverage"] = {k: v for k, v in runs["sesam"].items()
                                      if k.startswith("final_")}
  if importlib.util.find_spec("matplotlib") is None:
    report.log("demo: no figures (they need matplotlib: pip install 'sesam-jax[plots]')")
  else:
    run_dirs = [out_dir / f"train_{m}" for m in ("supervised", "sesam")] if train else []
    drawing = time.perf_counter()
    result["figures"] = figures_stage(out_dir, val, weak=train_weak, backend=backend, seed=seed,
                                      run_dirs=run_dirs)
    result["figures_seconds"] = round(time.perf_counter() - drawing, 1)
  result["seconds"] = round(time.perf_counter() - start, 1)
  return result
