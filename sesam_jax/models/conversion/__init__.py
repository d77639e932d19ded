"""PyTorch state dicts -> Flax variables for the students (pure functions).

Formats (`fmt`):
  "hf"          `transformers` SegFormer (`nvidia/mit-b0` style encoder-only
                `SegformerModel`/`SegformerForImageClassification`, or the full
                `SegformerForSemanticSegmentation`; hub names such as
                `encoder.block.0.0.attention.self.query` and the current in-memory
                names `stages.0.blocks.0.attention.q_proj` both work), or
                `transformers` `ResNetModel`/`ResNetForImageClassification`.
  "mmseg"       the original SegFormer/mmseg MiT layout (`mit_b0.pth`:
                `patch_embed1.proj.weight`, `block1.0.attn.q.weight`,
                `block1.0.attn.kv.weight`, `norm1.weight`, ...; an optional
                `backbone.` prefix is stripped). Encoder only.
  "torchvision" torchvision `resnet50`/`resnet101` (`conv1.weight`, `bn1.*`,
                `layer1.0.conv1.weight`, `layer1.0.downsample.0.weight`, ...).

The parts: `tables` (one rename table per format), `engine` (layout, checks, model inference),
`files` (reading checkpoints, the msgpack files of `sesam convert`, `init`).
"""

from sesam_jax.models.conversion.engine import (Conversion, convert_checkpoint,
                                                convert_variables, infer_model)
from sesam_jax.models.conversion.files import (convert_file, init_from_converted,
                                               load_converted, merge_pretrained,
                                               read_state_dict, save_converted)
from sesam_jax.models.conversion.tables import (FORMATS, RENAMERS, rename_resnet_hf,
                                                rename_resnet_torchvision, rename_segformer_hf,
                                                rename_segformer_mmseg)

__all__ = ["Conversion", "FORMATS", "RENAMERS", "convert_checkpoint", "convert_file",
           "convert_variables", "infer_model", "init_from_converted", "load_converted",
           "merge_pretrained", "read_state_dict", "rename_resnet_hf", "rename_resnet_torchvision",
           "rename_segformer_hf", "rename_segformer_mmseg", "save_converted"]
