"""SegFormer-B0 on CamVid (11 classes, 480x360): a paper-style schedule, or the CPU protocol.

The default is paper-style, for an accelerator: crop 512, global batch 8, 40k steps, the usual
0.5-2.0 rescale, whole-image evaluation at full resolution, the paper's EMA decay and warm-up
(`configs_common.DATASETS["camvid"]`; the paper has no CamVid schedule):

  sesam train --config=configs/segformer_camvid.py:weak=fine --workdir=workdirs/camvid_fine

`cpu` selects the CPU protocol (`CAMVID_CPU_PROTOCOL` below: `sesam reproduce --table camvid`
trains it on this 2-core machine): downscaled images (`image_scale`; images are rescaled by
U(0.5, 2.0) x image_scale before the crop and evaluated at image_scale with logits resized back to
the full 480x360 labels), a short schedule and, where set, a smaller student (`model`). Its
values (300 steps, batch 8, crop 112 at half resolution) were sized for about 10 minutes of
supervised training on the 2-core CPU here (measured: 456 s wall, val mIoU 0.192 with weak=fine,
no pretraining). Such schedules are far too short for the paper's EMA decay of 0.999 (the
teacher would still be mostly the random init), so it lowers it. `runlocal` shrinks the CPU
protocol further, to under 3 minutes (measured: 173 s, val mIoU 0.137):

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
# (pixels, at that scale), warm-up steps, EMA decay.
CAMVID_CPU_PROTOCOL = dict(model="", image_scale=0.5, num_steps=300, batch_size=8, crop=112,
                           warmup_steps=30, ema_decay=0.99)


def get_config(arg=None):
  config, args = configs_common.student_dataset_config("segformer", "camvid", arg, cpu=False)
  configs_common.camvid_data_dir(config)
  if args.cpu or args.runlocal:
    protocol = dict(CAMVID_CPU_PROTOCOL, **({"model": ""} if args.tiny else {}))
    configs_common.camvid_cpu_schedule(config, runlocal=args.runlocal, **protocol)
  return config
