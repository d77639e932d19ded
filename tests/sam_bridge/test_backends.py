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
  torch = pytest.importorskip("torch")
  image, _ = _scene()
  fp32, bf16 = create_backend("random:tiny"), create_backend("random:tiny", dtype="bfloat16")
  assert all(p.dtype == torch.bfloat16 for p in bf16.model.parameters())
  prompts = [PromptSet.from_points([[15, 15]]), PromptSet.from_points([[40, 30], [10, 5]])]
  for sam in (fp32, bf16):
    sam.set_image(image)
  for pred in bf16.predict(prompts):
    pred.validate((48, 64))
  # The same random weights in bf16: logits follow fp32's, up to bf16 rounding (random weights
  # keep logits near 0, so rounding is visible: correlation, not equality).
  for a, b in zip(fp32.predict_lowres(prompts), bf16.predict_lowres(prompts)):
    assert a.logits.shape == b.logits.shape == (3, 64, 64)  # The tiny variant: 256 px input.
    assert 0 < np.abs(a.logits - b.logits).max() < 0.05
    assert np.corrcoef(a.logits.ravel(), b.logits.ravel())[0, 1] > 0.6


def _family_backend(cls_name, cfg_name, **cfg):
  import transformers
  from sam_bridge.backends.transformers_sam import TransformersSamBackend
  model = getattr(transformers, cls_name)(getattr(transformers, cfg_name)(**cfg))
  return TransformersSamBackend(model, name=f"{cls_name} (random weights)")


def _check_runs(backend):
  """Point and box prompts give valid, prompt-dependent candidates; a cached image state
  predicts exactly as the encoder did."""
  image, _ = _scene()
  backend.set_image(image)
  prompts = [PromptSet.from_points([[15, 15], [20, 20]]),
             PromptSet(np.zeros((0, 2), np.float32), np.zeros(0, np.int32),
                       box=np.float32([10, 10, 29, 29]))]
  preds = backend.predict(prompts)
  assert len(preds) == 2
  for p in preds:
    p.validate((48, 64))
    assert p.masks.any() and np.isfinite(p.scores).all()
  assert not np.array_equal(preds[0].masks, preds[1].masks), "candidates ignore the prompt"
  state = backend.image_state()
  backend.set_image(255 - image)  # Another image in between ...
  backend.load_image_state(state)  # ... then the first one's cached state.
  for a, b in zip(preds, backend.predict(prompts)):
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


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


def test_the_table_of_kinds():
  from sam_bridge import backends
  assert list(backends.KINDS) == ["oracle", "superpixel", "random", "transformers",
                                  "segment_anything"]
  for name, kind in backends.KINDS.items():
    assert kind.name == name and kind.runs_on in ("torch", "numpy")  # The JAX kinds: sesam_jax.
    assert kind.usage.startswith(name)
  assert backends.KINDS["superpixel"].describe("superpixel") == (
      "superpixel (SAM-free prior: superpixels, no SAM)")
  assert backends.lookup("random:tiny").variants[0] == "vit_b"
  with pytest.raises(ValueError, match=r"^backend='nope': unknown backend; choose one of oracle, "
                                       r"superpixel, random:VARIANT, transformers:PATH"):
    create_backend("nope")
  with pytest.raises(ValueError, match="bad row"):
    backends.BackendKind("bad row", "x", "tpu", "", create_backend)
