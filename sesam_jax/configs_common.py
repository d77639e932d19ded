"""Presets every file in `configs/` combines (big_vision's `configs/common.py`).

`base_config()` holds every field the training loop reads, with the paper's defaults; the
dataset schedules (`DATASETS`), the students (`STUDENTS`), `parse_arg` for the `key=val,flag`
string after the colon of `--config=file.py:...`, and the shrinking presets (`apply_runlocal`,
`camvid_cpu_schedule`, `synthetic_schedule`) keep each student x dataset file a few lines long.
They live in the package (not in `configs/`, which is not installed) because `sesam demo` and
the benchmarks build configs too. Loading files and command-line overrides: `config_lib`.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from sam_bridge import refine_config
from sesam_jax.names import METHOD_NAMES, SAM_METHODS, WEAK_KINDS

# The paper's schedules (section 4.1): crop size, global batch, steps per dataset.
DATASETS: dict[str, dict[str, Any]] = {
    "cityscapes": dict(crop=1024, batch_size=8, num_steps=120_000, eval_mode="slide",
                       eval_window=1024, eval_stride=768, eval_batch_size=1),
    "ade20k": dict(crop=512, batch_size=16, num_steps=160_000, eval_mode="whole",
                   eval_window=512, eval_stride=341, eval_batch_size=1),
    "voc": dict(crop=512, batch_size=16, num_steps=60_000, eval_mode="whole",
                eval_window=512, eval_stride=341, eval_batch_size=1),
    # CamVid 480x360: no schedule in the paper; this one is paper-style for an accelerator (the
    # crop, batch and whole-image evaluation of its VOC / ADE20K rows). The CPU protocol is
    # `camvid_cpu_schedule` (configs/segformer_camvid.py:cpu).
    "camvid": dict(crop=512, batch_size=8, num_steps=40_000, eval_mode="whole",
                   eval_window=512, eval_stride=341, eval_batch_size=8),
    "synthetic": dict(crop=64, batch_size=8, num_steps=300, eval_mode="whole",
                      eval_window=64, eval_stride=48, eval_batch_size=8),
}

# Where the CamVid configs read their data unless `data_dir` is given: the project's shared data
# beside the checkout, relative to the working directory.
CAMVID_DATA_DIR = os.path.join("..", "shared", "data", "camvid")

# student -> (model name for `create_model`, name of the tiny test variant).
STUDENTS: dict[str, tuple[str, str]] = {
    "segformer": ("segformer_b0", "segformer_tiny"),
    "deeplabv3plus": ("deeplabv3plus_r101", "deeplabv3plus_tiny"),  # ResNet-101, as the paper
}
# DeepLabV3+ backbones a config file's `backbone=` argument picks (default r101).
DEEPLAB_BACKBONES = ("r101", "r50")


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses the `key=val,flag` string after the colon of `--config=file.py:...`.

  Args:
    arg: e.g. "weak=points,runlocal" (a bare name means True); None or "" gives the defaults.
    **defaults: every allowed key with its default; values are coerced to the default's type.

  Returns:
    A ConfigDict with one field per default.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, has_value, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; allowed: "
                       f"{', '.join(sorted(defaults))}.")
    out[key] = _parse_value(value, defaults[key], key) if has_value else True
  return out


def base_config() -> ml_collections.ConfigDict:
  """Every field the training loop reads, with the paper's defaults (section 4.1)."""
  c = ml_collections.ConfigDict()
  c.seed = 0                        # seeds init, data order, augmentation, dropout
  c.multihost = ml_collections.ConfigDict()  # one process per host, JAX's multi-controller runtime
  c.multihost.enabled = False       # call jax.distributed.initialize() before anything else
  c.multihost.coordinator_address = ""  # host:port of process 0's coordinator; "" = detected
                                    # (TPU slice, SLURM, Open MPI, $JAX_COORDINATOR_ADDRESS)
  c.multihost.num_processes = 0     # processes of the run; 0 = detected
  c.multihost.process_id = -1       # this process's index, 0..num_processes-1; -1 = detected
  c.multihost.initialization_timeout_s = 300  # how long each process waits for all the others
                                    # to join, seconds
  c.multihost.heartbeat_timeout_s = 100  # a process silent this long is dead and every other
                                    # process stops (JAX's coordination service), seconds
  c.multihost.shutdown_timeout_s = 300  # how long a finishing (or failing) process waits for
                                    # the others at exit, seconds
  c.model = "segformer_b0"          # name for sesam_jax.models.create_model
  c.dtype = "float32"               # compute dtype of the student: float32 | bfloat16
  c.attention = "auto"              # SegFormer's attention: auto (chunked on CPU, dot_product
                                    # on GPU and TPU; cudnn opt-in until measured on a GPU) |
                                    # chunked | full | dot_product | cudnn
  c.init = ""                       # `sesam convert` output laid over the fresh student before
                                    # the EMA copy (ImageNet weights); "" = random init.
                                    # Only a fresh run reads it (a resume restores its checkpoint)
  c.init_skip = ("decode_head/classifier", "classifier")  # subtrees of `init` left freshly
                                    # initialised (the classifier of SegFormer / DeepLabV3+)

  c.data_dir = ""                   # dataset root (--config.data_dir=DIR); "" = none given
  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "synthetic"      # name for sesam_jax.data.get_source
  c.dataset.train_split = "train"   # split trained on
  c.dataset.val_split = "val"       # split evaluated on
  c.dataset.num_train_images = 0    # synthetic only: images generated for train (0 = default)
  c.dataset.num_val_images = 0      # synthetic only: images generated for val (0 = default)
  c.dataset.image_size = (0, 0)     # synthetic only: (H, W) pixels of generated scenes
  c.dataset.skip_unreadable = False # train on without corrupt/missing files (logged, counted)
                                    # instead of stopping with the file's path
  c.dataset.check = True            # check every file of both splits before training (every
                                    # bad file listed; a clean verdict is cached per file set)
  c.dataset.max_train_images = 0    # train on a subset of this many images, drawn by `seed`
                                    # (ids saved in <workdir>/train_images.json); 0 = all
  c.dataset.image_cache_mb = 512    # decoded examples kept for SAM refreshes (MiB, host RAM)
  c.dataset.weak_cache_mb = 512     # weak labels kept instead of made again (MiB, host RAM)

  c.weak = "fine"                   # training labels: fine | points | scribbles | coarse
  c.weak_seed = 0                   # seed of the simulated weak labels (per image id)
  c.weak_source = ""                # where the `weak` labels come from: "" = made from the fine
                                    # labels (weak, weak_seed); else your own, a reader spec:
                                    # png:DIR | cityscapes_coarse[:ROOT] | scribble_png:ROOT |
                                    # scribblesup_xml:DIR | clicks_csv:FILE
  c.weak_options = ""               # the reader's options, "key=value,key=value"

  c.crop = 512                      # square training crop, pixels (after scaling)
  c.scale_range = (0.5, 2.0)        # random rescale factor range before the crop
  c.batch_size = 16                 # global batch (all devices, all hosts)
  c.num_steps = 160_000             # optimizer steps
  c.num_workers = 0                 # grain worker processes (0 = in the main process)

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-4                 # peak learning rate (AdamW)
  c.optim.weight_decay = 0.01       # AdamW decoupled weight decay (not on norms/biases/pos)
  c.optim.b1 = 0.9                  # Adam beta1
  c.optim.b2 = 0.999                # Adam beta2
  c.optim.warmup_steps = 1500       # linear warm-up from 1e-6 * lr, steps
  c.optim.poly_power = 1.0          # poly decay exponent after warm-up (to 0 at num_steps)
  c.optim.head_lr_mult = 10.0       # lr multiplier of the decode head (SegFormer: 10x)
  c.optim.grad_clip = 0.0           # global-norm clip; 0 = off

  c.ema_decay = 0.999               # EMA (teacher) decay per step
  c.method = "supervised"           # supervised | fixmatch | sam_baseline | sesam | agmm
                                    # (sesam_jax.names.METHOD_NAMES)

  # Teacher-student (fixmatch, sesam): paper section 3.3 / 4.1.
  c.teacher = ml_collections.ConfigDict()
  c.teacher.theta1 = 0.96           # confidence of a pseudo-label used in the loss
  c.teacher.theta2 = 0.98           # confidence of a pseudo-label extending the weak label
  c.teacher.lambda1 = 1.0           # weight of the SAM-label CE
  c.teacher.lambda2 = 0.01          # weight of the pseudo-label CE
  c.teacher.cutmix_prob = 0.5       # strong view: probability of a CutMix box per example
  c.teacher.jitter_prob = 0.8       # strong view: probability of colour jitter
  c.teacher.grayscale_prob = 0.2    # strong view: probability of grayscale
  c.teacher.blur_prob = 0.5         # strong view: probability of Gaussian blur

  # The SAM bridge (sesam, sam_baseline). First the refinement's settings (k, tau1, tau2,
  # sampling, prompt, ...: every field of sam_bridge.refine_config.RefineConfig that training
  # reads), with the defaults and meanings written there, once; then the bridge's own:
  c.sam = ml_collections.ConfigDict(refine_config.config_defaults())
  c.sam.backend = ""                # SAM: transformers | segment_anything | jax (with
                                    # sam.checkpoint) ...; "" = not set (sesam/sam_baseline stop
                                    # and say how); superpixel = the SAM-free prior, by name only
  c.sam.checkpoint = ""             # weights for transformers / segment_anything backends
  c.sam.device = "auto"             # where SAM runs: auto = where the trainer runs (torch
                                    # backends: the GPU JAX uses on this host, cuda:<its index>;
                                    # jax backends: the trainer's devices; the CPU only on a host
                                    # without an accelerator) | cpu | cuda | cuda:N
  c.sam.gpu_memory_fraction = 0.6   # JAX's share of a GPU shared with a PyTorch SAM bridge
                                    # (XLA_PYTHON_CLIENT_MEM_FRACTION; JAX alone takes 0.75);
                                    # 0 = allocate on demand (XLA_PYTHON_CLIENT_PREALLOCATE=false)
  c.sam.dtype = "float32"           # torch dtype of the bridge: float32 | bfloat16
  c.sam.decoder_dtype = "auto"      # SAM prompt decoder dtype: auto (bf16 where native: CUDA,
                                    # TPU, AVX512-BF16/AMX CPUs; else fp32) | float32 | bfloat16 |
                                    # "" (= sam.dtype)
  c.sam.attention = "auto"          # the Flax SAM encoder's attention (jax backends; as the
                                    # student's `attention`: auto = chunked on CPU, dot_product
                                    # on GPU/TPU | chunked | full | dot_product | cudnn)
  c.sam.refresh_every = 4           # M: SAM labels are refreshed every M steps
  c.sam.refresh = "strict"          # strict (the paper): at each step t % M == 0 the whole
                                    # batch gets fresh SAM labels and the step waits for them |
                                    # async: 1/M of each batch per step, waiting <= sam.wait_s
  c.sam.view = "weak_aug"           # what a refresh refines: weak_aug (the paper, section 3.3:
                                    # the step's weakly augmented crop) | full (the full image,
                                    # its encoder state cached: encode once, decode often)
  c.sam.cache_dir = ""              # sam.view=full: embedding cache folder ("" =
                                    # <workdir>/sam_embeddings); runs on the same data may share it
  c.sam.prewarm = True              # refine every image from its weak label before step 0
  c.sam.wait_s = 0.0                # sam.refresh=async: longest wait for in-flight SAM labels
                                    # before a step, s (strict waits up to sam.timeout_s)
  c.sam.timeout_s = 300.0           # seconds one example may take in the bridge
  c.sam.fallback = False            # on a bridge failure use the weak label (counted) vs stop
  c.sam.max_pending = 16            # bound of the request queue (backpressure)

  c.loss = ml_collections.ConfigDict()
  c.loss.weak_weight = 1.0          # weight of the CE on the training labels (`weak`)
  c.loss.merge_weak_sam = False     # sesam: weak and SAM labels as one map, one CE average
                                    # (SAM pixels weighted lambda1) instead of one per source

  # AGMM (method=agmm): sesam_jax.train.agmm; weights as its public code (all 1).
  c.agmm = ml_collections.ConfigDict()
  c.agmm.gmm_weight = 1.0           # weight of the Gaussian-mixture loss (its two BCE terms)
  c.agmm.proto_weight = 1.0         # weight of the prototype separation loss
  c.agmm.absence_weight = 1.0       # weight of the class-absence loss
  c.agmm.class_chunk = 4            # classes per checkpointed step of the response (memory:
                                    # B x chunk x C x H/4 x W/4); 0 = all at once (naive)

  c.eval = ml_collections.ConfigDict()
  c.eval.mode = "whole"             # whole | slide (sliding-window inference)
  c.eval.window = 512               # slide: square window, pixels (in the scaled image)
  c.eval.stride = 341               # slide: stride between windows, pixels
  c.eval.batch_size = 1             # global eval batch (padded to a device multiple)
  c.eval.image_scale = 1.0          # resize images by this before the model; logits go back
  c.eval.max_images = 0             # evaluate only the first N val images (0 = all)
  c.eval.ema = True                 # also evaluate the EMA (teacher) weights
  c.eval.tb_images = 3              # val images drawn in TensorBoard at each evaluation (0 = off)

  c.log_every = 50                  # steps between metric logs (and NaN checks)
  c.checkpoint_every = 1000         # steps between checkpoints (and one at the end)
  c.keep_checkpoints = 2            # checkpoints kept in the workdir
  c.eval_every = 0                  # steps between evaluations (0 = only at the end)
  c.compile_cache_dir = "auto"      # JAX's persistent compilation cache: auto =
                                    # $XDG_CACHE_HOME/sesam/jax (~/.cache/sesam/jax), resolved
                                    # when the run starts; none = off; else a folder
  return c


def dataset_config(config: ml_collections.ConfigDict, dataset: str) -> None:
  """Fills in `config` for `dataset` from the paper's schedule in `DATASETS` (in place)."""
  d = DATASETS[dataset]
  config.dataset.name = dataset
  config.crop = d["crop"]
  config.batch_size = d["batch_size"]
  config.num_steps = d["num_steps"]
  config.eval.mode = d["eval_mode"]
  config.eval.window = d["eval_window"]
  config.eval.stride = d["eval_stride"]
  config.eval.batch_size = d["eval_batch_size"]
  config.checkpoint_every = min(config.checkpoint_every, max(config.num_steps // 4, 1))


def apply_runlocal(config: ml_collections.ConfigDict) -> None:
  """Shrinks a paper schedule to a smoke run a laptop finishes in minutes (in place)."""
  config.crop = min(config.crop, 128)
  config.batch_size = min(config.batch_size, 4)
  config.num_steps = 20
  config.optim.warmup_steps = 5
  config.log_every = 5
  config.checkpoint_every = 10
  config.eval.window = min(config.eval.window, 128)
  config.eval.stride = min(config.eval.stride, 96)
  config.eval.max_images = 8
  config.ema_decay = 0.9


def camvid_data_dir(config: ml_collections.ConfigDict) -> None:
  """`data_dir` defaults to ../shared/data/camvid relative to the working directory (in place)."""
  config.data_dir = config.data_dir or CAMVID_DATA_DIR


def camvid_cpu_schedule(config: ml_collections.ConfigDict, *, runlocal: bool, num_steps: int,
                        batch_size: int, crop: int, warmup_steps: int, ema_decay: float,
                        model: str = "", image_scale: float = 0.5, lr: float | None = None,
                        head_lr_mult: float | None = None, sam_view: str = "") -> None:
  """CamVid downscaled on a CPU (in place); see configs/segformer_camvid.py.

  Args:
    config: a CamVid config (`student_dataset_config`).
    runlocal: shrink further to a smoke run of a few minutes.
    num_steps, batch_size, crop, warmup_steps, ema_decay: the schedule (crop in pixels of the
      downscaled images).
    model: the student (`config.model`); "" keeps the config's.
    image_scale: images are trained and evaluated at this scale (0.5: half resolution); the
      training rescale range is the usual 0.5-2.0 times it, and evaluation's logits are resized
      back to the full-resolution labels.
    lr, head_lr_mult: `config.optim.lr` and `.head_lr_mult` (None keeps the config's).
    sam_view: `config.sam.view` ("" keeps the config's).
  """
  camvid_data_dir(config)
  if model:
    config.model = model
  config.scale_range = (0.5 * image_scale, 2.0 * image_scale)
  config.eval.image_scale = image_scale
  config.eval.mode = "whole"
  config.eval.batch_size = 8
  config.num_steps = num_steps
  config.batch_size = batch_size
  config.crop = crop
  config.optim.warmup_steps = warmup_steps
  if lr is not None:
    config.optim.lr = lr
  if head_lr_mult is not None:
    config.optim.head_lr_mult = head_lr_mult
  if sam_view:
    config.sam.view = sam_view
  config.ema_decay = ema_decay
  config.log_every = 100 if num_steps >= 2000 else 25
  config.checkpoint_every = 1000 if num_steps >= 2000 else 250
  if runlocal:
    config.num_steps = 50
    config.optim.warmup_steps = 5
    config.crop = 96
    config.ema_decay = 0.9
    config.log_every = 10
    config.checkpoint_every = 25
    config.eval.max_images = 0       # still all 101 val images: they are what `val_miou` means


def synthetic_schedule(config: ml_collections.ConfigDict, *, runlocal: bool) -> None:
  """The generated `synthetic` scenes: small images, short schedule (in place)."""
  config.dataset.num_train_images = 64
  config.dataset.num_val_images = 16
  config.dataset.image_size = (96, 128)
  config.crop = 64
  config.batch_size = 8
  config.num_steps = 300
  config.optim.warmup_steps = 20
  config.ema_decay = 0.9
  config.log_every = 25
  config.checkpoint_every = 100
  config.eval.batch_size = 8
  config.sam.backend = "superpixel"  # No SAM weights here: the SAM-free prior, named as such.
  if runlocal:
    config.num_steps = 40
    config.log_every = 10
    config.checkpoint_every = 20


def student_dataset_config(student: str, dataset: str, arg: str | None, **extra_args: Any
                           ) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """The config every `configs/<student>_<dataset>.py` returns: presets + `weak`/`runlocal`.

  Args:
    student: "segformer" | "deeplabv3plus".
    dataset: a key of DATASETS.
    arg: the `key=val,...` string of `--config=file.py:arg` (keys: weak, method, runlocal, tiny,
      for DeepLabV3+ backbone=r101|r50, and `extra_args`).
    **extra_args: further keys the file accepts, with defaults.

  Returns:
    (config, parsed arg): the ConfigDict and the parsed `arg`, for file-specific tweaks.
  """
  if student == "deeplabv3plus":
    extra_args.setdefault("backbone", DEEPLAB_BACKBONES[0])
  args = parse_arg(arg, weak="fine", method="supervised", runlocal=False, tiny=False,
                   **extra_args)
  if "backbone" in args and args.backbone not in DEEPLAB_BACKBONES:
    raise ValueError(f"backbone={args.backbone!r}: choose one of {', '.join(DEEPLAB_BACKBONES)}.")
  if args.weak not in WEAK_KINDS:
    raise ValueError(f"weak={args.weak!r}: choose one of {', '.join(WEAK_KINDS)}.")
  if args.method not in METHOD_NAMES:
    raise ValueError(f"method={args.method!r}: choose one of {', '.join(METHOD_NAMES)}.")
  if args.method in SAM_METHODS and args.weak == "fine":
    raise ValueError(f"method={args.method} refines weak labels; pick weak=points|scribbles|"
                     "coarse (weak=fine with method=supervised is the upper bound).")
  config = base_config()
  config.model = STUDENTS[student][1 if args.tiny else 0]
  if student == "deeplabv3plus" and not args.tiny:
    config.model = f"deeplabv3plus_{args.backbone}"
  dataset_config(config, dataset)
  config.weak = args.weak
  config.method = args.method
  if args.runlocal and dataset not in ("camvid", "synthetic"):
    apply_runlocal(config)  # CamVid and synthetic have their own short schedules.
  return config, args


def _parse_value(text: str, like: Any, key: str) -> Any:
  """`text` as the type of the default `like` (bool, int, float or str)."""
  try:
    if isinstance(like, bool):
      if text.strip().lower() in ("1", "true", "yes", "on"):
        return True
      if text.strip().lower() in ("0", "false", "no", "off"):
        return False
      raise ValueError(text)
    return type(like)(text)
  except ValueError:
    raise ValueError(f"config argument {key}={text}: cannot read this as a "
                     f"{type(like).__name__} (the type of its default {like!r}).") from None
