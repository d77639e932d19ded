"""DeepLabV3+ ResNet-101 on CamVid (11 classes, 480x360), a CPU schedule at half resolution.

`backbone=r50` after the colon trains ResNet-50.

  sesam train --config=configs/deeplabv3plus_camvid.py:weak=fine --workdir=workdirs/camvid_fine
  sesam train --config=configs/deeplabv3plus_camvid.py:weak=fine,runlocal --workdir=workdirs/camvid_rl

The data is read from `config.data_dir`; when it is not given, from `../shared/data/camvid`
relative to the working directory (the project's shared data beside the checkout).

Half resolution: images are rescaled by U(0.25, 1.0) (i.e. 0.5x the usual 0.5-2.0 range) before the
crop, and evaluated at 0.5x with logits resized back to the full 480x360 labels. The CPU schedule
(`CAMVID_CPU` below) is the SegFormer-B0 one (sized for about 10 minutes on the 2-core CPU
here); ResNet-101 (59M parameters, dense 3x3 convolutions; ResNet-50: 40M) is several times
slower per step on this CPU, so here this file is for a GPU or for `tiny`; its CPU wall time was
not measured. Both are far too short for the paper's EMA decay of
0.999 (the teacher would still be mostly the random init), so they lower it (0.99 and 0.9).
No pretrained weights: mIoU is far below ImageNet-initialised figures.
Arguments after the colon: weak=fine|points|scribbles|coarse,
method=supervised|fixmatch|sam_baseline|sesam, backbone=r101|r50, runlocal, tiny.
"""

from sesam_jax import configs_common

# The CPU schedule: steps, global batch, crop (pixels, at half resolution), warm-up, EMA decay.
CAMVID_CPU = dict(num_steps=300, batch_size=8, crop=112, warmup_steps=30, ema_decay=0.99)


def get_config(arg=None):
  config, args = configs_common.student_dataset_config("deeplabv3plus", "camvid", arg)
  configs_common.camvid_cpu_schedule(config, runlocal=args.runlocal, **CAMVID_CPU)
  return config
