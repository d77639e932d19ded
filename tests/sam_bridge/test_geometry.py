"""Geometry: instance separation, eq. 2 sampling and its ablations, selection, merge, strokes."""

import math

import numpy as np
import pytest

from sam_bridge import geometry
from sam_bridge.geometry.sampling import distance_field, grid_shape


def _two_cars():
  label = np.full((40, 60), 255, np.uint8)
  label[5:15, 5:20] = 3  # Car A.
  label[20:35, 30:55] = 3  # Car B, same class, separate.
  label[5:15, 20:28] = 1  # Touches car A: another class.
  label[38, 0:2] = 2  # A 2-pixel speck.
  return label


def test_instances_split_classes_and_components():
  insts = geometry.find_instances(_two_cars(), min_area=4)
  got = sorted((i.class_id, i.bbox, i.area) for i in insts)
  assert got == [(1, (5, 20, 15, 28), 80), (3, (5, 5, 15, 20), 150), (3, (20, 30, 35, 55), 375)]
  # Union of the instances of a class is the class mask, and they are disjoint (eq. 1).
  full = [i.full_mask((40, 60)) for i in insts if i.class_id == 3]
  assert not (full[0] & full[1]).any()
  np.testing.assert_array_equal(full[0] | full[1], _two_cars() == 3)
  # The speck survives a smaller threshold.
  assert len(geometry.find_instances(_two_cars(), min_area=1)) == 4


def test_class_instances_is_one_per_class():
  insts = geometry.class_instances(_two_cars(), min_area=4)
  assert sorted(i.class_id for i in insts) == [1, 3]
  car = next(i for i in insts if i.class_id == 3)
  assert car.bbox == (5, 5, 35, 55) and car.area == 525


def test_grid_shape_is_eq2():
  for h, w, k in [(10, 10, 5), (37, 91, 5), (200, 7, 5), (1, 1, 5)]:
    side = math.sqrt(h * w / k)
    assert grid_shape(h, w, k) == (math.ceil(h / side), math.ceil(w / side))
    rows, cols = grid_shape(h, w, k)
    assert rows * cols >= k


def test_sesam_sampling_spreads_points_and_avoids_boundary():
  mask = np.zeros((60, 100), bool)
  mask[5:55, 5:95] = True
  rng = np.random.default_rng(0)
  dist = distance_field(mask)
  hits = []
  for _ in range(50):
    pts = geometry.sample_points(mask, k=5, strategy="sesam", rng=rng)
    assert pts.shape == (5, 2)
    xs, ys = pts[:, 0].astype(int), pts[:, 1].astype(int)
    assert mask[ys, xs].all()
    assert len({(x, y) for x, y in zip(xs, ys)}) == 5
    hits.append(dist[ys, xs])
    rows, cols = grid_shape(60, 100, 5)
    cells = set(zip(ys * rows // 60, xs * cols // 100))
    assert len(cells) == 5  # One point per chosen cell.
  # Distance-weighted: points sit deeper inside than uniform sampling would put them.
  assert np.mean(hits) > dist[mask].mean()


def test_ablation_strategies():
  mask = np.zeros((50, 50), bool)
  mask[5:45, 5:45] = True
  dist = distance_field(mask)[mask]
  rng = np.random.default_rng(1)
  d = distance_field(mask)

  def mean_depth(strategy, **kw):
    pts = geometry.sample_points(mask, k=5, strategy=strategy, rng=rng, **kw).astype(int)
    return d[pts[:, 1], pts[:, 0]].mean()

  assert mean_depth("center") >= 0.8 * dist.max()
  assert mean_depth("boundary") <= 0.2 * dist.max() + 1
  conf = np.zeros((50, 50), np.float32)
  conf[10, 10:15] = 1.0
  pts = geometry.sample_points(mask, k=5, strategy="confidence", rng=rng, confidence=conf)
  assert sorted(map(tuple, pts.astype(int).tolist())) == [(x, 10) for x in range(10, 15)]
  with pytest.raises(ValueError, match="confidence map"):
    geometry.sample_points(mask, strategy="confidence", rng=rng)
  assert geometry.sample_points(mask, strategy="random", rng=rng).shape == (5, 2)


def test_confidence_sampling_takes_the_top_k_and_breaks_ties_at_random():
  mask = np.zeros((40, 60), bool)
  mask[4:36, 6:54] = True
  # A known map: the 5 most confident pixels are chosen whatever the seed, most confident first.
  conf = np.random.default_rng(0).integers(0, 200, mask.shape).astype(np.float32)
  top = [(7, 30), (20, 11), (33, 50), (15, 40), (25, 25)]
  for i, (y, x) in enumerate(top):
    conf[y, x] = 250 - i
  for seed in range(3):
    pts = geometry.sample_points(mask, k=5, strategy="confidence",
                                 rng=np.random.default_rng(seed), confidence=conf)
    assert [(int(y), int(x)) for x, y in pts] == top
  # A flat (uint8-quantised, saturated) map: the K pixels spread over the region, not its
  # first K pixels in raster order (row 4, x 6..10).
  flat = np.full(mask.shape, 1.0, np.float32)
  drawn = np.concatenate([
      geometry.sample_points(mask, k=5, strategy="confidence", rng=np.random.default_rng(s),
                             confidence=flat) for s in range(40)])
  ys, xs = np.nonzero(mask)
  assert abs(drawn[:, 1].mean() - ys.mean()) < 2.5 and abs(drawn[:, 0].mean() - xs.mean()) < 3.5
  assert len({tuple(p) for p in drawn.tolist()}) > 150  # Fresh pixels for each seed.
  # The same seed draws the same pixels.
  again = [geometry.sample_points(mask, k=5, strategy="confidence", rng=np.random.default_rng(7),
                                  confidence=flat) for _ in range(2)]
  np.testing.assert_array_equal(*again)


def test_tiny_and_thin_masks_give_at_most_area_points():
  rng = np.random.default_rng(0)
  one = np.ones((1, 1), bool)
  assert geometry.sample_points(one, k=5, rng=rng).shape == (1, 2)
  line = np.ones((1, 40), bool)
  pts = geometry.sample_points(line, k=5, rng=rng)
  assert pts.shape == (5, 2) and (pts[:, 1] == 0).all()


def test_selection_rule():
  # Candidate 0: a part (p high, r low); 1: the whole (qualifies); 2: over-merged (p low).
  r = np.array([0.2, 0.8, 1.0])
  p = np.array([1.0, 0.9, 0.4])
  scores = np.array([0.95, 0.8, 0.7])
  assert geometry.select_mask(r, p, scores) == (1, True)
  assert geometry.select_mask(r, p, scores, strategy="best_score") == (0, False)
  # No candidate qualifies -> highest compatibility.
  assert geometry.select_mask(np.array([0.1, 0.2, 0.25]), np.array([0.5, 0.9, 0.3]), scores) == (1, False)
  assert geometry.select_mask(r, p, scores, np.array([5, 0, 9]), strategy="smallest")[0] == 0
  idx = {geometry.select_mask(r, p, scores, strategy="random", rng=np.random.default_rng(s))[0]
         for s in range(20)}
  assert idx == {0, 1, 2}


def test_coverage_compatibility():
  masks = np.zeros((3, 10, 10), bool)
  masks[0, 2:4, 2:4] = True  # 4 px inside W.
  masks[1, 0:10, 0:10] = True  # Everything.
  weak = np.ones((4, 4), bool)  # W at rows/cols 2..5: 16 px.
  r, p = geometry.coverage_compatibility(masks, weak, (2, 2, 6, 6))
  np.testing.assert_allclose(r, [4 / 16, 1.0, 0.0])
  np.testing.assert_allclose(p, [1.0, 16 / 100, 0.0])


def test_merge_rule():
  weak = np.full((6, 6), 255, np.uint8)
  weak[0, 0] = 4
  a = np.zeros((6, 6), bool)
  a[0:4, 0:4] = True
  b = np.zeros((6, 6), bool)
  b[2:6, 2:6] = True
  out = geometry.merge_masks(weak, [a, b], [1, 2], [0.9, 0.8])
  assert out[0, 0] == 4  # Weak pixels keep their class.
  assert out[3, 3] == 1  # Higher priority wins the overlap.
  assert out[5, 5] == 2 and out[0, 5] == 255
  out = geometry.merge_masks(weak, [a, b], [1, 2], [0.8, 0.8])
  assert out[3, 3] == 2  # Full tie (priority and area): the later mask wins, deterministically.
  small = np.zeros((6, 6), bool)
  small[3, 3] = True
  out = geometry.merge_masks(weak, [a, small], [1, 2], [0.8, 0.8])
  assert out[3, 3] == 2  # Tie -> the smaller mask wins.


def test_stroke_points():
  dot = np.ones((3, 3), bool)
  np.testing.assert_array_equal(geometry.stroke_points(dot), [[1, 1]])
  stroke = np.zeros((5, 50), bool)
  stroke[2, :] = True
  pts = geometry.stroke_points(stroke, k=5)
  assert pts.shape == (5, 2)
  np.testing.assert_allclose(np.sort(pts[:, 0]), [0, 12, 24, 37, 49], atol=1)
