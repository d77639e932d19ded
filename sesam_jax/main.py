"""The `sesam` command.

This file is intentionally kept short: each subcommand parses its flags and
calls one library function, then prints that function's figures as one JSON
object on the last line of stdout (see `sesam_jax.report`). Library modules are
imported inside the handlers so that `sesam cost` does not pay for jax or torch.
"""

from __future__ import annotations

import argparse
import sys

from sesam_jax import report


def _cmd_cost(args: argparse.Namespace) -> dict:
  from sesam_jax import cost
  minutes = cost.parse_minutes(args.minutes)
  result = cost.cost_report(args.images, budget_hours=args.budget_hours,
                            minutes_per_image=minutes)
  for kind, hours in result["hours"].items():
    report.log(f"{kind:>10}: {hours:9.2f} h for {args.images} images")
  return result


def _cmd_convert(args: argparse.Namespace) -> dict:
  from sesam_jax.models import torch_convert
  result = torch_convert.convert_file(args.src, args.dst, args.format, model=args.model)
  report.log(f"{result['model']} ({result['scope']}): {result['num_loaded']} tensors loaded, "
             f"{len(result['not_loaded'])} not loaded -> {result['dst']}")
  return result


def _cmd_bench(args: argparse.Namespace, rest: list[str]) -> dict:
  from sesam_jax import bench
  target = bench.load_target(args.what)
  target_parser = argparse.ArgumentParser(prog=f"sesam bench --what {args.what}")
  target.add_arguments(target_parser)
  return target.run(target_parser.parse_args(rest))


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
  p.set_defaults(handler=_cmd_cost)

  p = sub.add_parser("convert", help="PyTorch weights -> a Flax checkpoint (msgpack) for `init`")
  p.add_argument("src", help="PyTorch state dict: .pth, .pt, .bin or .safetensors")
  p.add_argument("dst", help="output file (msgpack: {meta, variables}), written atomically")
  p.add_argument("--format", required=True, choices=("hf", "mmseg", "torchvision"),
                 help="hf: transformers SegFormer/ResNet; mmseg: mit_b*.pth; "
                      "torchvision: resnet50/101")
  p.add_argument("--model", default=None,
                 help="target student (e.g. segformer_b0, deeplabv3plus_r101); inferred if omitted")
  p.set_defaults(handler=_cmd_convert)

  p = sub.add_parser("bench", help="throughput / memory / parity benchmarks (side-by-side ratios)",
                     add_help=False)
  p.add_argument("--what", required=True,
                 help="benchmark target; `sesam bench --what NAME --help` lists its flags")
  p.set_defaults(handler=_cmd_bench, takes_rest=True)
  return parser


def main(argv: list[str] | None = None) -> int:
  args, rest = build_parser().parse_known_args(argv)
  if rest and not getattr(args, "takes_rest", False):
    build_parser().parse_args(argv)  # Lets argparse report the unknown flags.
  try:
    result = args.handler(args, rest) if getattr(args, "takes_rest", False) else args.handler(args)
  except (ValueError, FileNotFoundError) as e:
    # Errors meant for users: one clear line, no traceback.
    print(f"sesam {args.command}: error: {e}", file=sys.stderr)
    return 2
  report.emit(result)
  return 0


if __name__ == "__main__":
  sys.exit(main())
