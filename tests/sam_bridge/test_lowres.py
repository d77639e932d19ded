"""Low-resolution selection: same choices on clear cases, same labels, exact SAM upsampling."""

import dataclasses

import numpy as np
import pytest

from sam_bridge import geometry
from sam_bridge.api import PromptSet, RefineRequest
from sam_bridge.backends import create_backend
from sam_bridge.candidates import Candidates, Timer
from sam_bridge.refine import RefineConfig, refine
from tests import sam_fakes


def _scene(h=120, w=160, ring=False):
  """Objects of the three sizes the box backend's candidates have (half-sides 2, 6, 12).

  The weak label is each object shrunk; with `ring` it is a 12x12 square at the object's
  centre, so that the 13x13 candidate is clearly compatible (p = 144/169) and adds pixels.
  """
  weak = np.full((h, w), 255, np.uint8)
  fine = np.zeros((h, w), np.uint8)
  for k, (cy, cx, r) in enumerate([(20, 20, 12), (20, 70, 6), (70, 30, 12), (90, 120, 6),
                                   (40, 130, 12), (95, 70, 2)]):
    fine[cy - r:cy + r + 1, cx - r:cx + r + 1] = 1 + k % 3
    if ring:
      weak[cy - 5:cy + 7, cx - 5:cx + 7] = 1 + k % 3
    else:
      e = max(r // 3, 1)
      weak[cy - r + e:cy + r + 1 - e, cx - r + e:cx + r + 1 - e] = 1 + k % 3
  image = np.stack([fine * 60, fine * 30, 200 - fine * 40], -1).astype(np.uint8)
  return image, weak


def test_lowres_selection_picks_the_same_candidate_on_clear_cases():
  image, weak = _scene()
  backend = sam_fakes.LowResBoxBackend()
  backend.set_image(image)
  insts = geometry.find_instances(weak)
  prompts = [PromptSet.from_points(np.float32([[(i.bbox[1] + i.bbox[3] - 1) / 2,
                                                (i.bbox[0] + i.bbox[2] - 1) / 2]])) for i in insts]
  full = Candidates(backend, prompts, Timer(), weak.shape, lowres=False)
  low = Candidates(backend, prompts, Timer(), weak.shape, lowres=True)
  assert low.lowres and not full.lowres
  clear = 0
  for i, inst in enumerate(insts):
    r_f, p_f, a_f = full.stats(i, inst.mask, inst.bbox)
    r_l, p_l, a_l = low.stats(i, inst.mask, inst.bbox)
    assert np.abs(r_f - r_l).max() < 0.15 and np.abs(p_f - p_l).max() < 0.15
    np.testing.assert_allclose(a_l, a_f, rtol=0.35, atol=8)
    if _clear(r_f, p_f):
      clear += 1
      assert (geometry.select_mask(r_f, p_f, full.scores(i))[0]
              == geometry.select_mask(r_l, p_l, low.scores(i))[0])
  assert clear >= 3


def _clear(r, p, tau1=0.3, tau2=0.7, margin=0.05):
  """No r or p within `margin` of its threshold, and the qualified best p stands out."""
  if np.min(np.abs(r - tau1)) < margin or np.min(np.abs(p - tau2)) < margin:
    return False
  q = np.sort(p[(r >= tau1) & (p >= tau2)])
  return len(q) <= 1 or q[-1] - q[-2] >= margin


def test_lowres_labels_agree_with_full_resolution():
  image, weak = _scene(ring=True)
  backend = sam_fakes.LowResBoxBackend()
  cfg = RefineConfig(sampling="center")  # Points near the centre: the squares sit on the weak ones.
  lo = refine(backend, RefineRequest("s", image, weak), cfg)
  hi = refine(backend, RefineRequest("s", image, weak), dataclasses.replace(cfg, lowres_selection=False))
  assert lo.info["lowres_selection"] and not hi.info["lowres_selection"]
  assert (lo.label == hi.label).mean() > 0.99
  # 13-pixel squares are 3 low-res cells wide: one shifted square may flip across tau2.
  assert sum(a.chosen == b.chosen for a, b in zip(lo.records, hi.records)) >= len(hi.records) - 1
  assert (lo.label != 255).sum() > (weak != 255).sum()


def test_sam_upsample_matches_predict_and_official_postprocess():
  torch = pytest.importorskip("torch")
  import torch.nn.functional as F
  rng = np.random.default_rng(0)
  backend = create_backend("random:tiny")
  backend.set_image(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8))
  prompts = [PromptSet.from_points(rng.uniform(0, [89, 59], (5, 2))) for _ in range(3)]
  full = backend.predict(prompts)
  low = backend.predict_lowres(prompts)
  up = backend.upsample(np.stack([p.logits[1] for p in low]))
  for f, u in zip(full, up):
    np.testing.assert_array_equal(f.masks[1], u)
  # The crop-first post-processing equals the official pad-size upsample, then crop.
  logits = torch.from_numpy(rng.normal(size=(2, 3, 64, 64)).astype(np.float32))
  h, w = backend.resized_hw
  ref = F.interpolate(logits, (backend.size, backend.size), mode="bilinear", align_corners=False)
  ref = F.interpolate(ref[..., :h, :w], backend.image_hw, mode="bilinear", align_corners=False) > 0
  np.testing.assert_array_equal(backend.postprocess(logits), ref.numpy())
  assert backend.lowres_extent() == (h / 4, w / 4)


def test_sam_refine_uses_lowres_path():
  pytest.importorskip("torch")
  image, weak = _scene(60, 80)
  res = refine(create_backend("random:tiny"), RefineRequest("t", image, weak))
  assert res.info["lowres_selection"] and res.info["seconds"]["upsample"] > 0
  assert res.label.shape == weak.shape
