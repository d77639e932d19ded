"""The `sesam` command.

This file is intentionally kept short: it defines each subcommand's flags; the
function named after the subcommand in `sesam_jax.commands` makes one library call
with them, and `main` prints its figures as one JSON object on the last line of
stdout (see `sesam_jax.report`); a command that fails prints `{"error": "<message>",
"exit_code": N}` there instead (2 for an error the user can fix, the signal's code when
stopped, 130 on Ctrl-C, 1 for a bug, with the traceback on stderr). Library modules are
imported inside the commands so that `sesam cost` does not pay for jax or torch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import traceback

from sam_bridge import refine_config
from sesam_jax import commands, report
from sesam_jax.bench import describe_targets


def _add_dataset_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--dataset", required=True,
                 help="camvid, cityscapes, ade20k, voc, custom, synthetic or tfds_cityscapes")
  p.add_argument("--data-dir", default=None, help="dataset root (not needed for synthetic)")
  p.add_argument("--split", default="train", help="split name (train, val, ...)")
  p.add_argument("--num-images", type=int, default=0,
                 help="synthetic only: scenes in the split (default 64)")
  p.add_argument("--size", type=int, nargs=2, default=(0, 0), metavar=("H", "W"),
                 help="synthetic only: scene size in pixels (default 256 512)")
  p.add_argument("--data-seed", type=int, default=0, help="synthetic only: dataset seed")


def _add_refine_settings(p: argparse.ArgumentParser) -> None:
  """A flag per RefineConfig setting the schema gives one (type, default, choices, meaning)."""
  for s in refine_config.settings():
    if s.flag != refine_config.GENERATED:
      continue
    if isinstance(s.default, bool):  # --instances / --no-instances.
      p.add_argument(s.flag_name, action=argparse.BooleanOptionalAction, default=s.default,
                     help=f"{s.doc} (default: %(default)s)")
    else:
      p.add_argument(s.flag_name, type=type(s.default), default=s.default,
                     choices=s.choices or None, help=f"{s.doc} (default: %(default)s)")


def _bench_epilog() -> str:
  return describe_targets() + (
      "\n\nsesam bench --what NAME --help lists a benchmark's own flags. Compare machines: run "
      "with\n--record runs.jsonl on each, then: sesam bench --compare a.jsonl b.jsonl")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="sesam", description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  p = sub.add_parser("cost", help="annotation hours for each kind of label (paper, section 4)")
  p.add_argument("--images", type=int, required=True, help="number of images to label")
  p.add_argument("--budget-hours", type=float, default=None,
                 help="also report how many images each kind affords within this budget")
  p.add_argument("--minutes", action="append", metavar="KIND=MIN",
                 help="override minutes per image for a kind (repeatable)")
  p.set_defaults(handler=commands.cost)

  p = sub.add_parser("weak-labels", help="make points/scribbles/coarse labels from fine labels")
  _add_dataset_flags(p)
  p.add_argument("--kind", required=True, choices=("points", "scribbles", "coarse"))
  p.add_argument("--seed", type=int, default=0, help="protocol seed (labels depend on seed and id)")
  p.add_argument("--out", required=True, help="folder for <image stem>.png weak labels")
  p.add_argument("--limit", type=int, default=None, help="only the first N images")
  p.set_defaults(handler=commands.weak_labels)

  p = sub.add_parser("eval-labels", help="score a folder of label maps against the fine labels")
  _add_dataset_flags(p)
  p.add_argument("--labels", required=True, help="folder of <image stem>.png label maps")
  p.add_argument("--limit", type=int, default=None, help="only the first N images")
  p.set_defaults(handler=commands.eval_labels)

  p = sub.add_parser("refine", help="SeSAM labels: refine weak labels with a SAM backend, score them")
  _add_dataset_flags(p)
  p.add_argument("--weak", default=None, choices=("points", "scribbles", "coarse"),
                 help="weak-label kind: made as `sesam weak-labels` makes them, or the kind of "
                      "--weak-source labels (default: the source's own kind)")
  p.add_argument("--seed", type=int, default=0, help="weak-label protocol seed (as sesam weak-labels)")
  p.add_argument("--weak-source", default=None, metavar="SPEC",
                 help="read your own weak labels: png:DIR, cityscapes_coarse[:ROOT], "
                      "scribble_png:ROOT, scribblesup_xml:DIR or clicks_csv:FILE (README: "
                      "'Your own weak labels')")
  p.add_argument("--weak-option", action="append", default=None, metavar="KEY=VALUE",
                 help="an option of the --weak-source reader (repeatable), e.g. width=3")
  p.add_argument("--weak-dir", default=None, help="= --weak-source png:DIR")
  p.add_argument("--out", required=True, help="folder for the refined <image stem>.png labels")
  p.add_argument("--backend", default="oracle",
                 help="oracle (fine-label upper bound), superpixel, transformers (with --checkpoint), "
                      "random:vit_b (random weights), segment_anything (with --checkpoint), "
                      "jax:PATH (Flax SAM, `sesam convert --format sam` weights, on this "
                      "process's devices; no torch), jax-random:vit_b")
  p.add_argument("--checkpoint", default=None,
                 help="weights for transformers/segment_anything: a directory or sam_vit_*.pth")
  p.add_argument("--device", default="cpu", help="torch device for SAM backends")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--decoder-dtype", default="auto",
                 help="SAM prompt decoder dtype: auto (bf16 only where computed natively), "
                      "float32, bfloat16")
  _add_refine_settings(p)
  p.add_argument("--service", action="store_true",
                 help="run the backend in a service (PyTorch: the worker process; JAX: a thread)")
  p.add_argument("--fallback", action="store_true",
                 help="with --service: keep the weak label for an image whose refinement fails")
  p.add_argument("--limit", type=int, default=None, help="only the first N images")
  p.add_argument("--visualize", type=int, default=0, metavar="N",
                 help="also draw the paper's Figure 2/12 for the first N images "
                      "(OUT/figures/<id>.png + .json; needs matplotlib)")
  p.add_argument("--visualize-dpi", type=int, default=100, help="resolution of those figures")
  p.set_defaults(handler=commands.refine)

  p = sub.add_parser("demo", help="run the whole pipeline on generated `synthetic` scenes")
  p.add_argument("--out", default="sesam_demo", help="output folder (default: ./sesam_demo)")
  p.add_argument("--images", type=int, default=16, help="number of validation scenes")
  p.add_argument("--seed", type=int, default=0, help="dataset, weak-label and training seed")
  p.add_argument("--train-weak", default="points", choices=("points", "scribbles", "coarse"),
                 help="weak labels the two demo students are trained on")
  p.add_argument("--train-steps", type=int, default=300, help="steps of each training run")
  p.add_argument("--sam-checkpoint", default=None,
                 help="SAM weights (directory or sam_vit_*.pth); default: the superpixel prior")
  p.add_argument("--sam-backend", default=None,
                 help="a SAM backend spec instead, e.g. jax:/w/sam_vit_b.msgpack (Flax SAM, no "
                      "torch) or jax-random:tiny; default: transformers with --sam-checkpoint, "
                      "else superpixel")
  p.add_argument("--no-train", action="store_true", help="label stages only")
  p.set_defaults(handler=commands.demo)

  p = sub.add_parser("predict", help="a trained run on new images: label PNGs, overlays, mIoU; "
                     "or --export a standalone predictor")
  p.add_argument("--workdir", required=True, help="run directory (config.json, checkpoints/)")
  p.add_argument("--input", default=None,
                 help="an image file or a folder of images (any size); default: the dataset split")
  p.add_argument("--out", default=None, help="folder for <stem>.png labels (and overlays)")
  p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.jpg")
  p.add_argument("--ema", action="store_true", help="the EMA teacher's weights (default: student)")
  p.add_argument("--dataset", default=None,
                 help="predict on this dataset's --split, or score --input images it holds "
                      "(mIoU); default data dir: the run's")
  p.add_argument("--data-dir", default=None, help="dataset root (default: the run's data_dir)")
  p.add_argument("--split", default=None, help="split name (default: the run's val split)")
  p.add_argument("--limit", type=int, default=None, help="only the first N images")
  p.add_argument("--mode", default=None, choices=("whole", "slide"),
                 help="whole image or sliding window (default: the run's eval.mode)")
  p.add_argument("--window", type=int, default=None, help="slide: window side (default: run's)")
  p.add_argument("--stride", type=int, default=None, help="slide: stride (default: run's)")
  p.add_argument("--image-scale", type=float, default=None,
                 help="resize factor before the model (default: the run's eval.image_scale)")
  p.add_argument("--batch-size", type=int, default=None,
                 help="images per batch (default: the run's eval.batch_size)")
  p.add_argument("--export", default=None, metavar="DIR",
                 help="write a jax.export predictor (function + weights) to DIR instead")
  p.add_argument("--export-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                 help="--export: the input size the function takes (default: the first --input "
                      "image, else the run's first val image)")
  p.add_argument("--export-platforms", nargs="+", default=["cpu", "cuda", "tpu"],
                 help="--export: platforms the function is lowered for")
  p.set_defaults(handler=commands.predict)

  p = sub.add_parser("plot", help="the paper's figures from your runs: qualitative, cost, "
                     "curves (PNG + the data drawn, as JSON beside it)")
  figures = p.add_subparsers(dest="figure", required=True, metavar="FIGURE")
  q = figures.add_parser("qualitative", help="Figure 5: image, weak, SeSAM label, each run's "
                         "prediction, fine label; one row per image")
  q.add_argument("--workdirs", nargs="+", required=True, help="runs, one prediction column each")
  q.add_argument("--dataset", default=None, help="dataset (default: the first run's)")
  q.add_argument("--data-dir", default=None, help="dataset root (default: the run's data_dir)")
  q.add_argument("--split", default=None, help="split (default: the run's val split)")
  q.add_argument("--images", type=int, default=4, help="rows: the first N images")
  q.add_argument("--weak", default=None, choices=("points", "scribbles", "coarse", "none"),
                 help="weak labels of the weak and SeSAM columns (default: the runs')")
  q.add_argument("--backend", default=None,
                 help="SAM backend of the SeSAM column (default: the runs' config.sam.backend)")
  q.add_argument("--ema", action="store_true", help="the EMA teachers' predictions")
  q.add_argument("--out", required=True, help="FILE.png (data: FILE.json)")
  c = figures.add_parser("cost", help="Figure 4: annotation hours (log) vs val mIoU per label kind")
  c.add_argument("runs", nargs="+", metavar="WORKDIR_OR_ROOT",
                 help="workdirs, or folders holding workdirs")
  c.add_argument("--minutes", action="append", metavar="KIND=MIN",
                 help="override minutes per image for a kind (repeatable), as `sesam cost`")
  c.add_argument("--out", required=True, help="FILE.png (data: FILE.json)")
  k = figures.add_parser("curves", help="training loss, val mIoU, label coverage vs step")
  k.add_argument("runs", nargs="+", metavar="WORKDIR", help="workdirs (or folders of them)")
  k.add_argument("--out", required=True, help="FILE.png (data: FILE.json)")
  for f in (q, c, k):
    f.add_argument("--dpi", type=int, default=100, help="resolution of the PNG")
  p.set_defaults(handler=commands.plot)

  p = sub.add_parser("convert", help="PyTorch weights -> a Flax checkpoint (msgpack) for `init` "
                                     "or the Flax SAM")
  p.add_argument("src", help="PyTorch state dict: .pth, .pt, .bin or .safetensors (sam: also a "
                             "transformers SamModel directory)")
  p.add_argument("dst", help="output file (msgpack: {meta, variables}), written atomically")
  p.add_argument("--format", required=True, choices=("hf", "mmseg", "torchvision", "sam"),
                 help="hf: transformers SegFormer/ResNet; mmseg: mit_b*.pth; "
                      "torchvision: resnet50/101; sam: official sam_vit_*.pth or transformers "
                      "SamModel weights, for --backend jax:DST")
  p.add_argument("--model", default=None,
                 help="target student (e.g. segformer_b0, deeplabv3plus_r101); inferred if omitted")
  p.set_defaults(handler=commands.convert)

  p = sub.add_parser("bench", help="throughput / memory / parity benchmarks (side-by-side ratios)",
                     add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog=_bench_epilog())
  p.add_argument("-h", "--help", action="store_true",
                 help="this list; with --what NAME, that benchmark's flags")
  p.add_argument("--what", default=None, help="benchmark target (below)")
  p.add_argument("--record", default=None, metavar="FILE.jsonl",
                 help="append the figures with a fingerprint of the machine to FILE (JSON lines)")
  p.add_argument("--compare", nargs="+", default=None, metavar="FILE.jsonl",
                 help="a markdown table of recorded runs, one column per machine")
  p.add_argument("--compile-cache-dir", default="auto", metavar="DIR",
                 help="JAX's persistent compilation cache: auto ($XDG_CACHE_HOME/sesam/jax, "
                      "default ~/.cache/sesam/jax), none (off) or a folder")
  p.set_defaults(handler=commands.bench, takes_rest=True, print_help=p.print_help)

  p = sub.add_parser("reproduce", help="the `sesam train` command of every cell of a paper table "
                     "(printed, or run with --run)",
                     epilog="Further --config.FIELD=VALUE flags are added to every command "
                     "(e.g. --config.num_steps=1000).")
  p.add_argument("--table", required=True,
                 choices=("1", "2", "3", "4", "5", "6", "fig4", "camvid"),
                 help="Table 1 (VOC), 2 (main results), 3 (components), 4 (design choices), "
                      "5 (SAM versions, label level: sesam refine), 6 (runtime and memory: "
                      "FixMatch, AGMM, SeSAM), Figure 4 (annotation cost vs mIoU), or camvid "
                      "(not the paper's: every weak kind and method on CamVid with the CPU "
                      "protocol, configs/segformer_camvid.py:cpu, SAM-free priors)")
  p.add_argument("--dataset", default=None, metavar="D[,D]",
                 help="dataset columns (default: the paper's); any dataset with configs/ files")
  p.add_argument("--student", default=None, metavar="S[,S]|all",
                 help="segformer and/or deeplabv3plus, or all (default: the table's first)")
  p.add_argument("--weak", default=None, metavar="K[,K]",
                 help="weak kinds of the rows (points, scribbles, coarse); the weak=fine "
                      "reference stays (WvF needs it); 'fine' alone selects only it")
  p.add_argument("--methods", default=None, metavar="M[,M]",
                 help="methods of the rows (supervised, fixmatch, sam_baseline, sesam, agmm; "
                      "default: the table's)")
  p.add_argument("--seeds", default=None, metavar="0,1,2",
                 help="one run per seed, every row (default 0; camvid: 0,1,2 for supervised "
                      "and SeSAM on points and coarse)")
  p.add_argument("--budgets", default=None, metavar="N,N,all",
                 help="dataset.max_train_images values (fig4 default: 100,500,1500,all)")
  p.add_argument("--workdir-root", default="workdirs", metavar="DIR",
                 help="workdirs go to DIR/<table>/<dataset>/<student>/<labels>/<method>/... "
                      "(default: workdirs)")
  p.add_argument("--configs-dir", default="configs", help="folder of the config files")
  p.add_argument("--runlocal", action="store_true", help="the configs' minutes-long schedules")
  p.add_argument("--tiny", action="store_true", help="the configs' tiny test students")
  p.add_argument("--sam-backend", default="auto",
                 help="config.sam.backend of cells using SAM, with --sam-checkpoint (SAM ViT-B "
                      "as in the paper); auto: jax (the Flax SAM on the trainer's devices) on a "
                      "GPU or TPU host, transformers (the PyTorch bridge) elsewhere")
  p.add_argument("--sam-checkpoint", default=None,
                 help="SAM weights (default: the placeholder /path/to/sam_vit_b_01ec64.pth, "
                      "which --run refuses)")
  p.add_argument("--sam2-checkpoint", default=None, metavar="DIR",
                 help="Table 5: SAM 2.1 Hiera-B+ (transformers Sam2Model folder)")
  p.add_argument("--sam3-checkpoint", default=None, metavar="DIR",
                 help="Table 5: SAM 3 (transformers Sam3TrackerModel folder)")
  p.add_argument("--data-dir", action="append", default=None, metavar="DATASET=DIR",
                 help="dataset root of a dataset (repeatable; DIR alone with one --dataset)")
  p.add_argument("--weights", default=None, metavar="DIR",
                 help="the students' ImageNet weights as downloaded (nvidia/mit-b0's folder, "
                      "torchvision's resnet101 .pth, ...; recognised by content, converted once "
                      "into WORKDIR_ROOT/pretrained); each cell gets its student's config.init")
  p.add_argument("--random-init", action="store_true",
                 help="random students at the paper's schedules (--run otherwise needs --weights)")
  p.add_argument("--weak-labels", default="auto", choices=("auto", "paper", "generated"),
                 help="auto: the paper's labels where given (gtCoarse under the Cityscapes "
                      "data dir, --scribbles), else made from the fine labels; paper: missing "
                      "ones are an error; generated: always made (points always are)")
  p.add_argument("--scribbles", action="append", default=None, metavar="[DATASET=]DIR",
                 help="published scribbles (ScribbleSup XML for voc, Scribbles4All PNGs for "
                      "cityscapes/ade20k; repeatable)")
  mode = p.add_mutually_exclusive_group()
  mode.add_argument("--dry-run", dest="run", action="store_false",
                    help="print the commands (the default)")
  mode.add_argument("--run", dest="run", action="store_true",
                    help="run them one after another, skipping finished workdirs; the same "
                         "command resumes an interrupted sweep")
  p.add_argument("--keep-going", action="store_true",
                 help="with --run: run the other cells after a failure")
  p.set_defaults(handler=commands.reproduce, takes_rest=True, run=False)

  p = sub.add_parser("report", help="the paper-layout table (markdown) of finished and "
                     "unfinished runs: mIoU, WvF, seeds, hours, coverage, wall time")
  p.add_argument("runs", nargs="+", metavar="WORKDIR_OR_ROOT",
                 help="workdirs of `sesam train`, or folders holding them")
  p.add_argument("--ema", action="store_true", help="the EMA teacher's val mIoU")
  p.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV")
  p.add_argument("--cost-json", default=None, metavar="FILE",
                 help="write the cost-vs-mIoU data (Figure 4) as JSON here (format: "
                      "sesam_jax/experiments/summary.py; default for runs with budgets: "
                      "cost_points.json in the first folder given)")
  p.add_argument("--minutes", action="append", metavar="KIND=MIN",
                 help="annotation minutes per image of a kind (as sesam cost; repeatable)")
  p.set_defaults(handler=commands.report_runs)

  for name, handler, text in (
      ("train", commands.train, "train a student (resumes from --workdir), then evaluate it"),
      ("eval", commands.evaluate, "evaluate the latest checkpoint in --workdir (student and EMA)")):
    p = sub.add_parser(name, help=text, epilog="Any config field can be overridden with "
                       "--config.FIELD=VALUE (e.g. --config.optim.lr=6e-5 --config.num_steps=100).")
    p.add_argument("--config", required=name == "train", metavar="FILE.py[:ARGS]",
                   help="config file and its arguments, e.g. configs/segformer_camvid.py:weak=points"
                        + ("" if name == "train" else " (default: the run's own config.json)"))
    p.add_argument("--workdir", required=True, help="run directory (checkpoints, logs)")
    p.set_defaults(handler=handler, takes_rest=True)
  return parser


def _failed(message: str, exit_code: int) -> int:
  """Ends a failed command: `{"error", "exit_code"}` as the last stdout line, as `emit` ends
  a finished one, so `sesam ... | tail -n 1` always reads one JSON object."""
  report.emit({"error": message, "exit_code": exit_code})
  return exit_code


def _exit_code(e: SystemExit) -> int:
  return e.code if isinstance(e.code, int) else 0 if e.code is None else 1


def main(argv: list[str] | None = None) -> int:
  usage = io.StringIO()
  try:
    with contextlib.redirect_stderr(usage):  # To read argparse's message back.
      args, rest = build_parser().parse_known_args(argv)
      if rest and not getattr(args, "takes_rest", False):
        build_parser().parse_args(argv)  # Lets argparse report the unknown flags.
  except SystemExit as e:
    if not _exit_code(e):  # --help.
      raise
    lines = usage.getvalue().strip().splitlines() or ["invalid command line"]
    return _failed(lines[-1].partition(": error: ")[2] or lines[-1], _exit_code(e))
  finally:
    sys.stderr.write(usage.getvalue())  # The usage and its error line, as argparse wrote them.
  name = f"sesam {args.command}"
  try:
    result = args.handler(args, rest) if getattr(args, "takes_rest", False) else args.handler(args)
  except report.Stopped as e:  # A signal: what a rerun needs is saved.
    print(f"{name}: {e}", file=sys.stderr)
    return _failed(str(e), e.exit_code)
  except (ValueError, FileNotFoundError, report.UserError) as e:
    # Errors meant for users: one clear line, no traceback.
    print(f"{name}: error: {e}", file=sys.stderr)
    return _failed(str(e), 2)
  except KeyboardInterrupt:  # Commands that write outputs have removed their partial files.
    print(f"{name}: interrupted", file=sys.stderr)
    return _failed("interrupted", 130)
  except SystemExit as e:  # A command's own flag parser (`sesam bench --what NAME ...`).
    if not _exit_code(e):
      raise
    return _failed(f"invalid flags for {name} (the usage above says which)", _exit_code(e))
  except Exception as e:  # A bug: the traceback is for its report.
    traceback.print_exc()
    message = f"unexpected {type(e).__name__}: {e}"
    print(f"{name}: error: {message} (a bug: please report it with the traceback above)",
          file=sys.stderr)
    return _failed(message, 1)
  report.emit(result)
  return 0


if __name__ == "__main__":
  sys.exit(main())
