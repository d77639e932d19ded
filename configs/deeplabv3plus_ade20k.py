"""DeepLabV3+ ResNet-50 on ADE20K (paper schedule: crop 512, batch 16, 160k steps).

Train (fine labels, the upper bound) or on weak labels alone (the paper's "Supervised"):

  sesam train --config=configs/deeplabv3plus_ade20k.py:weak=coarse --workdir=workdirs/deeplabv3plus_ade20k_coarse \
      --config.data_dir=/path/to/ade20k

Arguments after the colon: weak=fine|points|scribbles|coarse, method=supervised|fixmatch|sam_baseline|sesam, runlocal (a minutes-long smoke
run), tiny (the tiny test variant of the student). No pretrained weights exist here, so figures
are far below the paper's ImageNet-initialised ones.
"""

from sesam_jax import configs_common


def get_config(arg=None):
  config, _ = configs_common.student_dataset_config("deeplabv3plus", "ade20k", arg)
  return config
