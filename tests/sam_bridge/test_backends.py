"""Backends: registry, oracle candidates, superpixel, random transformers SAM (tiny)."""

import numpy as np
import pytest

from sam_bridge.api import Backend, PromptSet
from sam_bridge.backends import create_backend


def _scene():
  fine = np.zeros((48, 64), np.uint8)  # Class 0: road everywhere.
  fine[10:30, 10:30] = 8  # A car.
  fine[10:30, 30:40] = 9  # A pedestrian touching the car.
  fine[35:45, 45:60] = 8  # A second car.
  image = np.stack([fine * 20, fine * 10, 255 - fine * 20], -1).astype(np.uint8)
  return image, fine


def test_registry_errors():
  with pytest.raises(ValueError, match="unknown backend"):
    create_backend("nope")
  with pytest.raises(ValueError, match="needs a path"):
    create_backend("transformers")
  with pytest.raises(FileNotFoundError, match="no SAM weights"):
    create_backend("transformers:/nonexistent/dir")
  with pytest.raises(ValueError, match="unknown random SAM variant"):
    create_backend("random:vit_z")


def test_oracle_candidates_part_whole_over():
  image, fine = _scene()
  oracle = create_backend("oracle")
  assert isinstance(oracle, Backend) and oracle.is_oracle and oracle.name == "oracle"
  with pytest.raises(ValueError, match="fine label"):
    oracle.set_image(image)
  oracle.set_image(image, fine_label=fine)
  (pred,) = oracle.predict([PromptSet.from_points([[15, 15]])])
  part, whole, over = pred.masks
  np.testing.assert_array_equal(whole, (fine == 8) & (np.arange(48)[:, None] < 30))
  assert part.sum() < whole.sum() and not (part & ~whole).any()
  assert over[20, 35] and over[5, 5]  # Merged with the touching pedestrian and the road.
  assert not over[40, 50]  # Not with the other car (same class, not touching).
  # Box prompt: clipped to the box.
  (pred,) = oracle.predict([PromptSet(np.zeros((0, 2), np.float32), np.zeros(0, np.int32),
                                      box=np.float32([12, 12, 25, 25]))])
  assert pred.masks[1].sum() == 14 * 14
  # Mask prompt: the component under most of the mask.
  m = np.zeros_like(fine, bool)
  m[36:44, 46:58] = True
  (pred,) = oracle.predict([PromptSet(np.zeros((0, 2), np.float32), np.zeros(0, np.int32), mask=m)])
  assert pred.masks[1].sum() == 150


def test_superpixel_candidates_grow():
  image, fine = _scene()
  sp = create_backend("superpixel", scales=(10, 50, 400))
  sp.set_image(image)
  (pred,) = sp.predict([PromptSet.from_points([[15, 15]])])
  assert pred.masks.shape == (3, 48, 64) and pred.masks[:, 15, 15].all()
  assert np.isfinite(pred.scores).all()


def test_random_transformers_sam_runs_all_prompt_kinds():
  torch = pytest.importorskip("torch")
  torch.set_num_threads(1)
  image, fine = _scene()
  sam = create_backend("random:tiny", batch_size=2)
  assert "random" in sam.name
  sam.set_image(image)
  m = np.zeros_like(fine, bool)
  m[10:30, 10:30] = True
  prompts = [PromptSet.from_points([[15, 15], [20, 20]]), PromptSet.from_points([[40, 40]]),
             PromptSet.from_points([[1, 1], [5, 5]], [1, 0]),
             PromptSet(np.zeros((0, 2), np.float32), np.zeros(0, np.int32), box=np.float32([10, 10, 29, 29])),
             PromptSet(np.zeros((0, 2), np.float32), np.zeros(0, np.int32), mask=m)]
  preds = sam.predict(prompts)
  for p in preds:
    p.validate((48, 64))
  # Batching and grouping do not change answers: one at a time gives the same.
  alone = sam.predict([prompts[2]])[0]
  np.testing.assert_allclose(alone.scores, preds[2].scores, atol=1e-5)


def test_bf16_dtype_runs():
  pytest.importorskip("torch")
  image, _ = _scene()
  sam = create_backend("random:tiny", dtype="bfloat16")
  sam.set_image(image)
  (pred,) = sam.predict([PromptSet.from_points([[15, 15]])])
  pred.validate((48, 64))


def _family_backend(cls_name, cfg_name, **cfg):
  import transformers
  from sam_bridge.backends.transformers_sam import TransformersSamBackend
  model = getattr(transformers, cls_name)(getattr(transformers, cfg_name)(**cfg))
  return TransformersSamBackend(model, name=f"{cls_name} (random weights)")


def _check_runs(backend):
  image, _ = _scene()
  backend.set_image(image)
  preds = backend.predict([PromptSet.from_points([[15, 15], [20, 20]]),
                           PromptSet(np.zeros((0, 2), np.float32), np.zeros(0, np.int32),
                                     box=np.float32([10, 10, 29, 29]))])
  for p in preds:
    p.validate((48, 64))


def test_sam_hq_family_runs():
  pytest.importorskip("transformers")
  _check_runs(_family_backend(
      "SamHQModel", "SamHQConfig",
      vision_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         global_attn_indexes=[1], window_size=4, image_size=256),
      prompt_encoder_config=dict(image_size=256), mask_decoder_config=dict(vit_dim=64)))


@pytest.mark.slow
def test_sam2_family_runs():
  # The default Sam2Config (Hiera, 1024 px) takes ~10 s on this CPU: a slow check.
  pytest.importorskip("transformers")
  _check_runs(_family_backend("Sam2Model", "Sam2Config"))


def test_segment_anything_backend_explains_missing_torchvision():
  try:
    import torchvision  # noqa: F401
    pytest.skip("torchvision present: the official backend can load here")
  except ImportError:
    pass
  with pytest.raises(ImportError, match="torchvision.*transformers:"):
    create_backend("segment_anything:/weights/sam_vit_b_01ec64.pth")
