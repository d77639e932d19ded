"""Official segment_anything modeling code vs our converted transformers SamModel.

The official architecture is built from segment_anything/modeling/*.py loaded by
file path (its package __init__ needs torchvision), given random weights, saved
as an official-format state dict, converted, and both models must produce the
same masks and scores for the same prompts. A tiny ViT keeps it fast; the full
ViT-B run is `sesam bench --what sam --parity`.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sam_bridge.backends.official_loader import build_official_sam  # noqa: E402
from sam_bridge.backends.sam_convert import convert_official_sam, sam_config_from_official  # noqa: E402
from sam_bridge.backends.transformers_sam import TransformersSamBackend, resize_longest  # noqa: E402
from sam_bridge.api import PromptSet  # noqa: E402

TINY = dict(img_size=128, prompt_embed_dim=32, window_size=4, decoder_mlp_dim=64, decoder_heads=2,
            iou_head_hidden_dim=32)


def _official_tiny(seed=0):
  torch.manual_seed(seed)
  sam = build_official_sam("tiny", **TINY)
  # Default init leaves some tensors at zero/one (rel_pos, norms): randomise everything
  # so that a wrong key mapping cannot hide behind equal initial values.
  with torch.no_grad():
    for p in sam.parameters():
      p.copy_(torch.randn_like(p) * 0.2)
    # Centre the mask logits near 0 so that thresholded masks are neither empty nor full.
    sam.mask_decoder.output_upscaling[3].bias.zero_()
    for mlp in sam.mask_decoder.output_hypernetworks_mlps:
      mlp.layers[-1].bias.zero_()
  return sam


@pytest.fixture(scope="module")
def pair():
  official = _official_tiny()
  sd = {k: v.clone() for k, v in official.state_dict().items()}
  from transformers import SamModel
  model = SamModel(sam_config_from_official(sd, vision_heads=2, decoder_heads=2))
  missing, unexpected = model.load_state_dict(convert_official_sam(sd), strict=False)
  assert not missing and not unexpected, (missing, unexpected)
  return official, TransformersSamBackend(model, name="converted tiny", batch_size=8)


def test_conversion_covers_every_key(pair):
  official, backend = pair
  converted = convert_official_sam(official.state_dict())
  assert set(converted) == set(backend.model.state_dict())


def test_masks_and_scores_match_official(pair):
  official, backend = pair
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
  backend.set_image(image)
  prompts = [PromptSet.from_points(rng.uniform(0, [119, 89], (3, 2)), np.array([1, 1, 0]))
             for _ in range(4)]
  ours = backend.predict(prompts)
  # The official forward does its own normalisation, padding and mask upsampling.
  resized = resize_longest(image, TINY["img_size"])
  scale = np.float32([resized.shape[1] / 120, resized.shape[0] / 90])
  batched = [{
      "image": torch.from_numpy(resized.transpose(2, 0, 1).astype(np.float32)),
      "original_size": image.shape[:2],
      "point_coords": torch.from_numpy(np.stack([p.points * scale for p in prompts])),
      "point_labels": torch.from_numpy(np.stack([p.point_labels for p in prompts])),
  }]
  with torch.inference_mode():
    ref = official(batched, multimask_output=True)[0]
  ref_scores = ref["iou_predictions"].numpy()
  ref_masks = ref["masks"].numpy()
  for i, pred in enumerate(ours):
    np.testing.assert_allclose(pred.scores, ref_scores[i], rtol=1e-4, atol=1e-4)
    agree = (pred.masks == ref_masks[i]).mean()
    assert agree > 0.999, agree
  # Low-resolution logits agree too (before any thresholding).
  with torch.inference_mode():
    low = backend.model(image_embeddings=backend._emb, multimask_output=True,
                        input_points=torch.from_numpy(np.stack([p.points * scale for p in prompts])[None]),
                        input_labels=torch.from_numpy(np.stack([p.point_labels for p in prompts])[None]).long()
                        ).pred_masks[0]
  np.testing.assert_allclose(low.numpy(), ref["low_res_logits"].numpy(), rtol=1e-3, atol=1e-3)
  # Random weights could give trivial masks; make sure this compares real content.
  assert 0.01 < ref_masks.mean() < 0.99
