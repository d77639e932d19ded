"""SegFormer-B0 on PASCAL VOC 2012 (paper schedule: crop 512, batch 16, 60k steps).

Init: the student starts from MiT-B0 ImageNet-1k weights (the paper's init), made once with

  sesam convert /path/to/mit-b0/model.safetensors mit_b0.msgpack --format hf --model segformer_b0

from the `transformers` checkpoint `nvidia/mit-b0` (or `--format mmseg` for mmseg's mit_b0.pth);
`--config.model=segformer_b1..b5` with the matching MiT file for larger students.

Train (fine labels, the upper bound) or on weak labels alone (the paper's "Supervised"):

  sesam train --config=configs/segformer_voc.py:weak=coarse \
      --workdir=workdirs/segformer_voc_coarse --config.data_dir=/path/to/voc \
      --config.init=mit_b0.msgpack

SeSAM needs SAM weights (the run stops and says so without them):

  sesam train --config=configs/segformer_voc.py:weak=scribbles,method=sesam \
      --workdir=workdirs/segformer_voc_sesam --config.data_dir=/path/to/voc \
      --config.init=mit_b0.msgpack \
      --config.sam.backend=transformers --config.sam.checkpoint=/path/to/sam-vit-base

Your own weak labels instead of generated ones:
`--config.weak_source=scribblesup_xml:/path/to/scribblesup/pascal_2012`
(options as `--config.weak_options=key=value,...`; README "Your own weak labels").
Arguments after the colon: weak=fine|points|scribbles|coarse,
method=supervised|fixmatch|sam_baseline|sesam, runlocal (a minutes-long smoke run), tiny (the tiny
test variant of the student). Without `init` the student is randomly initialised and figures are
far below the paper's.
"""

from sesam_jax import configs_common


def get_config(arg=None):
  config, _ = configs_common.student_dataset_config("segformer", "voc", arg)
  return config
