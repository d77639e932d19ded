"""Embedding cache: hits skip the encoder with identical labels, LRU bound, disk copy, service."""

import numpy as np
import pytest

from tests import sam_fakes
from sam_bridge.api import RefineRequest
from sam_bridge.backends import create_backend
from sam_bridge.cache import CacheConfig, EmbeddingCache
from sam_bridge.refine import RefineConfig, refine
from sam_bridge.service import RefineService
from tests.sam_bridge import scenes


class Counting:
  """Wraps a backend and counts its encoder calls (set_image)."""

  def __init__(self, inner):
    self.inner, self.encodes = inner, 0
    self.name, self.is_oracle = inner.name, inner.is_oracle

  def set_image(self, image, *, fine_label=None):
    self.encodes += 1
    self.inner.set_image(image, fine_label=fine_label)

  def __getattr__(self, name):  # predict, predict_lowres, upsample, image_state, ...
    return getattr(self.inner, name)


def _scene(h=60, w=80):
  image, fine = scenes.scene(h, w)
  return image, fine, scenes.coarse(fine, shrink=2)


@pytest.mark.parametrize("spec", ["oracle", "superpixel", "random:tiny"])
def test_cached_refresh_is_identical_and_skips_the_encoder(spec):
  if spec.startswith("random"):
    pytest.importorskip("torch")
  image, fine, weak = _scene()
  backend = Counting(create_backend(spec))
  cache = EmbeddingCache()
  cfg = RefineConfig(cache_embeddings=True)
  req = RefineRequest("img", image, weak, fine=fine)
  first = refine(backend, req, cfg, cache=cache)
  assert backend.encodes == 1 and not first.info["cache"]["hit"]
  # Another image in between, so the backend's current image is not the cached one.
  other = refine(backend, RefineRequest("other", image[::-1].copy(), weak[::-1].copy(),
                                        fine=fine[::-1].copy()), cfg, cache=cache)
  assert backend.encodes == 2 and not other.info["cache"]["hit"]
  second = refine(backend, req, cfg, cache=cache)
  assert backend.encodes == 2, "a cached refresh must not run the encoder"
  info = second.info["cache"]
  assert info["hit"] and info["source"] == "memory" and info["hits"] == 1 and info["misses"] == 2
  assert info["encode_s_saved"] > 0
  np.testing.assert_array_equal(first.label, second.label)
  # A new extension (the teacher's pseudo-labels) reuses the embedding too.
  ext = np.full(weak.shape, 255, np.uint8)
  ext[0:5, 0:80] = 0
  refine(backend, RefineRequest("img", image, weak, extension=ext, fine=fine), cfg, cache=cache)
  assert backend.encodes == 2


def test_cache_off_by_default_and_changed_image_misses():
  image, fine, weak = _scene()
  backend = Counting(create_backend("oracle"))
  cache = EmbeddingCache()
  refine(backend, RefineRequest("img", image, weak, fine=fine), cache=cache)
  refine(backend, RefineRequest("img", image, weak, fine=fine), cache=cache)
  assert backend.encodes == 2 and len(cache) == 0  # Neither config nor request asked for it.
  # An explicit per-request key turns it on.
  refine(backend, RefineRequest("img", image, weak, fine=fine, cache_key="k"), cache=cache)
  refine(backend, RefineRequest("img", image, weak, fine=fine, cache_key="k"), cache=cache)
  assert backend.encodes == 3
  # Same id, different pixels (e.g. an augmented crop): a miss, never a wrong embedding.
  flipped = image[:, ::-1].copy()
  res = refine(backend, RefineRequest("img", flipped, weak, fine=fine, cache_key="k"), cache=cache)
  assert backend.encodes == 4 and not res.info["cache"]["hit"]


def test_lru_bound_is_respected():
  cache = EmbeddingCache(max_bytes=3000)
  for i in range(5):
    cache.put(f"k{i}", {"a": np.zeros(1000, np.uint8)}, encode_s=1.0)
  assert cache.nbytes <= 3000 and len(cache) == 3
  assert cache.get("k0") is None and cache.get("k1") is None
  assert cache.get("k2") is not None  # Now most recently used ...
  cache.put("k5", {"a": np.zeros(1000, np.uint8)})
  assert cache.get("k3") is None and cache.get("k2") is not None  # ... so k3 left, not k2.
  cache.put("huge", {"a": np.zeros(5000, np.uint8)})  # Larger than the bound: not kept.
  assert cache.get("huge") is None and cache.nbytes <= 3000
  assert cache.stats["evictions"] == 3


def test_disk_copy_atomic_and_corrupt_files_miss(tmp_path):
  cache = EmbeddingCache(directory=tmp_path)
  state = {"emb": np.arange(12, dtype=np.float32).reshape(3, 4), "hw": np.array([3, 4])}
  cache.put("id/with:odd|chars", state, encode_s=2.5)
  files = list(tmp_path.iterdir())
  assert len(files) == 1 and files[0].suffix == ".npz" and not files[0].name.startswith(".tmp")
  fresh = EmbeddingCache(directory=tmp_path)
  got, source = fresh.get("id/with:odd|chars")
  assert source == "disk" and fresh.stats["encode_s_saved"] == 2.5
  np.testing.assert_array_equal(got["emb"], state["emb"])
  assert fresh.get("id/with:odd|chars")[1] == "memory"
  files[0].write_bytes(b"not an npz")
  assert EmbeddingCache(directory=tmp_path).get("id/with:odd|chars") is None


def _request(i):
  rng = np.random.default_rng(i)
  image = rng.integers(10, 250, (40, 48, 3), dtype=np.uint8)
  image[0, 0, 0] = 0
  weak = np.full((40, 48), 255, np.uint8)
  weak[5:17, 5:17] = i % 7
  return RefineRequest(f"img{i}", image, weak)


def test_service_cache_hits_and_survives_a_new_worker(tmp_path):
  cfg = CacheConfig(max_bytes=1 << 20, directory=str(tmp_path))
  with RefineService(backend_factory=sam_fakes.make_box_backend, cache=cfg, start_timeout_s=60) as svc:
    first = list(svc.map([_request(0), _request(1)]))
    again = list(svc.map([_request(0)]))
  assert [r.info["cache"]["hit"] for r in first] == [False, False]
  assert again[0].info["cache"]["hit"] and again[0].info["cache"]["source"] == "memory"
  np.testing.assert_array_equal(first[0].label, again[0].label)
  with RefineService(backend_factory=sam_fakes.make_box_backend, cache=cfg, start_timeout_s=60) as svc:
    (res,) = list(svc.map([_request(1)]))
  assert res.info["cache"]["hit"] and res.info["cache"]["source"] == "disk"
  np.testing.assert_array_equal(res.label, first[1].label)


@pytest.mark.parametrize("spec", ["superpixel", "random:tiny"])
def test_backend_state_round_trips_through_disk(tmp_path, spec):
  if spec.startswith("random"):
    pytest.importorskip("torch")
  image, fine, weak = _scene()
  cfg = RefineConfig(cache_embeddings=True)
  req = RefineRequest("img", image, weak)
  first = refine(create_backend(spec), req, cfg, cache=EmbeddingCache(directory=tmp_path))
  backend = Counting(create_backend(spec))  # A fresh backend and cache: as after a restart.
  again = refine(backend, req, cfg, cache=EmbeddingCache(directory=tmp_path))
  assert backend.encodes == 0 and again.info["cache"]["source"] == "disk"
  np.testing.assert_array_equal(first.label, again.label)


def test_decoder_dtype_shares_the_encoder_cache():
  pytest.importorskip("torch")
  image, fine, weak = _scene()
  cache = EmbeddingCache()
  cfg = RefineConfig(cache_embeddings=True)
  fp32 = create_backend("random:tiny")
  bf16 = Counting(create_backend("random:tiny", decoder_dtype="bfloat16"))
  refine(fp32, RefineRequest("img", image, weak), cfg, cache=cache)
  result = refine(bf16, RefineRequest("img", image, weak), cfg, cache=cache)
  assert result.info["cache"]["hit"] and bf16.encodes == 0
  # A bf16 *encoder* computes other embeddings: no hit.
  other = Counting(create_backend("random:tiny", dtype="bfloat16"))
  assert not refine(other, RefineRequest("img", image, weak), cfg, cache=cache).info["cache"]["hit"]
