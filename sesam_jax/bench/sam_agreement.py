"""`sesam bench --what sam_agreement`: how many label pixels a bf16 Flax SAM shares with fp32.

For the first `--images` CamVid images of `--split` (default val), each with its coarse weak
label (`weak_labels.make_weak_label(..., "coarse", seed=0)`, as `sam_camvid` makes it), this
refines the weak label twice with the training defaults of `RefineConfig`: once with the Flax
SAM's encoder in float32 and once in bfloat16. Both backends come from the same spec
(`--backend`, default `jax-random:vit_b`), so they hold the same weights (seed 0), and both run
the prompt decoder in `--decoder-dtype` (default float32): only the encoder's dtype differs.
Per image and pooled over images (pixels summed), it reports:

  - `fp32_labelled` / `bf16_labelled`: pixels each label map labels (not 255);
  - `both_same`: pixels both label with the same class; `both_differ`: both label, classes differ;
  - `agreement`: both_same / pixels either labels (the IoU of the two maps' labelled pixels,
    counting a pixel only where the classes are equal): 1 = identical maps;
  - `agreement_added`: the same over pixels the weak label leaves unlabelled, the part SAM adds
    (refine keeps every weak pixel, so both maps share those by construction);
  - `precision_fp32` / `precision_bf16` / `precision_weak`: of the pixels a map labels where the
    fine label is known (CamVid's void excluded), the share equal to the fine label;
  - `same_choice`: prompt sets (of `prompt_sets`) for which both chose the same SAM candidate,
    and `fp32_qualified` / `bf16_qualified`: those whose choice passed tau1 and tau2;
  - `fp32_repeat`: the first image refined in float32 a second time, pixels that differ (a
    control: 0 means the differences above come from the dtype, not from run-to-run noise).

With random weights (`jax-random:`, no trained SAM here) the masks are not SAM's: agreement then
measures the numerical sensitivity of this pipeline to the encoder's dtype (near-tied candidate
choices and threshold crossings on random logits), not the quality of bf16 SAM labels.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sam_bridge.api import RefineRequest
from sam_bridge.refine import refine
from sam_bridge.refine_config import RefineConfig
from sesam_jax import data, report
from sesam_jax.data import weak_labels
from sesam_jax.data.base import IGNORE_INDEX
from sesam_jax.sam import resolver

DTYPES = ("float32", "bfloat16")  # The two refinements compared, in this order.
# Pixel counts summed over images for the pooled row.
COUNTS = ("pixels", "fp32_labelled", "bf16_labelled", "both_same", "both_differ", "either",
          "added_same", "added_either", "fp32_known", "fp32_right", "bf16_known", "bf16_right",
          "weak_known", "weak_right")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--data-dir", default="../shared/data/camvid", help="CamVid folder")
  parser.add_argument("--split", default="val", help="CamVid split")
  parser.add_argument("--images", type=int, default=4, help="images compared (the split's first)")
  parser.add_argument("--backend", default="jax-random:vit_b",
                      help="Flax SAM spec (jax-random:VARIANT or jax:PATH)")
  parser.add_argument("--decoder-dtype", default="float32",
                      help="prompt decoder dtype of both refinements: float32, bfloat16 or auto "
                           "(the trainer's default: float32 for the Flax SAM on CPU, bfloat16 on "
                           "GPU/TPU)")
  parser.add_argument("--attention", default="auto", help="Flax SAM encoder attention")
  parser.add_argument("--device", default="cpu", help="device named to the resolver")


def label_counts(fp32: np.ndarray, bf16: np.ndarray, weak: np.ndarray, fine: np.ndarray,
                 ignore: int = IGNORE_INDEX) -> dict[str, int]:
  """Pixel counts comparing two refined label maps of one image.

  Args:
    fp32, bf16: HxW uint8 label maps (`ignore` = unlabelled) of the two refinements.
    weak: HxW uint8 weak label they were refined from.
    fine: HxW uint8 fine label (`ignore` = unknown, not counted in the precisions).
    ignore: the unlabelled value.

  Returns:
    {name: int} for every name of COUNTS (`summarize` turns them into shares).
  """
  for name, a in (("bf16", bf16), ("weak", weak), ("fine", fine)):
    if a.shape != fp32.shape:
      raise ValueError(f"{name} label {a.shape} does not match the fp32 label {fp32.shape}")
  la, lb, lw = fp32 != ignore, bf16 != ignore, weak != ignore
  known = fine != ignore
  same = la & lb & (fp32 == bf16)
  either = la | lb
  out = {"pixels": fp32.size, "fp32_labelled": la.sum(), "bf16_labelled": lb.sum(),
         "both_same": same.sum(), "both_differ": (la & lb & (fp32 != bf16)).sum(),
         "either": either.sum(), "added_same": (same & ~lw).sum(),
         "added_either": (either & ~lw).sum()}
  for name, label, labelled in (("fp32", fp32, la), ("bf16", bf16, lb), ("weak", weak, lw)):
    out[f"{name}_known"] = (labelled & known).sum()
    out[f"{name}_right"] = (labelled & known & (label == fine)).sum()
  return {k: int(v) for k, v in out.items()}


def summarize(counts: dict[str, int]) -> dict[str, float | int]:
  """The counts with the shares: agreement, agreement_added, precision_fp32/_bf16/_weak.

  A share whose denominator is zero is NaN (null in the JSON): not defined, not 0 or 1.
  """

  def share(num: str, den: str) -> float:
    return counts[num] / counts[den] if counts[den] else float("nan")

  return {**counts, "agreement": share("both_same", "either"),
          "agreement_added": share("added_same", "added_either"),
          "precision_fp32": share("fp32_right", "fp32_known"),
          "precision_bf16": share("bf16_right", "bf16_known"),
          "precision_weak": share("weak_right", "weak_known")}


def choice_counts(fp32_records: list, bf16_records: list) -> dict[str, int]:
  """Prompt sets, those with the same chosen candidate, and the qualified ones of each.

  Both refinements draw the same prompts (same seed and image id), so their records pair up
  one to one; a different count means the instances themselves differed.
  """
  paired = len(fp32_records) == len(bf16_records)
  return {"prompt_sets": len(fp32_records),
          "same_choice": sum(a.chosen == b.chosen for a, b in zip(fp32_records, bf16_records))
          if paired else 0,
          "fp32_qualified": sum(r.qualified for r in fp32_records),
          "bf16_qualified": sum(r.qualified for r in bf16_records)}


def _percent(x: float) -> str:
  return "-" if x != x else f"{100 * x:.2f}"


def table(rows: list[dict]) -> str:
  """Per-image rows and the pooled row as a markdown table (pixels; shares in %)."""
  lines = ["| image | fp32 labelled | bf16 labelled | same class, both | differ, both | "
           "agreement % | agreement % (SAM-added) | prec. fp32 % | prec. bf16 % | "
           "prec. weak % | same choice |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['image']} | {r['fp32_labelled']} | {r['bf16_labelled']} | {r['both_same']} | "
        f"{r['both_differ']} | {_percent(r['agreement'])} | {_percent(r['agreement_added'])} | "
        f"{_percent(r['precision_fp32'])} | {_percent(r['precision_bf16'])} | "
        f"{_percent(r['precision_weak'])} | {r['same_choice']}/{r['prompt_sets']} |")
  return "\n".join(lines)


def _build(args: argparse.Namespace, dtype: str):
  """The Flax SAM of `--backend` with its encoder in `dtype` (weights seed 0 for jax-random)."""
  if resolver.runs_on(args.backend) != "jax":
    raise ValueError(f"--backend {args.backend!r}: give a Flax SAM (jax-random:VARIANT or "
                     "jax:PATH); this bench compares its encoder dtypes")
  chosen = resolver.resolve(args.backend, device=args.device, dtype=dtype,
                            decoder_dtype=args.decoder_dtype, attention=args.attention,
                            flags={**resolver.CLI_FLAGS, "backend": "--backend"})
  if chosen.decoder_note:
    report.log(chosen.decoder_note)
  return chosen.build()


def run(args: argparse.Namespace) -> dict:
  if args.images < 1:
    raise ValueError(f"--images {args.images}: give at least 1")
  source = data.get_source("camvid", data_dir=args.data_dir, split=args.split)
  cfg = RefineConfig(weak_kind="coarse").validate()  # The training defaults (K=5, tau1, tau2).
  backends = {}
  for dtype in DTYPES:
    t0 = time.perf_counter()
    backends[dtype] = _build(args, dtype)
    report.log(f"{backends[dtype].name} [{dtype} encoder]: built in "
               f"{time.perf_counter() - t0:.1f} s")
  rows, seconds = [], {d: [] for d in DTYPES}
  for i in range(min(args.images, len(source))):
    ex = source[i]
    weak = weak_labels.make_weak_label(ex["label"], "coarse", seed=0, image_id=ex["id"],
                                       num_classes=source.info.num_classes)
    request = RefineRequest(ex["id"], ex["image"], weak, fine=ex["label"])
    results = {}
    for dtype, backend in backends.items():
      t0 = time.perf_counter()
      results[dtype] = refine(backend, request, cfg, seed=0)
      seconds[dtype].append(time.perf_counter() - t0)  # The first includes jit compilation.
    if not rows:  # Control: fp32 again, so that differences are the dtype's, not run noise.
      again = refine(backends["float32"], request, cfg, seed=0).label
      control = {"image": ex["id"],
                 "differing_pixels": int((again != results["float32"].label).sum())}
      report.log(f"{ex['id']}: fp32 refined twice: {control['differing_pixels']} pixels differ")
    counts = label_counts(results["float32"].label, results["bfloat16"].label, weak, ex["label"])
    counts.update(choice_counts(results["float32"].records, results["bfloat16"].records))
    rows.append({"image": ex["id"], **summarize(counts)})
    report.log(f"{ex['id']}: agreement {_percent(rows[-1]['agreement'])}% (SAM-added "
               f"{_percent(rows[-1]['agreement_added'])}%), refine fp32 "
               f"{seconds['float32'][-1]:.1f} s, bf16 {seconds['bfloat16'][-1]:.1f} s")
  pooled = {k: sum(r[k] for r in rows) for k in (*COUNTS, "prompt_sets", "same_choice",
                                                 "fp32_qualified", "bf16_qualified")}
  overall = {"image": f"all {len(rows)} (pixels pooled)", **summarize(pooled)}
  report.log(table([*rows, overall]))
  return {"backend": backends["float32"].name, "split": args.split, "images": len(rows),
          "decoder_dtype": args.decoder_dtype, "attention": backends["float32"].attention,
          "refine_s": {d: [round(s, 2) for s in v] for d, v in seconds.items()},
          "fp32_repeat": control, "per_image": rows, "overall": overall}
