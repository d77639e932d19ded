"""DeepLabV3+ ResNet-50 on PASCAL VOC 2012 (paper schedule: crop 512, batch 16, 60k steps).

Train (fine labels, the upper bound) or on weak labels alone (the paper's "Supervised"):

  sesam train --config=configs/deeplabv3plus_voc.py:weak=coarse --workdir=workdirs/deeplabv3plus_voc_coarse \
      --config.data_dir=/path/to/voc

Arguments after the colon: weak=fine|points|scribbles|coarse, method=supervised|fixmatch|sam_baseline|sesam, runlocal (a minutes-long smoke
run), tiny (the tiny test variant of the student). No pretrained weights exist here, so figures
are far below the paper's ImageNet-initialised ones.
"""

from sesam_jax import configs_common


def get_config(arg=None):
  config, _ = configs_common.student_dataset_config("deeplabv3plus", "voc", arg)
  return config
