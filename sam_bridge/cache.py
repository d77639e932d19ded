"""Per-image encoder state, computed once and reused on every later refresh.

SeSAM refreshes each training image's SAM label every few visits; the image never
changes, only the prompts do (they come from the weak label extended by the
teacher's confident pseudo-labels). So the expensive part of a backend, encoding
the image (SAM's ViT; the superpixel segmentations; the oracle's component
tables), is done once per image and its state kept here:

  - in host memory, least recently used first out, bounded by `max_bytes`;
  - optionally on disk (`directory`): one .npz per entry, written atomically
    (temporary name, then os.replace), so a restarted worker (or the next run)
    reads it back instead of encoding again.

Keys are strings made by `cache_key(example_id, backend_name, working_hw, digest)`;
the digest of the working-resolution image (and fine label, for the oracle) is
part of the key, so a different image under the same id (e.g. an augmented crop
sent by mistake) misses instead of reusing a wrong embedding.

A state is a flat `dict[str, np.ndarray]` (see `Backend.image_state`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import pathlib
import re
import sys
import tempfile
import time

import numpy as np

_ENCODE_S = "__encode_s__"  # Stored beside the state: the encoder seconds a hit saves.


@dataclasses.dataclass(frozen=True)
class CacheConfig:
  """Where and how much encoder state to keep (picklable: the service's worker builds the cache).

  Attributes:
    max_bytes: bound of the in-memory LRU (default 4 GiB: ~1000 SAM ViT embeddings
      of 4 MiB each, all of CamVid train three times over).
    directory: optional folder for the on-disk copy (survives a worker restart).
  """
  max_bytes: int = 4 << 30
  directory: str | None = None


def image_digest(*arrays: np.ndarray | None) -> str:
  """16 hex digits of blake2b over the arrays' shapes and bytes (None skipped)."""
  h = hashlib.blake2b(digest_size=8)
  for a in arrays:
    if a is None:
      continue
    a = np.ascontiguousarray(a)
    h.update(f"{a.shape}{a.dtype.str}".encode())
    h.update(a.data)
  return h.hexdigest()


def cache_key(example_id: str, backend_name: str, working_hw: tuple[int, int], digest: str = "") -> str:
  """The cache key of one image: id, backend, working size and content digest."""
  return f"{example_id}|{backend_name}|{working_hw[0]}x{working_hw[1]}|{digest}"


def state_nbytes(state: dict[str, np.ndarray]) -> int:
  return int(sum(np.asarray(v).nbytes for v in state.values()))


class EmbeddingCache:
  """An LRU of per-image backend states in memory, optionally mirrored on disk.

  Args:
    max_bytes: the in-memory bound; the least recently used entries leave first.
      A state larger than the bound is kept on disk only (if there is a directory).
    directory: folder for .npz copies (created if missing), or None.

  Attributes:
    stats: counters: hits (memory + disk), disk_hits, misses, puts, evictions,
      encode_s_saved (encoder seconds the hits did not spend), load_s (disk reads).
  """

  def __init__(self, max_bytes: int = 4 << 30, directory: str | os.PathLike | None = None):
    if max_bytes < 0:
      raise ValueError(f"cache max_bytes must be >= 0, got {max_bytes}")
    self.max_bytes = int(max_bytes)
    self.directory = None if directory is None else pathlib.Path(directory)
    if self.directory is not None:
      self.directory.mkdir(parents=True, exist_ok=True)
    self._mem: collections.OrderedDict[str, tuple[dict[str, np.ndarray], float, int]] = collections.OrderedDict()
    self.nbytes = 0
    self.stats = {"hits": 0, "disk_hits": 0, "misses": 0, "puts": 0, "evictions": 0,
                  "encode_s_saved": 0.0, "load_s": 0.0}

  @classmethod
  def from_config(cls, config: CacheConfig) -> "EmbeddingCache":
    return cls(config.max_bytes, config.directory)

  def __len__(self) -> int:
    return len(self._mem)

  def __contains__(self, key: str) -> bool:
    return key in self._mem or (self._path(key) is not None and self._path(key).exists())

  def _path(self, key: str) -> pathlib.Path | None:
    if self.directory is None:
      return None
    # Readable prefix (the example id) + a hash of the whole key: unique and filesystem-safe.
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", key.split("|", 1)[0])[:80]
    return self.directory / f"{stem}-{hashlib.blake2b(key.encode(), digest_size=10).hexdigest()}.npz"

  def get(self, key: str) -> tuple[dict[str, np.ndarray], str] | None:
    """The state stored under `key` and where it came from ("memory" or "disk"), or None."""
    entry = self._mem.get(key)
    if entry is not None:
      self._mem.move_to_end(key)
      self.stats["hits"] += 1
      self.stats["encode_s_saved"] += entry[1]
      return entry[0], "memory"
    path = self._path(key)
    if path is not None and path.exists():
      t0 = time.perf_counter()
      try:
        with np.load(path, allow_pickle=False) as npz:
          state = {k: npz[k] for k in npz.files}
      except (OSError, ValueError, EOFError) as e:  # Truncated/corrupt: encode again, rewrite it.
        print(f"sam_bridge cache: ignoring unreadable {path} ({e}); it will be rewritten",
              file=sys.stderr)
        state = None
      if state is not None and state.get("__key__") is not None and str(state["__key__"]) == key:
        self.stats["load_s"] += time.perf_counter() - t0
        encode_s = float(state.pop(_ENCODE_S, 0.0))
        state.pop("__key__")
        self._remember(key, state, encode_s)
        self.stats["hits"] += 1
        self.stats["disk_hits"] += 1
        self.stats["encode_s_saved"] += encode_s
        return state, "disk"
    self.stats["misses"] += 1
    return None

  def put(self, key: str, state: dict[str, np.ndarray], encode_s: float = 0.0) -> None:
    """Stores `state` (flat dict of arrays) under `key`; `encode_s` = what computing it cost."""
    state = {k: np.asarray(v) for k, v in state.items()}
    for k, v in state.items():
      if k.startswith("__") or v.dtype == object:
        raise ValueError(f"cache state entry {k!r} ({v.dtype}): keys must not start with '__' "
                         "and values must be numeric/bool arrays")
    self.stats["puts"] += 1
    self._remember(key, state, float(encode_s))
    path = self._path(key)
    if path is not None:
      fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=self.directory)
      try:
        with os.fdopen(fd, "wb") as f:
          np.savez(f, **state, **{_ENCODE_S: np.float64(encode_s), "__key__": np.str_(key)})
        os.replace(tmp, path)
      except BaseException:
        if os.path.exists(tmp):
          os.unlink(tmp)
        raise

  def _remember(self, key: str, state: dict[str, np.ndarray], encode_s: float) -> None:
    if key in self._mem:
      self.nbytes -= self._mem.pop(key)[2]
    size = state_nbytes(state)
    if size > self.max_bytes:
      return  # Larger than the whole bound: disk only.
    self._mem[key] = (state, encode_s, size)
    self.nbytes += size
    while self.nbytes > self.max_bytes:
      _, (_, _, old) = self._mem.popitem(last=False)
      self.nbytes -= old
      self.stats["evictions"] += 1

  def summary(self) -> dict:
    """Counters plus entries and bytes in memory (for RefineResult.info and logs)."""
    return {**self.stats, "entries": len(self._mem), "bytes": self.nbytes}
