"""The weak-label protocols do what the paper's protocols say, deterministically and fast."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import measure

from sesam_jax.data import get_source
from sesam_jax.data import weak_labels as wl
from sesam_jax.data import weak_sources, weak_splits


@pytest.fixture(scope="module")
def camvid(shared_data):
  source = get_source("camvid", data_dir=shared_data / "camvid", split="val")
  return [source[i] for i in (0, 37, 80)]


def _regions(label):
  """8-connected single-class regions of a fine label (0 where ignored)."""
  return measure.label(np.where(label == 255, 0, label.astype(int) + 1), background=0,
                       connectivity=2)


def test_points_one_pixel_per_present_class(camvid):
  for item in camvid:
    label = item["label"]
    weak = wl.make_weak_label(label, "points", seed=0, image_id=item["id"], num_classes=11)
    present = set(np.unique(label[label != 255]).tolist())
    ys, xs = np.nonzero(weak != 255)
    classes = weak[ys, xs].tolist()
    assert sorted(classes) == sorted(present)  # Exactly one pixel for each present class.
    assert np.array_equal(weak[ys, xs], label[ys, xs])


def test_points_are_uniform_over_the_class():
  # Class 1 covers the left 3/4 of a 1x400 strip: its point lands there ~uniformly.
  label = np.zeros((1, 400), np.uint8)
  label[0, 300:] = 2
  hits = [int(np.flatnonzero(wl.make_weak_label(label, "points", seed=s, image_id="x",
                                                num_classes=3)[0] == 0)[0]) for s in range(400)]
  counts = np.histogram(hits, bins=3, range=(0, 300))[0]
  assert counts.min() > 100  # Each third gets about 133 of 400.


def test_scribbles_stay_inside_their_regions(camvid):
  for item in camvid:
    label = item["label"]
    H, W = label.shape
    weak = wl.make_weak_label(label, "scribbles", seed=0, image_id=item["id"], num_classes=11)
    scribbled = weak != 255
    assert np.array_equal(weak[scribbled], label[scribbled])  # Purity 1.
    assert 0.001 < scribbled.mean() < 0.15
    regions = _regions(label)
    areas = np.bincount(regions.ravel())
    min_area = 2e-4 * H * W
    # Every stroke (connected piece of one class) lies in one fine region ...
    pieces = measure.label(np.where(scribbled, weak.astype(int) + 1, 0), background=0,
                           connectivity=1)
    for piece in range(1, pieces.max() + 1):
      assert len(np.unique(regions[pieces == piece])) == 1
    # ... and every region above the minimum area has one; smaller ones none.
    hit = np.unique(regions[scribbled])
    big = np.flatnonzero(areas >= min_area)
    assert set(big[big > 0].tolist()) == set(hit.tolist())
    # A stroke is a few pixels wide, not a blob: thin under erosion by 2 px.
    assert ndimage.binary_erosion(scribbled, np.ones((5, 5))).sum() < 0.05 * scribbled.sum()


def test_scribble_follows_the_skeleton_of_a_bar():
  label = np.zeros((60, 200), np.uint8)
  label[20:40, 10:190] = 1  # A horizontal bar: the scribble runs along it.
  weak = wl.make_weak_label(label, "scribbles", seed=3, image_id="bar", num_classes=2,
                            min_area=10, length_range=(1.0, 1.0))
  cols = np.flatnonzero((weak == 1).any(0))
  rows = np.flatnonzero((weak == 1).any(1))
  assert cols.max() - cols.min() > 120  # Long, along the bar ...
  assert rows.max() - rows.min() <= 4 and abs(rows.mean() - 29.5) <= 2  # ... thin, centred.


def test_coarse_is_pure_interior_with_open_boundaries(camvid):
  for item in camvid:
    label = item["label"]
    weak = wl.make_weak_label(label, "coarse", seed=0, image_id=item["id"], num_classes=11)
    labeled = weak != 255
    judged = labeled & (label != 255)
    purity = (weak[judged] == label[judged]).mean()
    assert purity >= 0.97, purity
    assert 0.2 < labeled.mean() < 0.95
    # Boundaries stay unlabeled: no coarse pixel touches a class change.
    edge = np.zeros(label.shape, bool)
    edge[1:] |= label[1:] != label[:-1]
    edge[:-1] |= label[1:] != label[:-1]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[:, :-1] |= label[:, 1:] != label[:, :-1]
    assert not (labeled & edge).any()
    # Small regions are dropped.
    regions = _regions(label)
    areas = np.bincount(regions.ravel())
    small = np.flatnonzero(areas < 1e-3 * label.size)
    assert not labeled[np.isin(regions, small[small > 0])].any()


def test_coarse_keeps_holes_open():
  label = np.zeros((100, 100), np.uint8)
  label[30:70, 30:70] = 1  # A hole of class 1 inside class 0.
  weak = wl.make_weak_label(label, "coarse", seed=0, image_id="ring", num_classes=2)
  assert (weak[label == 1] != 0).all() and (weak == 1).sum() > 400 and (weak == 0).sum() > 2000


def test_deterministic_in_seed_and_id_across_processes(camvid):
  item = camvid[0]
  for kind in wl.KINDS:
    a = wl.make_weak_label(item["label"], kind, seed=5, image_id=item["id"], num_classes=11)
    b = wl.make_weak_label(item["label"], kind, seed=5, image_id=item["id"], num_classes=11)
    assert np.array_equal(a, b)
    c = wl.make_weak_label(item["label"], kind, seed=6, image_id=item["id"], num_classes=11)
    d = wl.make_weak_label(item["label"], kind, seed=5, image_id="other", num_classes=11)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
  # Another process with another hash salt draws the same numbers.
  code = ("from sesam_jax.data import weak_labels as wl;"
          "print(wl.weak_label_rng(5, '0016E5_07959', 'points').integers(1 << 30, size=3))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
  assert out.strip() == str(wl.weak_label_rng(5, "0016E5_07959", "points")
                                   .integers(1 << 30, size=3))


def test_bad_inputs():
  label = np.zeros((8, 8), np.uint8)
  label[0, 0] = 7
  with pytest.raises(ValueError, match=r"\[7\].*num_classes"):
    wl.make_weak_label(label, "points", seed=0, image_id="a", num_classes=3)
  with pytest.raises(ValueError, match="unknown weak label kind"):
    wl.make_weak_label(label, "boxes", seed=0, image_id="a", num_classes=8)


def test_read_user_weak_labels(tmp_path):
  source = get_source("synthetic", num_images=2, size=(32, 48))
  weak = np.full((32, 48), 255, np.uint8)
  weak[3, 4] = 2
  folder = tmp_path / "weak"
  folder.mkdir()
  Image.fromarray(weak).save(folder / f"{source.ids[0]}.png")
  with pytest.raises(FileNotFoundError, match=source.ids[1]):
    weak_splits.WeakLabeledSource(source, folder=folder)
  Image.fromarray(weak[:, :40]).save(folder / f"{source.ids[1]}.png")
  with_weak = weak_splits.WeakLabeledSource(source, folder=folder)
  assert np.array_equal(with_weak[0]["weak_label"], weak)
  assert np.array_equal(weak_sources.WeakLabelDir(folder, num_classes=7).read(source.ids[0], (32, 48)), weak)
  with pytest.raises(FileNotFoundError, match="nope.png"):
    weak_sources.WeakLabelDir(folder, num_classes=7, ids=["nope"])
  with pytest.raises(ValueError, match=rf"{source.ids[1]}.png is 40x32.*48x32"):
    with_weak[1]
  weak[0, 0] = 9  # Not a synthetic class.
  Image.fromarray(weak).save(folder / f"{source.ids[1]}.png")
  with pytest.raises(ValueError, match=r"\[9\]"):
    with_weak[1]
  generated = weak_splits.WeakLabeledSource(source, kind="points", seed=1)[0]
  assert (generated["weak_label"] != 255).sum() == len(np.unique(generated["label"]))


def test_generate_split_writes_named_pngs_and_scores(tmp_path):
  source = get_source("synthetic", num_images=3, size=(64, 128))
  result = weak_splits.generate_weak_labels(source, "scribbles", seed=0, out_dir=tmp_path / "out")
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i}.png" for i in source.ids]
  assert result["images"] == 3 and result["purity"] == 1.0
  assert 0 < result["labeled_fraction"] < 0.3 and 0 < result["classes_covered"] <= 1
  read = weak_sources.read_weak_label(tmp_path / "out", source.ids[0], num_classes=7)
  assert np.array_equal(read, wl.make_weak_label(source[0]["label"], "scribbles", seed=0,
                                                 image_id=source.ids[0], num_classes=7))
