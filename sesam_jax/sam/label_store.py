"""Per-image label maps kept compressed in host memory: the SAM label bank's storage.

A SeSAM run keeps, for every training image, its latest SAM label and the teacher's extension
at full resolution. Raw, Cityscapes' 2,975 training images at 1024x2048 are 2 MiB per map, 12 GiB
for both; label maps are mostly large flat regions, so `PackedLabels` keeps each one
zlib-compressed (level 1: ~3 ms to pack and ~5 ms to unpack a 1024x2048 map on this CPU, 30 to
60x smaller than raw for a Cityscapes label; `sesam bench --what bank` measures it). It is a
`MutableMapping[int, np.ndarray]`: reading a key unpacks a fresh array, writing packs it, so the
bank's code reads as if it held arrays.

`to_bytes` / `from_bytes` write and read many stores as one buffer of the packed bytes as they
are (nothing is compressed again, and reading keeps views into the buffer instead of copies),
which is what keeps the bank's checkpoint item fast.
"""

from __future__ import annotations

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
    # A snapshot (one C call): the bank's writer thread may add maps meanwhile.
    return sum(len(data) for data, _ in list(self._packed.values()))


MAGIC = b"SESAMLB1"  # First bytes of a `to_bytes` buffer (earlier bank checkpoints: .npz).


def to_bytes(stores: Mapping[str, PackedLabels], extra: Mapping[str, object] | None = None
             ) -> bytes:
  """Several named stores (and a JSON-able `extra`) as one buffer of their packed bytes.

  Layout: `MAGIC`, the header's length (8 bytes, little endian), the header (UTF-8 JSON:
  {"stores": names, "extra": extra, "entries": [[index, store, H, W, offset, length], ...]}),
  then the packed maps back to back (offsets count from the end of the header).
  """
  names = sorted(stores)
  entries, parts, offset = [], [], 0
  for s, name in enumerate(names):
    for index, (data, hw) in list(stores[name]._packed.items()):  # A snapshot: one C call.
      entries.append([int(index), s, int(hw[0]), int(hw[1]), offset, len(data)])
      parts.append(data)
      offset += len(data)
  header = json.dumps({"stores": names, "extra": dict(extra or {}), "entries": entries}).encode()
  return b"".join([MAGIC, len(header).to_bytes(8, "little"), header, *parts])


def from_bytes(data: bytes, stores: Mapping[str, PackedLabels]) -> dict:
  """Fills `stores` (by name) from `to_bytes` output, without copying; returns its `extra`.

  The stores keep views into `data` (it stays in memory until every map read from it has been
  replaced): restoring a Cityscapes-sized bank reads nothing twice.
  """
  if not is_packed_buffer(data):
    raise ValueError("not a packed label buffer (label_store.to_bytes)")
  view = memoryview(data)
  size = int.from_bytes(view[len(MAGIC):len(MAGIC) + 8], "little")
  start = len(MAGIC) + 8
  header = json.loads(bytes(view[start:start + size]))
  blob = view[start + size:]
  for index, s, h, w, offset, length in header["entries"]:
    name = header["stores"][s]
    if name in stores:
      stores[name]._packed[index] = (blob[offset:offset + length], (h, w))
  return header["extra"]


def is_packed_buffer(data: bytes) -> bool:
  """Whether `data` was written by `to_bytes` (older bank checkpoints hold raw arrays)."""
  return bytes(data[:len(MAGIC)]) == MAGIC
