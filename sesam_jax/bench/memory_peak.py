"""What is live at a compiled step's memory peak (`sesam bench --what memory --explain N`), read
from XLA's own dump of the optimized module."""

from __future__ import annotations

import collections
import glob
import os
import re

GIB = 2 ** 30

def peak_buffers_from_dump(dump_dir: str) -> collections.Counter:
  """The buffers live at the compiled step's peak, summed by the JAX operation that made them.

  Reads XLA's dump of the optimized module: `*after_optimizations-live-range.txt` lists the
  buffers live at the simulated peak ("Live ranges at T (peak)"), and the optimized HLO text
  gives each buffer's defining instruction with its `op_name` (e.g.
  "jit(sesam_train_step)/jvp(SegFormer)/encoder/..."). Parameters are the state and batch.

  Args:
    dump_dir: the folder given as `xla_dump_to`.

  Returns:
    {op_name: bytes}; empty when the dump has no live-range file (older XLA).
  """
  ranges = sorted(glob.glob(os.path.join(dump_dir, "*after_optimizations-live-range.txt")))
  if not ranges:
    return collections.Counter()
  path = max(ranges, key=os.path.getsize)  # The step's module (not small helper jits).
  hlo_path = path.replace("-live-range.txt", ".txt")
  op_names: dict[str, str] = {}
  if os.path.exists(hlo_path):
    with open(hlo_path) as f:
      for line in f:
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"", line)
        if m:
          op_names.setdefault(m.group(1), m.group(2))
  sizes: collections.Counter = collections.Counter()
  in_peak = False
  with open(path) as f:
    for line in f:
      if "(peak):" in line:
        in_peak = True
        continue
      if in_peak:
        m = re.match(r"\s*([\w.\-]+)\{[^}]*\}: (\d+) bytes", line)
        if not m:
          break
        name = m.group(1)
        op = op_names.get(name, "parameter (state and batch)" if name.startswith(("Arg_", "param"))
                          else name)
        op = re.sub(r"^jit\([^)]*\)/", "", op)  # Every name starts with the jit's own.
        sizes[op] += int(m.group(2))
  return sizes


def top(sizes: collections.Counter, top: int, depth: int | None = None) -> dict[str, float]:
  """The `top` largest entries in GiB; with `depth`, op names cut to their first `depth` parts."""
  if depth is not None:
    cut: collections.Counter = collections.Counter()
    for op, b in sizes.items():
      cut["/".join(op.split("/")[:depth])] += b
    sizes = cut
  return {op: float(f"{b / GIB:.4g}") for op, b in sizes.most_common(top)}
