"""Stand-ins for modules other branches are still building (models, metrics, sources).

`install()` registers a fake only where the real module does not import yet, so these tests switch
to the real `segformer_tiny`, `confusion_matrix` and `synthetic` source as soon as they land.
"""

import importlib
import sys
import types
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class TinySeg(nn.Module):
  """Stride-4 conv + BN backbone and a 1x1 decode head: B x H/4 x W/4 x K logits."""
  num_classes: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (3, 3), strides=(2, 2), use_bias=False, dtype=self.dtype, name="backbone_conv1")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name="backbone_bn")(x))
    x = nn.Conv(16, (3, 3), strides=(2, 2), dtype=self.dtype, name="backbone_conv2")(x)
    x = nn.Dropout(0.1, deterministic=not train)(nn.relu(x))
    return nn.Conv(self.num_classes, (1, 1), name="decode_head")(x).astype(jnp.float32)


def _normalize_images(images):
  mean = jnp.array([0.485, 0.456, 0.406]) * 255
  std = jnp.array([0.229, 0.224, 0.225]) * 255
  return (images.astype(jnp.float32) - mean) / std


class _Info:
  def __init__(self, n):
    self.name, self.num_classes, self.ignore_index = "synthetic", n, 255
    self.class_names = tuple(f"class{i}" for i in range(n))
    self.colors = np.zeros((n, 3), np.uint8)


class FakeSynthetic:
  """Random rectangles on coloured backgrounds, deterministic in (seed, split, index)."""

  def __init__(self, split="train", num_images=16, size=(48, 64), seed=0, num_classes=4):
    self.split, self.size, self.seed = split, tuple(size), seed
    self.ids = [f"{split}_{i:04d}" for i in range(num_images)]
    self.info = _Info(num_classes)

  def __len__(self):
    return len(self.ids)

  def __getitem__(self, i):
    rng = np.random.default_rng([self.seed, zlib.crc32(self.split.encode()), i])
    h, w = self.size
    label = np.zeros((h, w), np.uint8)
    for c in range(1, self.info.num_classes):
      y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
      label[y:y + rng.integers(8, h // 2), x:x + rng.integers(8, w // 2)] = c
    palette = np.array([[20, 20, 20], [200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8)
    image = palette[label] + rng.integers(0, 30, (h, w, 3)).astype(np.uint8)
    return {"id": self.ids[i], "image": image, "label": label}


def _confusion_matrix(gt, pred, num_classes):
  gt = gt.astype(jnp.int32).reshape(-1)
  pred = pred.astype(jnp.int32).reshape(-1)
  valid = gt < num_classes
  idx = jnp.where(valid, gt * num_classes + jnp.clip(pred, 0, num_classes - 1), 0)
  counts = jnp.bincount(idx, weights=valid.astype(jnp.int32), length=num_classes ** 2)
  return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def _missing(name: str, attr: str) -> bool:
  try:
    return not hasattr(importlib.import_module(name), attr)
  except ImportError:
    return True


# The name under which TinySeg is registered in the real model registry.
TEST_MODEL = "test_tiny"


def install() -> None:
  """Registers fakes for whichever of models / metrics / get_source is not importable, and
  TinySeg as model `test_tiny` (fast end-to-end loop tests whose subject is not the model)."""
  if not _missing("sesam_jax.models", "MODELS"):
    from sesam_jax import models
    models.MODELS.setdefault(TEST_MODEL, lambda num_classes, dtype, **kw: TinySeg(num_classes,
                                                                                  dtype))
  if _missing("sesam_jax.models", "create_model"):
    m = types.ModuleType("sesam_jax.models")
    m.create_model = lambda name, num_classes, *, dtype=jnp.float32: TinySeg(num_classes, dtype)
    m.normalize_images = _normalize_images
    sys.modules["sesam_jax.models"] = m
  if _missing("sesam_jax.evaluate.metrics", "confusion_matrix"):
    m = types.ModuleType("sesam_jax.evaluate.metrics")
    m.confusion_matrix = jax.jit(_confusion_matrix, static_argnums=2)
    sys.modules["sesam_jax.evaluate.metrics"] = m
  import sesam_jax.data as data
  if not hasattr(data, "get_source"):
    def get_source(name, *, data_dir=None, split="train", **kw):
      assert name == "synthetic", name
      return FakeSynthetic(split=split, **kw)
    data.get_source = get_source
