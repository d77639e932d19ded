"""refine(): SeSAM and naive modes, two-stage sparse refinement, ablation flags, resolution."""

import numpy as np
import pytest

from sam_bridge.api import RefineRequest
from sam_bridge.backends import create_backend
from sam_bridge.refine import RefineConfig, refine
from tests.sam_bridge.scenes import coarse, scene


def _prf(weak, out, fine):
  added = (out != 255) & (weak == 255)
  correct = added & (out == fine)
  return correct.sum() / max(added.sum(), 1), correct.sum() / ((weak == 255) & (fine != 255)).sum()


def test_oracle_coarse_refinement_is_precise_and_adds_pixels():
  image, fine = scene()
  weak = coarse(fine)
  res = refine(create_backend("oracle"), RefineRequest("a", image, weak, fine=fine))
  prec, rec = _prf(weak, res.label, fine)
  assert prec == 1.0 and rec > 0.9
  assert (res.label[weak != 255] == weak[weak != 255]).all()
  assert res.info["instances"] == 4 and res.info["oracle"]
  assert all(r.qualified for r in res.records)
  assert res.coarse is None


def test_best_score_selection_picks_parts_with_oracle():
  image, fine = scene()
  weak = coarse(fine)
  res = refine(create_backend("oracle"), RefineRequest("a", image, weak, fine=fine),
               RefineConfig(selection="best_score"))
  assert all(r.chosen == 0 for r in res.records)  # The oracle's part scores highest.
  assert _prf(weak, res.label, fine)[1] < 0.9


def test_points_two_stages():
  image, fine = scene()
  weak = np.full(fine.shape, 255, np.uint8)
  for y, x in [(25, 25), (25, 45), (50, 65), (5, 5)]:
    weak[y - 1:y + 2, x - 1:x + 2] = fine[y, x]
  res = refine(create_backend("oracle"), RefineRequest("p", image, weak, fine=fine),
               RefineConfig(weak_kind="points"))
  assert res.coarse is not None
  stages = {r.stage for r in res.records}
  assert stages == {"sparse", "instances"}
  assert (res.coarse != 255).sum() > (weak != 255).sum()
  assert (res.label != 255).sum() >= (res.coarse != 255).sum()


def test_extension_widens_the_instances():
  image, fine = scene()
  weak = coarse(fine)
  second_car = (fine == 8) & (np.arange(fine.shape[0])[:, None] > 42)
  weak[second_car] = 255  # The weak label missed the second car ...
  ext = np.full(fine.shape, 255, np.uint8)
  ext[46:57, 56:74] = 8  # ... which the teacher's confident pseudo-labels found in part.
  res = refine(create_backend("oracle"), RefineRequest("e", image, weak, extension=ext, fine=fine))
  assert res.info["instances"] == 4
  assert (res.label[second_car] == 8).all()
  plain = refine(create_backend("oracle"), RefineRequest("e", image, weak, fine=fine))
  assert plain.info["instances"] == 3


def test_refined_sampling_off_ignores_the_extension():
  """Table 3c: prompts from the weak label alone leave the teacher's extension unused."""
  image, fine = scene()
  weak = coarse(fine)
  weak[46:58, 55:75] = 255
  ext = np.full(fine.shape, 255, np.uint8)
  ext[46:57, 56:74] = 8
  request = RefineRequest("e", image, weak, extension=ext, fine=fine, step=3)
  off = refine(create_backend("oracle"), request, RefineConfig(refined_sampling=False))
  plain = refine(create_backend("oracle"), RefineRequest("e", image, weak, fine=fine, step=3))
  assert off.info["instances"] == plain.info["instances"] == 3
  np.testing.assert_array_equal(off.label, plain.label)


def _prompts(result):
  return np.concatenate([r.points for r in result.records if r.stage == "instances"])


def test_each_refresh_step_draws_fresh_prompts_and_a_step_repeats_its_own():
  image, fine = scene()
  weak = coarse(fine)
  backend = create_backend("oracle")
  at = {step: _prompts(refine(backend, RefineRequest("r", image, weak, fine=fine, step=step),
                              seed=7)) for step in (-1, 4, 8)}
  again = _prompts(refine(backend, RefineRequest("r", image, weak, fine=fine, step=4), seed=7))
  np.testing.assert_array_equal(at[4], again)  # The same run, the same step: the same prompts.
  assert not np.array_equal(at[4], at[8]) and not np.array_equal(at[-1], at[4])
  other_seed = _prompts(refine(backend, RefineRequest("r", image, weak, fine=fine, step=4),
                               seed=8))
  assert not np.array_equal(at[4], other_seed)
  with pytest.raises(ValueError, match="step -2 < -1"):
    refine(backend, RefineRequest("r", image, weak, fine=fine, step=-2))


def test_confidence_sampling_reads_the_requests_uint8_confidence():
  image, fine = scene()
  weak = coarse(fine)
  conf = np.zeros(fine.shape, np.uint8)
  conf[20:24, 20:24] = 255  # The teacher is sure of one small patch of the first object only.
  cfg = RefineConfig(sampling="confidence", k=3)
  res = refine(create_backend("oracle"), RefineRequest("c", image, weak, fine=fine,
                                                       confidence=conf), cfg)
  first = next(r for r in res.records if r.stage == "instances" and r.bbox[:2] == (11, 11))
  assert all(20 <= x < 24 and 20 <= y < 24 for x, y in first.points)  # Top-k of confidence.
  # Without a teacher (the pre-warm) a request names the paper's sampling instead.
  plain = refine(create_backend("oracle"), RefineRequest("c", image, weak, fine=fine,
                                                         sampling="sesam"), cfg)
  first = next(r for r in plain.records if r.stage == "instances" and r.bbox[:2] == (11, 11))
  assert not all(20 <= x < 24 and 20 <= y < 24 for x, y in first.points)  # Spread (eq. 2).
  with pytest.raises(ValueError, match="needs a confidence map"):
    refine(create_backend("oracle"), RefineRequest("c", image, weak, fine=fine), cfg)


@pytest.mark.parametrize("cfg", [
    RefineConfig(prompt="box"), RefineConfig(prompt="mask"), RefineConfig(instances=False),
    RefineConfig(sampling="center"), RefineConfig(sampling="boundary"),
    RefineConfig(sampling="random"), RefineConfig(selection="random"),
    RefineConfig(mode="naive"), RefineConfig(mode="naive", weak_kind="scribbles"),
])
def test_ablation_flags_run(cfg):
  image, fine = scene()
  weak = coarse(fine)
  res = refine(create_backend("oracle"), RefineRequest("x", image, weak, fine=fine), cfg)
  assert res.label.shape == fine.shape and res.label.dtype == np.uint8
  assert (res.label[weak != 255] == weak[weak != 255]).all()


def test_working_resolution_and_determinism():
  image, fine = scene(120, 160)
  weak = coarse(fine)
  cfg = RefineConfig(work_long_side=80)
  backend = create_backend("oracle")
  a = refine(backend, RefineRequest("w", image, weak, fine=fine), cfg)
  b = refine(backend, RefineRequest("w", image, weak, fine=fine), cfg)
  assert a.info["working_hw"] == (60, 80)
  assert a.label.shape == (120, 160)
  np.testing.assert_array_equal(a.label, b.label)
  assert _prf(weak, a.label, fine)[0] > 0.9


def test_bad_inputs_fail_early():
  image, fine = scene()
  with pytest.raises(ValueError, match="does not match"):
    refine(create_backend("oracle"), RefineRequest("x", image, fine[:10], fine=fine))
  with pytest.raises(ValueError, match="needs the fine label"):
    refine(create_backend("oracle"), RefineRequest("x", image, fine))
  with pytest.raises(ValueError, match="sampling"):
    refine(create_backend("oracle"), RefineRequest("x", image, fine, fine=fine),
           RefineConfig(sampling="psychic"))


def test_transformers_random_end_to_end():
  pytest.importorskip("torch")
  image, fine = scene()
  res = refine(create_backend("random:tiny"), RefineRequest("t", image, coarse(fine)))
  assert res.info["backend"].startswith("random:tiny")
  assert res.label.shape == fine.shape


@pytest.mark.parametrize("kind,mode", [("coarse", "sesam"), ("points", "sesam"), ("coarse", "naive")])
def test_empty_weak_label_stays_unlabeled(kind, mode):
  image = np.zeros((20, 30, 3), np.uint8)
  weak = np.full((20, 30), 255, np.uint8)
  res = refine(create_backend("superpixel"), RefineRequest("e", image, weak),
               RefineConfig(weak_kind=kind, mode=mode))
  assert (res.label == 255).all() and not res.records
