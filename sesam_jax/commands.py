"""What each `sesam` subcommand does with its parsed flags: one library call, one JSON result.

`sesam_jax.main` parses the flags (argparse) and calls the function named after the subcommand
here; each returns the dict that `main` prints as the last stdout line. Each imports its library
modules itself (deferred): `sesam cost` and `--help` load neither jax nor torch, and a command
loads only what it runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from sam_bridge import refine_config
from sesam_jax import bench as bench_lib
from sesam_jax import cost as cost_lib
from sesam_jax import report


def cost(args: argparse.Namespace) -> dict:
  minutes = cost_lib.parse_minutes(args.minutes)
  result = cost_lib.cost_report(args.images, budget_hours=args.budget_hours,
                            minutes_per_image=minutes)
  for kind, hours in result["hours"].items():
    report.log(f"{kind:>10}: {hours:9.2f} h for {args.images} images")
  return result


def convert(args: argparse.Namespace) -> dict:
  if args.format == "sam":
    from sesam_jax.models import sam_convert
    result = sam_convert.convert_file(args.src, args.dst)
    report.log(f"{result['model']} ({result['format']} weights): {result['num_tensors']} tensors, "
               f"{result['num_params'] / 1e6:.1f} M parameters -> {result['dst']}")
    return result
  from sesam_jax.models import conversion
  result = conversion.convert_file(args.src, args.dst, args.format, model=args.model)
  report.log(f"{result['model']} ({result['scope']}): {result['num_loaded']} tensors loaded, "
             f"{len(result['not_loaded'])} not loaded -> {result['dst']}")
  return result


def bench(args: argparse.Namespace, rest: list[str]) -> dict:
  if args.compare:
    if args.what or rest:
      raise ValueError("--compare FILE... takes no --what and no benchmark flags.")
    from sesam_jax.bench import records
    result = records.compare_records(records.load_records(args.compare))
    report.log(result["table"])
    return result
  if not args.what:
    if args.help:
      args.print_help()
      sys.exit(0)
    raise ValueError("give --what NAME (or --compare FILE...); `sesam bench --help` lists them.")
  target = bench_lib.load_target(args.what)
  target_parser = argparse.ArgumentParser(prog=f"sesam bench --what {args.what}")
  target.add_arguments(target_parser)
  target_args = target_parser.parse_args(rest + (["--help"] if args.help else []))
  from sesam_jax.run import compile_cache
  compile_cache.enable(args.compile_cache_dir)  # Before the target compiles anything.
  result = target.run(target_args)
  if args.record:
    from sesam_jax.bench import records
    command = ["sesam", "bench", "--what", args.what, *rest]
    path = records.append_record(args.record, records.make_record(
        args.what, vars(target_args), result, command))
    report.log(f"recorded to {path}")
  return result


def train(args: argparse.Namespace, rest: list[str]) -> dict:
  from sesam_jax import config_lib
  from sesam_jax import loop
  config = config_lib.config_from_flags(args.config, rest)
  return loop.train_and_evaluate(config, args.workdir)


def evaluate(args: argparse.Namespace, rest: list[str]) -> dict:
  from sesam_jax import config_lib
  from sesam_jax import loop
  if args.config:
    config = config_lib.config_from_flags(args.config, rest)
  elif rest:  # The run's own config with the fields given changed.
    from sesam_jax.run import runs
    config = config_lib.override(runs.read_config(args.workdir), rest)
  else:
    config = None  # The run's config.json.
  return loop.evaluate_workdir(args.workdir, config)


def _source_from_args(args: argparse.Namespace):
  from sesam_jax import data
  kw = {"seed": args.data_seed} if args.data_seed else {}
  return data.get_source(args.dataset, data_dir=args.data_dir, split=args.split,
                         num_images=args.num_images, size=tuple(args.size), **kw)


def weak_labels(args: argparse.Namespace) -> dict:
  from sesam_jax.data import weak_splits
  source = _source_from_args(args)
  result = weak_splits.generate_weak_labels(source, args.kind, seed=args.seed, out_dir=args.out,
                                            limit=args.limit)
  report.log(f"{args.kind}: {result['images']} images -> {args.out}: labeled "
             f"{100 * result['labeled_fraction']:.2f}% of pixels, purity {result['purity']:.4f}, "
             f"classes covered {result['classes_covered']:.3f}, {result['seconds']:.1f} s")
  return {"dataset": args.dataset, "split": args.split, **result}


def eval_labels(args: argparse.Namespace) -> dict:
  from sesam_jax.evaluate import label_scoring
  source = _source_from_args(args)
  result = label_scoring.score_label_folder(source, args.labels, limit=args.limit)
  report.log(result.pop("table"))
  return {"dataset": args.dataset, "split": args.split, "labels": str(args.labels), **result}


def _weak_reader(args: argparse.Namespace, source):
  """(spec, reader) of `--weak-source` (`--weak-dir DIR` = `png:DIR`), or (None, None)."""
  from sesam_jax.data import weak_sources
  if args.weak_dir and args.weak_source:
    raise ValueError("give --weak-source or --weak-dir (= --weak-source png:DIR), not both.")
  spec = f"png:{args.weak_dir}" if args.weak_dir else args.weak_source
  if spec is None:
    if args.weak_option:
      raise ValueError("--weak-option needs --weak-source.")
    return None, None
  options = weak_sources.parse_options(args.weak_option)
  if spec.startswith("png:") and args.weak:
    options.setdefault("kind", args.weak)
  try:
    return spec, weak_sources.weak_label_reader(spec, source, **options)
  except (ValueError, FileNotFoundError) as e:
    raise type(e)(f"--weak-source {spec}: {e} (reader options: --weak-option KEY=VALUE)") from None


def refine(args: argparse.Namespace) -> dict:
  from sesam_jax.sam import refine_labels, resolver
  backend = resolver.resolve(args.backend, args.checkpoint or "", device=args.device,
                             dtype=args.dtype, decoder_dtype=args.decoder_dtype)
  if backend.decoder_note:
    report.log(backend.decoder_note)
  source = _source_from_args(args)
  spec, reader = _weak_reader(args, source)
  args.weak = args.weak or getattr(reader, "kind", None)
  if args.weak is None:
    raise ValueError("pass --weak points|scribbles|coarse"
                     f"{f' (the kind of the labels in {spec})' if spec else ''}.")
  # Every bad file at once (the split's and the weak labels'), before anything is written.
  from sesam_jax.data import split_check
  weak_problems = reader.check(source, limit=args.limit) if reader is not None else []
  split_check.require_clean(
      [(source, f"examples of {args.dataset} {args.split}")], limit=args.limit,
      more=[(weak_problems, f"weak label(s) of {spec}")],
      fix="Fix or remove these files (or leave their images out of the split) and run again; "
          "nothing was written.")
  refine_kw = dict(weak_kind=args.weak, backend=backend, seed=args.seed, weak_fn=reader,
                   **{s.name: getattr(args, s.name) for s in refine_config.settings()
                      if s.flag == refine_config.GENERATED})
  result = refine_labels.refine_dataset(source, out_dir=args.out, limit=args.limit,
                                        use_service=args.service, fallback=args.fallback,
                                        check=False, **refine_kw)
  report.log(f"{result['backend']} on {result['images']} images ({args.weak}): precision "
             f"{result['precision']:.4f} recall {result['recall']:.4f} F1 {result['f1']:.4f} "
             f"mIoU {result['miou']:.4f} (weak {result['weak_miou']:.4f}), "
             f"{result['seconds_per_image']:.2f} s/image")
  if args.visualize:
    from sesam_jax.plots import refinement
    result["visualize"] = refinement.visualize_refinement(
        source, count=args.visualize, out_dir=os.path.join(args.out, "figures"),
        dpi=args.visualize_dpi, **refine_kw)
  return {"dataset": args.dataset, "split": args.split, "weak_source": spec, **result}


def predict(args: argparse.Namespace) -> dict:
  settings = dict(mode=args.mode, window=args.window, stride=args.stride,
                  image_scale=args.image_scale, batch_size=args.batch_size)
  if args.export:
    from sesam_jax.evaluate import export
    return export.export_run(args.workdir, args.export, ema=args.ema, image_hw=args.export_size,
                             input_path=args.input, platforms=tuple(args.export_platforms),
                             **settings)
  if args.out is None:
    raise ValueError("sesam predict needs --out DIR for the label PNGs (or --export DIR).")
  from sesam_jax.evaluate import predict
  return predict.predict(args.workdir, out_dir=args.out, input_path=args.input,
                         dataset=args.dataset, data_dir=args.data_dir, split=args.split,
                         limit=args.limit, ema=args.ema, write_overlay=args.overlay, **settings)


def plot(args: argparse.Namespace) -> dict:
  if args.figure == "qualitative":
    from sesam_jax.plots import qualitative
    return qualitative.plot_qualitative(
        args.workdirs, out=args.out, dataset=args.dataset, data_dir=args.data_dir,
        split=args.split, images=args.images, weak=args.weak, backend=args.backend,
        ema=args.ema, dpi=args.dpi)
  if args.figure == "cost":
    from sesam_jax.plots import cost_quality
    return cost_quality.plot_cost(args.runs, out=args.out,
                                  minutes_per_image=cost_lib.parse_minutes(args.minutes),
                                  dpi=args.dpi)
  from sesam_jax.plots import curves
  return curves.plot_curves(args.runs, out=args.out, dpi=args.dpi)


def demo(args: argparse.Namespace) -> dict:
  from sesam_jax import demo
  return demo.run_demo(args.out, num_images=args.images, seed=args.seed,
                       train_weak=args.train_weak, train_steps=args.train_steps,
                       sam_checkpoint=args.sam_checkpoint, sam_backend=args.sam_backend,
                       train=not args.no_train)


def _comma_list(text: str | None) -> list[str] | None:
  return [t.strip() for t in text.split(",") if t.strip()] if text else None


def reproduce(args: argparse.Namespace, rest: list[str]) -> dict:
  from sesam_jax.experiments import grid, label_sources, sweep
  datasets = _comma_list(args.dataset)
  return sweep.reproduce(
      f"table{args.table}" if args.table.isdigit() else args.table, datasets=datasets,
      students=_comma_list(args.student), weak=_comma_list(args.weak),
      methods=_comma_list(args.methods),
      seeds=grid.parse_seeds(args.seeds) if args.seeds else None,
      budgets=grid.parse_budgets(args.budgets) if args.budgets else None,
      root=args.workdir_root, configs_dir=args.configs_dir,
      config_args=",".join(a for a in ("runlocal" if args.runlocal else "",
                                       "tiny" if args.tiny else "") if a),
      sam_backend=args.sam_backend, sam_checkpoint=args.sam_checkpoint,
      data_dirs=sweep.parse_data_dirs(args.data_dir, datasets), extra=rest, run=args.run,
      keep_going=args.keep_going, weights=args.weights, random_init=args.random_init,
      weak_labels=args.weak_labels,
      sam_checkpoints={k: v for k, v in (("sam2", args.sam2_checkpoint),
                                         ("sam3", args.sam3_checkpoint)) if v},
      scribbles=label_sources.parse_scribbles(args.scribbles, datasets or grid.PAPER_DATASETS))


def report_runs(args: argparse.Namespace) -> dict:
  from sesam_jax.experiments import summary
  return summary.report_runs(args.runs, ema=args.ema, csv_path=args.csv, cost_json=args.cost_json,
                             minutes_per_image=cost_lib.parse_minutes(args.minutes))
