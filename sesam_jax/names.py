"""Names every layer shares: the ignore value, the training methods and the label kinds.

The lowest layer of the package (it imports nothing), so that the presets every config file
loads (`configs_common`), the label writers (`atomic`) and the training code agree on one
spelling without the lower ones importing the higher. `sesam_jax.methods` checks its table
against `METHOD_NAMES` and `SAM_METHODS` when it is imported.
"""

# Label value for "no class": never scored, never a loss target (written as 255 in PNGs).
IGNORE_INDEX = 255

# Label kinds a run trains on: "fine" (dense labels, the upper bound) or a weak kind made by
# `sesam_jax.data.weak_labels` (or read from the user's files).
WEAK_KINDS = ("fine", "points", "scribbles", "coarse")

# The methods of `sesam_jax.methods.METHODS` (the paper's rows), in table order.
METHOD_NAMES = ("supervised", "fixmatch", "sam_baseline", "sesam", "agmm")
# Those of them that read `config.sam` (they refine weak labels, so never train on "fine").
SAM_METHODS = ("sam_baseline", "sesam")
