"""Per-image label maps kept compressed in host memory: the SAM label bank's storage.

A SeSAM run keeps, for every training image, its latest SAM label and the teacher's extension
at full resolution. Raw, Cityscapes' 2,975 training images at 1024x2048 are 2 MiB per map, 12 GiB
for both; label maps are mostly large flat regions, so `PackedLabels` keeps each one
zlib-compressed (level 1: ~3 ms to pack and ~5 ms to unpack a 1024x2048 map on this CPU, 30 to
60x smaller than raw for a Cityscapes label; `sesam bench --what bank` measures it). It is a
`MutableMapping[int, np.ndarray]`: reading a key unpacks a fresh array, writing packs it, so the
bank's code reads as if it held arrays.

`to_bytes` / `from_bytes` write and read many stores as one buffer of the packed bytes as they
are (nothing is compressed again), which is what keeps the bank's checkpoint item fast.
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Iterator, Mapping, MutableMapping

import numpy as np

LEVEL = 1  # zlib level: the fastest; higher levels pack ~2x smaller at ~8x the time.


class PackedLabels(MutableMapping):
  """index -> HxW uint8 label map, each stored zlib-compressed.

  Args:
    level: zlib compression level (1 fastest ... 9 smallest).
  """

  def __init__(self, level: int = LEVEL) -> None:
    self.level = int(level)
    self._packed: dict[int, tuple[bytes, tuple[int, int]]] = {}

  def __getitem__(self, index: int) -> np.ndarray:
    data, hw = self._packed[int(index)]
    return np.frombuffer(zlib.decompress(data), np.uint8).reshape(hw).copy()

  def __setitem__(self, index: int, label: np.ndarray) -> None:
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
      raise ValueError(f"PackedLabels holds HxW uint8 maps, got {label.shape} {label.dtype}")
    self._packed[int(index)] = (zlib.compress(np.ascontiguousarray(label).data, self.level),
                                label.shape)

  def __delitem__(self, index: int) -> None:
    del self._packed[int(index)]

  def __contains__(self, index: object) -> bool:  # Without unpacking (Mapping's would).
    return isinstance(index, (int, np.integer)) and int(index) in self._packed

  def __iter__(self) -> Iterator[int]:
    return iter(self._packed)

  def __len__(self) -> int:
    return len(self._packed)

  def shape(self, index: int) -> tuple[int, int]:
    """(H, W) of a stored map, without unpacking it."""
    return self._packed[int(index)][1]

  @property
  def nbytes(self) -> int:
    """Compressed bytes held (the maps' pixels; Python's per-entry overhead excluded)."""
    return sum(len(data) for data, _ in self._packed.values())


def to_bytes(stores: Mapping[str, PackedLabels], extra: Mapping[str, object] | None = None
             ) -> bytes:
  """Several named stores (and a JSON-able `extra`) as one .npz buffer of their packed bytes.

  Layout: "index" (N int64), "store" (N int32, position in the sorted names), "hw" (Nx2 int32),
  "offsets" (N+1 int64) into "blob" (uint8, the packed maps back to back), "meta" (uint8 JSON:
  {"stores": names, "extra": extra}).
  """
  names = sorted(stores)
  rows, parts = [], []
  for s, name in enumerate(names):
    for index, (data, hw) in stores[name]._packed.items():
      rows.append((index, s, hw[0], hw[1]))
      parts.append(data)
  table = np.asarray(rows, np.int64).reshape(-1, 4)
  offsets = np.zeros(len(parts) + 1, np.int64)
  np.cumsum([len(p) for p in parts], out=offsets[1:])
  meta = json.dumps({"stores": names, "extra": dict(extra or {})}).encode()
  buffer = io.BytesIO()
  np.savez(buffer, index=table[:, 0], store=table[:, 1].astype(np.int32),
           hw=table[:, 2:].astype(np.int32), offsets=offsets,
           blob=np.frombuffer(b"".join(parts), np.uint8), meta=np.frombuffer(meta, np.uint8))
  return buffer.getvalue()


def from_bytes(data: bytes, stores: Mapping[str, PackedLabels]) -> dict:
  """Fills `stores` (by name) from `to_bytes` output; returns its `extra`."""
  with np.load(io.BytesIO(data), allow_pickle=False) as npz:
    meta = json.loads(npz["meta"].tobytes())
    blob, offsets = npz["blob"].tobytes(), npz["offsets"]
    for i, (index, s, hw) in enumerate(zip(npz["index"], npz["store"], npz["hw"])):
      name = meta["stores"][int(s)]
      if name in stores:
        stores[name]._packed[int(index)] = (blob[offsets[i]:offsets[i + 1]],
                                            (int(hw[0]), int(hw[1])))
  return meta["extra"]


def is_packed_buffer(data: bytes) -> bool:
  """Whether `data` was written by `to_bytes` (older bank checkpoints hold raw arrays)."""
  with np.load(io.BytesIO(data), allow_pickle=False) as npz:
    return "blob" in npz.files and "meta" in npz.files
