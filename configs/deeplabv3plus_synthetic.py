"""DeepLabV3+ (tiny variant by default) on the generated `synthetic` scenes: no data needed.

  sesam train --config=configs/deeplabv3plus_synthetic.py:weak=points --workdir=workdirs/synth

Used by the tests (kill-and-resume, multi-device) and the demo; finishes in a couple of minutes
on a CPU. The short schedule lowers the EMA decay to 0.9 so the teacher follows the student.
Arguments after the colon: weak=fine|points|scribbles|coarse, method=supervised|fixmatch|sam_baseline|sesam, runlocal, tiny (default on here;
`tiny=0` trains ResNet-101, `tiny=0,backbone=r50` ResNet-50).
"""

from sesam_jax import configs_common


def get_config(arg=None):
  config, args = configs_common.student_dataset_config("deeplabv3plus", "synthetic", "tiny," + (arg or ""))
  configs_common.synthetic_schedule(config, runlocal=args.runlocal)
  return config
