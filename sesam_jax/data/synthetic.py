"""`synthetic`: generated street-like scenes, the embedded default dataset.

Each scene has a wavy horizon between two textured background classes (sky,
ground) and several instances of five object classes (building, tree, car,
person, sign) drawn in random order, so instances touch and occlude each other.
Every class has its own hue and texture (stripes, grid, blotches, checks), so a
small segmentation network can learn to tell them apart; instances jitter their
colour so that instance boundaries inside one class exist (what SAM priors are
about). A scene depends only on (seed, split, index), is generated on access
(nothing on disk) and takes a few ms at 256x512.
"""

from __future__ import annotations

import functools

import numpy as np

from sesam_jax.data import base

CLASS_NAMES = ("sky", "ground", "building", "tree", "car", "person", "sign")
COLORS = np.array([[70, 130, 180], [128, 64, 128], [150, 90, 60], [60, 150, 40],
                   [20, 30, 160], [220, 20, 60], [230, 210, 0]], np.uint8)
SKY, GROUND, BUILDING, TREE, CAR, PERSON, SIGN = range(7)
# Instances per scene (inclusive ranges) for each object class.
INSTANCES = {BUILDING: (2, 4), TREE: (2, 4), CAR: (2, 5), PERSON: (2, 5), SIGN: (1, 3)}
TEXTURE_AMPLITUDE = np.array([10, 22, 28, 30, 26, 26, 30], np.float32)


def info() -> base.DatasetInfo:
  """Class names, colours and class count of this dataset."""
  return base.DatasetInfo("synthetic", CLASS_NAMES, COLORS, len(CLASS_NAMES))


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  return yy, xx


def _textures(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """7xHxW float32 in about [-1, 1]: one texture per class, random phase per scene."""
  yy, xx = _grid(height, width)
  s = 64.0 / max(height, 64)  # Textures have a fixed period in pixels of a 64-px-tall scene.
  p = rng.uniform(0, 2 * np.pi, size=8).astype(np.float32)
  # Smooth blotches for trees: a coarse random field upsampled by repetition.
  coarse = rng.uniform(-1, 1, size=(height // 6 + 2, width // 6 + 2)).astype(np.float32)
  blotch = np.repeat(np.repeat(coarse, 6, 0), 6, 1)[:height, :width]
  return np.stack([
      yy / height - 0.5,                                              # sky: vertical gradient
      np.sin(yy * 0.9 * s + p[0]) * np.cos(xx * 0.15 * s + p[1]),     # ground: wavy bands
      np.sign(np.sin(yy * 0.8 * s + p[2]) * np.sin(xx * 0.8 * s + p[3])),  # building: windows
      blotch,                                                         # tree: leaves
      np.sin((xx + yy) * 0.9 * s + p[4]),                             # car: diagonal stripes
      np.sin(xx * 1.4 * s + p[5]),                                    # person: vertical stripes
      np.sign(np.sin(xx * 1.1 * s + p[6]) * np.sin(yy * 1.1 * s + p[7])),  # sign: checks
  ])


def _paint(label: np.ndarray, instance: np.ndarray, region: tuple[slice, slice],
           mask: np.ndarray, class_id: int, instance_id: int) -> None:
  label[region][mask] = class_id
  instance[region][mask] = instance_id


def _shape_mask(rng: np.random.Generator, class_id: int, cy: float, cx: float, h: float,
                w: float, shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray]:
  """Mask of one instance within its clipped bounding box."""
  H, W = shape
  y0, y1 = int(max(cy - h / 2, 0)), int(min(cy + h / 2 + 1, H))
  x0, x1 = int(max(cx - w / 2, 0)), int(min(cx + w / 2 + 1, W))
  region = (slice(y0, y1), slice(x0, x1))
  yy, xx = _grid(H, W)
  v = (yy[region] - cy) / (h / 2)  # -1..1 inside the box.
  u = (xx[region] - cx) / (w / 2)
  if class_id == BUILDING:
    mask = (np.abs(u) <= 1) & (np.abs(v) <= 1)
  elif class_id == TREE:
    # Crown (circle-ish) on a short trunk.
    mask = (u ** 2 + ((v + 0.25) / 0.75) ** 2 <= 1) | ((np.abs(u) < 0.15) & (v > 0))
  elif class_id == CAR:
    mask = u ** 4 + v ** 4 <= 1  # Rounded box.
  elif class_id == PERSON:
    mask = ((u ** 2 + ((v - 0.2) / 0.8) ** 2) <= 1) | ((u / 0.6) ** 2 + ((v + 0.78) / 0.22) ** 2
                                                       <= 1)
  else:  # SIGN: triangle or diamond.
    if rng.random() < 0.5:
      mask = (v <= 1) & (np.abs(u) <= (v + 1) / 2)
    else:
      mask = np.abs(u) + np.abs(v) <= 1
  return region, mask


def generate_scene(seed: int, index: int, size: tuple[int, int] = (256, 512), *,
                   split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """One deterministic scene.

  Args:
    seed: dataset seed.
    index: scene number.
    size: (H, W) in pixels.
    split: scenes of different splits never coincide.

  Returns:
    (HxWx3 uint8 image, HxW uint8 label with class ids 0..6).
  """
  H, W = size
  if H < 16 or W < 16:
    raise ValueError(f"synthetic scenes need size >= 16x16, got {size}.")
  rng = np.random.default_rng(np.random.SeedSequence([seed, base.stable_hash(split), index]))
  yy, xx = _grid(H, W)
  label = np.empty((H, W), np.uint8)
  instance = np.zeros((H, W), np.int32)
  horizon_y = H * rng.uniform(0.35, 0.55)
  horizon = horizon_y + H * 0.04 * np.sin(xx[0] * rng.uniform(2, 6) / W * 2 * np.pi
                                          + rng.uniform(0, 6.3))
  label[:] = np.where(yy < horizon[None, :], SKY, GROUND)
  instance[label == GROUND] = 1

  # Objects in random order: later ones occlude earlier ones.
  objects = [c for c, (lo, hi) in INSTANCES.items() for _ in range(rng.integers(lo, hi + 1))]
  order = rng.permutation(len(objects))
  # Buildings first most of the time (they are the backdrop), then the rest shuffled.
  objects = sorted((objects[i] for i in order), key=lambda c: (c != BUILDING) * rng.random())
  for n, class_id in enumerate(objects, start=2):
    if class_id == BUILDING:
      h, w = H * rng.uniform(0.25, 0.5), W * rng.uniform(0.12, 0.3)
      cy, cx = horizon_y - h / 2 + H * 0.05, rng.uniform(0, W)
    elif class_id == TREE:
      h = H * rng.uniform(0.2, 0.4)
      w = h * rng.uniform(0.6, 1.0)
      cy, cx = horizon_y - h * 0.3, rng.uniform(0, W)
    elif class_id == CAR:
      h = H * rng.uniform(0.08, 0.16)
      w = h * rng.uniform(1.8, 2.6)
      cy, cx = rng.uniform(horizon_y + h / 2, H), rng.uniform(0, W)
    elif class_id == PERSON:
      h = H * rng.uniform(0.12, 0.25)
      w = h * rng.uniform(0.3, 0.4)
      cy, cx = rng.uniform(horizon_y, H - h / 3), rng.uniform(0, W)
    else:
      h = H * rng.uniform(0.06, 0.12)
      w = h * rng.uniform(0.9, 1.2)
      cy, cx = rng.uniform(h, H - h), rng.uniform(0, W)
    region, mask = _shape_mask(rng, class_id, cy, cx, h, w, (H, W))
    _paint(label, instance, region, mask, class_id, n)

  # Colour: class hue, jittered per instance; class texture; pixel noise.
  num_instances = len(objects) + 2
  inst_class = np.zeros(num_instances, np.int64)
  inst_class[1] = GROUND
  inst_class[2:] = objects
  inst_color = COLORS[inst_class].astype(np.float32) + rng.uniform(-18, 18, (num_instances, 3))
  textures = _textures(rng, H, W)
  texture = np.take_along_axis(textures, label[None].astype(np.intp), 0)[0]
  image = inst_color[instance] + (texture * TEXTURE_AMPLITUDE[label])[..., None]
  image += rng.normal(0, 6, (H, W, 1)).astype(np.float32)  # Luminance noise.
  return np.clip(image, 0, 255).astype(np.uint8), label


class SyntheticSource(base.IndexedSource):
  """Random-access source of generated scenes (see module docstring)."""

  def __init__(self, split: str = "train", *, num_images: int = 64,
               size: tuple[int, int] = (256, 512), seed: int = 0):
    """Args:
      split: "train", "val", ...; different splits give different scenes.
      num_images: number of scenes.
      size: (H, W) of every scene.
      seed: dataset seed.
    """
    if num_images < 1:
      raise ValueError(f"synthetic: num_images must be >= 1, got {num_images}.")
    self.info = info()
    self.split, self.size, self.seed = split, (int(size[0]), int(size[1])), int(seed)
    self.ids = [f"synthetic_{split}_{i:05d}" for i in range(num_images)]

  def __getitem__(self, index: int) -> dict:
    index = self._check_index(index)
    image, label = generate_scene(self.seed, index, self.size, split=self.split)
    return {"id": self.ids[index], "image": image, "label": label}

  def __repr__(self) -> str:
    return f"SyntheticSource({self.split}, {len(self)} images of {self.size}, seed={self.seed})"


GENERATED = True  # No files: `get_source` takes the scene count and size for this source.


def make_source(data_dir: str | None = None, split: str = "train", *, num_images: int = 0,
                size: tuple[int, int] = (0, 0), seed: int = 0) -> SyntheticSource:
  """Generated scenes; 0 / (0, 0) take the defaults (64 scenes of 256x512)."""
  if data_dir:
    raise ValueError(f"the synthetic dataset is generated and reads no files; drop the data "
                     f"directory ({data_dir}).")
  kw = {"num_images": int(num_images)} if num_images else {}
  if tuple(size) != (0, 0):
    kw["size"] = tuple(size)
  return SyntheticSource(split, seed=seed, **kw)
