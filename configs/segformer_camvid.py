"""SegFormer-B0 on CamVid (11 classes, 480x360): a paper-style schedule, or the CPU protocol.

The default is paper-style, for an accelerator: crop 512, global batch 8, 40k steps, the usual
0.5-2.0 rescale, whole-image evaluation at full resolution, the paper's EMA decay and warm-up
(`configs_common.DATASETS["camvid"]`; the paper has no CamVid schedule):

  sesam train --config=configs/segformer_camvid.py:weak=fine --workdir=workdirs/camvid_fine

`cpu` selects the CPU protocol (`CAMVID_CPU_PROTOCOL` below; `sesam reproduce --table camvid`
trains it on this 2-core machine): downscaled images (`image_scale`; images are rescaled by
U(0.5, 2.0) x image_scale before the crop and evaluated at image_scale with logits resized back to
the full 480x360 labels), a CPU-sized student and schedule, and SAM refreshes of the full image
(`sam.view=full`). Why these values (measured on the 2-core CPU, supervised on fine labels, random
init, while other jobs shared the CPU; docs/experiments.md, "CamVid training (CPU protocol)"):

- the student is `deeplabv3plus_tiny` (0.1 M parameters), not SegFormer-B0: from random weights
  a small CNN learns far more per CPU second. B0 reached 0.205 val mIoU in 300 steps (441 s,
  lr 5e-4); the tiny DeepLabV3+ 0.282 in 3000 steps (204 s) and 0.374 in 8000 (605 s);
  `deeplabv3plus_small` (0.4 M) 0.338 in 3000 steps (509 s);
- lr 1e-3 with no 10x head multiplier (from scratch; 1e-4 learned 2-3x slower in 300 steps);
- 6000 steps, batch 8, crop 112 at half resolution: supervised in about 5 minutes (0.335 on
  fine labels); SeSAM pays a teacher forward and the prior's refreshes on top, 0.137 s a step
  against 0.046, and its first superpixel cell took 18.5 minutes with the pre-warm (280 s,
  cached for the next cells): over the 15-minute goal by a few minutes;
- `sam.view=full`: the SAM-free priors segment an image once (cached) and answer refreshes
  from it, where the crop's view would re-segment every crop it refreshes (the superpixel
  pre-warm segments the 367 full images in 280 s, once); the cache (`sam.cache_dir`) is shared
  by the grid's cells.

`runlocal` shrinks the CPU protocol further, to a smoke run (50 steps, crop 96; 204 s and val
mIoU 0.126 measured while two trainings shared the CPU):

  sesam train --config=configs/segformer_camvid.py:weak=fine,cpu --workdir=workdirs/camvid_cpu
  sesam train --config=configs/segformer_camvid.py:weak=fine,runlocal --workdir=workdirs/camvid_rl

SeSAM without SAM weights runs the SAM-free prior, named as such:

  sesam train --config=configs/segformer_camvid.py:weak=coarse,method=sesam,cpu \
      --workdir=workdirs/camvid_sesam --config.sam.backend=superpixel

The data is read from `config.data_dir`; when it is not given, from `../shared/data/camvid`
relative to the working directory (the project's shared data beside the checkout).
No pretrained weights: mIoU is far below ImageNet-initialised figures.
Arguments after the colon: weak=fine|points|scribbles|coarse,
method=supervised|fixmatch|sam_baseline|sesam|agmm, cpu (the CPU protocol), runlocal (the CPU
protocol, shrunk), tiny (the tiny test student, whatever the protocol's `model`).
"""

from sesam_jax import configs_common

# The CPU protocol (`cpu`): student ("" = SegFormer-B0), image scale, steps, global batch, crop
# (pixels, at that scale), warm-up steps, EMA decay, learning rate, head multiplier, SAM view.
CAMVID_CPU_PROTOCOL = dict(model="deeplabv3plus_tiny", image_scale=0.5, num_steps=6000,
                           batch_size=8, crop=112, warmup_steps=100, ema_decay=0.999, lr=1e-3,
                           head_lr_mult=1.0, sam_view="full")


def get_config(arg=None):
  config, args = configs_common.student_dataset_config("segformer", "camvid", arg, cpu=False)
  configs_common.camvid_data_dir(config)
  if args.cpu or args.runlocal:
    protocol = dict(CAMVID_CPU_PROTOCOL, **({"model": ""} if args.tiny else {}))
    configs_common.camvid_cpu_schedule(config, runlocal=args.runlocal, **protocol)
  return config
