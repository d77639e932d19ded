"""SegFormer-B0 on Cityscapes (paper schedule: crop 1024, batch 8, 120k steps, sliding-window eval).

Train (fine labels, the upper bound) or on weak labels alone (the paper's "Supervised"):

  sesam train --config=configs/segformer_cityscapes.py:weak=coarse --workdir=workdirs/segformer_cityscapes_coarse \
      --config.data_dir=/path/to/cityscapes

Arguments after the colon: weak=fine|points|scribbles|coarse, method=supervised|fixmatch|sam_baseline|sesam, runlocal (a minutes-long smoke
run), tiny (the tiny test variant of the student). No pretrained weights exist here, so figures
are far below the paper's ImageNet-initialised ones.
"""

from sesam_jax import configs_common


def get_config(arg=None):
  config, _ = configs_common.student_dataset_config("segformer", "cityscapes", arg)
  return config
