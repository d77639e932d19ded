"""`sesam bench --what iteration`: seconds per training iteration, FixMatch vs SeSAM.

Both methods run in one process, one after the other, on the same CamVid batches
(SegFormer-B0 by default, batch 8, crop 512, coarse labels, K = 5, M = 4), with
the SAM bridge in its worker process (`random:vit_b` by default, one torch
thread, `cache_embeddings=True`). The embedding cache is warmed first for every
image the timed iterations use; that warm-up is reported separately as the
per-image encoder cost (times the train split: the encoder cost of an epoch).
An iteration is: take the batch (SeSAM: joined with its SAM labels), run the
jitted step and wait for it. Reported: `fixmatch_seconds`, `sesam_seconds`
(medians), `ratio` = sesam / fixmatch, and the bridge's decoder and geometry
seconds per SeSAM step (worker-side, overlapping the step).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from sesam_jax import report


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--data-dir", default="../shared/data/camvid", help="CamVid folder")
  parser.add_argument("--model", default="segformer_b0", help="student")
  parser.add_argument("--batch", type=int, default=8, help="global batch")
  parser.add_argument("--crop", type=int, default=512, help="training crop")
  parser.add_argument("--iterations", type=int, default=3, help="timed iterations per method")
  parser.add_argument("--warmup", type=int, default=1, help="untimed iterations (compile)")
  parser.add_argument("--backend", default="random:vit_b", help="bridge backend spec")
  parser.add_argument("--weak", default="coarse", choices=("points", "scribbles", "coarse"))
  parser.add_argument("--refresh-every", type=int, default=4, help="M")
  parser.add_argument("--k", type=int, default=5, help="K prompt points per instance")
  parser.add_argument("--decoder-dtype", default=None,
                      help="SAM prompt decoder dtype (default: the config's sam.decoder_dtype)")
  parser.add_argument("--cache-dir", default=None,
                      help="keep the SAM embedding cache here and reuse it on the next run "
                           "(default: a fresh temporary folder, so the warm-up encodes every image)")


def _config(args: argparse.Namespace, method: str):
  from sesam_jax import config_lib
  config, _ = config_lib.student_dataset_config("segformer", "camvid",
                                                f"weak={args.weak},method={method}")
  config.data_dir = args.data_dir
  config.model, config.batch_size, config.crop = args.model, args.batch, args.crop
  config.num_steps = args.warmup + args.iterations + 1
  config.sam.backend, config.sam.k = args.backend, args.k
  config.sam.refresh_every, config.sam.cache_embeddings = args.refresh_every, True
  config.sam.wait_s = 0.0
  config.sam.timeout_s = 3600.0
  if args.decoder_dtype is not None:
    config.sam.decoder_dtype = args.decoder_dtype
  return config


def _time_method(config, feed, model, mesh, state, schedule, n_warm: int, n_timed: int,
                 desc: str) -> tuple[list[float], object]:
  import jax
  from sesam_jax.train import loop, sesam_step
  from sesam_jax.train import train_step as step_lib
  step_fn = sesam_step.jit_sesam_step(model, loop.sesam_step_config(config, schedule), mesh, state)
  rng = jax.random.key(0)
  times = []
  for step in report.progress(range(n_warm + n_timed), desc=desc, unit="it"):
    start = time.perf_counter()
    host = feed.next(step)
    state, metrics, confident = step_fn(state, step_lib.shard_batch(host, mesh), rng)
    feed.after_step(step, host, confident)
    jax.block_until_ready((state, metrics))
    if step >= n_warm:
      times.append(time.perf_counter() - start)
  return times, state


def run(args: argparse.Namespace) -> dict:
  import jax
  from sam_bridge.api import RefineRequest
  from sesam_jax.data.input_pipeline import make_train_dataset, weak_label_fn
  from sesam_jax.train import feed as feed_lib, loop, optim, sam_labels, train_state
  from sesam_jax.train import train_step as step_lib

  config = _config(args, "sesam")
  train_source, _ = loop.make_sources(config)
  mesh = step_lib.make_mesh()
  model = loop.build_model(config, train_source.info.num_classes)
  tx, schedule = optim.make_optimizer(config.optim, train_state.abstract_params(model),
                                      config.num_steps)
  state = train_state.create_train_state(model, tx, jax.random.key(0), mesh)

  def iterator():
    return iter(make_train_dataset(train_source, crop=config.crop, batch_size=config.batch_size,
                                   seed=0, weak=config.weak,
                                   scale_range=tuple(config.scale_range)))

  # The images the timed SeSAM iterations touch (one batch of lookahead included).
  it = iterator()
  used = sorted({int(i) for _ in range(config.num_steps + 1) for i in next(it)["index"]})
  weak_fn = weak_label_fn(train_source, config.weak)
  # make_sam_service keeps the cache in <workdir>/sam_embeddings.
  workdir = args.cache_dir or tempfile.mkdtemp(prefix="sesam_bench_iteration_")
  service = feed_lib.make_sam_service(config, workdir)
  try:
    report.log(f"warming the SAM embedding cache ({service.backend_name}) for {len(used)} images")
    start = time.perf_counter()
    encode = fresh = 0.0
    for index in report.progress(used, desc="encode", unit="img"):
      example = train_source[index]
      service.submit(RefineRequest(train_source.ids[index], example["image"],
                                   weak_fn(index, example)))
      info = service.get(train_source.ids[index]).info
      # A hit from an earlier run's cache reports the encoder seconds it saved.
      fresh += info["seconds"]["encode"]
      encode += info["seconds"]["encode"] + (info.get("cache") or {}).get("encode_s_saved", 0.0)
    warm_seconds = time.perf_counter() - start
    # FixMatch: plain batches; SeSAM: the feed with the warmed bridge.
    fixmatch_times, state = _time_method(_config(args, "fixmatch"), feed_lib.Feed(iterator()),
                                         model, mesh, state, schedule, args.warmup,
                                         args.iterations, "fixmatch")
    bank = sam_labels.SamLabelBank(
        train_source, weak_fn, service,
        sam_labels.SamLabelConfig(refresh_every=config.sam.refresh_every), crop=config.crop)
    sesam_feed = feed_lib.SamFeed(iterator(), bank)
    sesam_times, state = _time_method(config, sesam_feed, model, mesh, state, schedule,
                                      args.warmup, args.iterations, "sesam")
    steps = args.warmup + args.iterations
    summary = bank.summary()
    seconds = dict(bank.bridge_seconds)
  finally:
    service.close()
  fixmatch, sesam = statistics.median(fixmatch_times), statistics.median(sesam_times)
  per_image = encode / max(len(used), 1)
  result = {
      "model": args.model, "batch": args.batch, "crop": args.crop, "backend": service.backend_name,
      "weak": args.weak, "k": args.k, "refresh_every": args.refresh_every,
      "decoder_dtype": config.sam.decoder_dtype or config.sam.dtype,
      "iterations": args.iterations, "devices": jax.device_count(),
      "fixmatch_seconds": round(fixmatch, 3), "sesam_seconds": round(sesam, 3),
      "ratio": round(sesam / fixmatch, 3),
      "encoder_seconds_per_image": round(per_image, 3),
      "epoch_encoder_seconds": round(per_image * len(train_source), 1),
      "warmup_seconds": round(warm_seconds, 1),
      "encoder_seconds_fresh": round(fresh, 1),  # 0 when --cache-dir had every image
      "sam_decode_seconds_per_step": round(seconds.get("decode", 0.0) / steps, 3),
      "sam_geometry_seconds_per_step": round(seconds.get("geometry", 0.0) / steps, 3),
      "sam_received": summary.get("received", 0), "sam_stale": summary.get("stale", 0),
      "sam_missing": summary.get("missing", 0),
  }
  report.log(f"fixmatch {fixmatch:.2f} s/it, sesam {sesam:.2f} s/it, ratio {sesam / fixmatch:.2f}")
  return result
