"""RefineConfig(trace=True): what refine() computed, per instance, agrees with the geometry."""

import numpy as np
import pytest

from sam_bridge import geometry
from sam_bridge.api import RefineRequest
from sam_bridge.backends import create_backend
from sam_bridge.refine import RefineConfig, refine
from tests import sam_fakes


def _scene(h=60, w=80):
  fine = np.zeros((h, w), np.uint8)
  fine[10:40, 10:40] = 8
  fine[10:40, 40:50] = 9
  fine[45:58, 55:75] = 8
  image = np.stack([fine * 20, fine * 10, 255 - fine * 20], -1).astype(np.uint8)
  weak = np.full(fine.shape, 255, np.uint8)
  weak[12:38, 12:38] = 8
  weak[12:38, 42:48] = 9
  weak[47:56, 57:73] = 8
  return image, weak, fine


def _check_instance(t, hw):
  y0, x0, y1, x1 = t.bbox
  assert t.mask.shape == (y1 - y0, x1 - x0) and t.candidates.shape == (3, *hw)
  # Every sampled point lies inside its instance, in a distinct drawn grid cell.
  xs, ys = (t.points - np.float32([x0, y0])).astype(int).T
  assert t.mask[ys, xs].all()
  if t.grid is not None:
    assert t.grid == geometry.grid_shape(*t.mask.shape, len(t.cells))
    cells = geometry.cell_index(ys, xs, t.mask.shape, t.grid)
    assert len(set(cells.tolist())) == len(cells) and set(cells.tolist()) <= set(t.cells.tolist())
    edges_y, edges_x = t.grid_edges
    rows = np.searchsorted(edges_y, ys, side="right") - 1
    cols = np.searchsorted(edges_x, xs, side="right") - 1
    np.testing.assert_array_equal(rows * t.grid[1] + cols, cells)
  if t.field is not None:
    assert (t.field[~t.mask] == 0).all() and t.field.max() == pytest.approx(1.0)
  # r and p recomputed from the three candidates and the instance mask.
  r, p = geometry.coverage_compatibility(t.candidates, t.mask, t.bbox)
  return r, p


@pytest.mark.parametrize("backend", ["oracle", "superpixel"])
def test_trace_holds_what_refine_used(backend):
  image, weak, fine = _scene()
  request = RefineRequest("a", image, weak, fine=fine if backend == "oracle" else None)
  plain = refine(create_backend(backend), request)
  traced = refine(create_backend(backend), request, RefineConfig(trace=True))
  assert plain.trace is None
  np.testing.assert_array_equal(traced.label, plain.label)  # Tracing changes nothing.
  trace = traced.trace
  assert trace.working_hw == (60, 80) and trace.image.shape == (60, 80, 3)
  np.testing.assert_array_equal(trace.region, weak)
  assert len(trace.instances) == traced.info["instances"] == len(traced.records)
  for t, record in zip(trace.instances, traced.records):
    r, p = _check_instance(t, trace.working_hw)
    np.testing.assert_allclose(r, t.coverage)
    np.testing.assert_allclose(p, t.compatibility)
    assert not t.lowres and t.chosen == record.chosen and t.qualified == record.qualified
    assert t.coverage[t.chosen] == record.coverage and t.class_id == record.class_id
    np.testing.assert_array_equal(t.points, record.points)
  # The chosen candidates, merged as refine() merges them, give the refined label.
  merged = geometry.merge_masks(weak, [t.candidates[t.chosen] for t in trace.instances],
                                [t.class_id for t in trace.instances],
                                [t.compatibility[t.chosen] for t in trace.instances])
  np.testing.assert_array_equal(merged, traced.label)


def test_trace_of_points_has_both_stages_and_lowres_flag():
  image, weak, fine = _scene()
  points = np.full(weak.shape, 255, np.uint8)
  points[25, 25], points[25, 45], points[51, 65] = 8, 9, 8
  res = refine(create_backend("oracle"), RefineRequest("a", image, points, fine=fine),
               RefineConfig(weak_kind="points", trace=True))
  stages = [t.stage for t in res.trace.instances]
  assert stages.count("sparse") == 3 and stages.count("instances") == res.info["instances"]
  np.testing.assert_array_equal(res.trace.region, np.asarray(res.coarse))
  # A low-resolution backend: r and p come from its logits, close to the upsampled masks'.
  backend = sam_fakes.LowResBoxBackend()
  res = refine(backend, RefineRequest("b", image, weak), RefineConfig(trace=True))
  for t in res.trace.instances:
    assert t.lowres
    r, p = _check_instance(t, res.trace.working_hw)
    np.testing.assert_allclose(r, t.coverage, atol=0.1)  # Within a low-res cell's width.
    np.testing.assert_allclose(p, t.compatibility, atol=0.1)
