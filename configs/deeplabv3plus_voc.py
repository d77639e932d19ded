"""DeepLabV3+ ResNet-101 on PASCAL VOC 2012 (paper schedule: crop 512, batch 16, 60k steps).

Init: the student starts from ResNet-101 ImageNet weights (the paper's init), made once with

  sesam convert /path/to/resnet101-63fe2227.pth r101.msgpack --format torchvision \
      --model deeplabv3plus_r101

from torchvision's resnet101 ImageNet weights (`backbone=r50` after the colon trains ResNet-50:
convert resnet50-0676ba61.pth with `--model deeplabv3plus_r50`).

Train (fine labels, the upper bound) or on weak labels alone (the paper's "Supervised"):

  sesam train --config=configs/deeplabv3plus_voc.py:weak=coarse \
      --workdir=workdirs/deeplabv3plus_voc_coarse --config.data_dir=/path/to/voc \
      --config.init=r101.msgpack

SeSAM needs SAM weights (the run stops and says so without them):

  sesam train --config=configs/deeplabv3plus_voc.py:weak=scribbles,method=sesam \
      --workdir=workdirs/deeplabv3plus_voc_sesam --config.data_dir=/path/to/voc \
      --config.init=r101.msgpack \
      --config.sam.backend=transformers --config.sam.checkpoint=/path/to/sam-vit-base

Your own weak labels instead of generated ones:
`--config.weak_source=scribblesup_xml:/path/to/scribblesup/pascal_2012`
(options as `--config.weak_options=key=value,...`; README "Your own weak labels").
Arguments after the colon: weak=fine|points|scribbles|coarse,
method=supervised|fixmatch|sam_baseline|sesam, backbone=r101|r50, runlocal (a minutes-long smoke
run), tiny (the tiny test variant of the student). Without `init` the student is randomly
initialised and figures are far below the paper's.
"""

from sesam_jax import configs_common


def get_config(arg=None):
  config, _ = configs_common.student_dataset_config("deeplabv3plus", "voc", arg)
  return config
