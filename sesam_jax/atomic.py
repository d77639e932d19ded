"""Writing files so that a reader never sees half of one: a temporary name, then a rename.

`write_atomic` for any content; `write_png_atomic` for label maps (with the dataset's palette).

Every file sesam-jax writes for users (labels, predictions, results, converted weights, configs)
goes through `write_atomic`: a crash or a full disk leaves the old file (or none), never a
truncated one, and the temporary file is removed on failure.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import BinaryIO

import numpy as np
from PIL import Image

from sesam_jax.names import IGNORE_INDEX


def _umask() -> int:
  """The process's umask (read once: setting it back and forth is not thread-safe)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


# mkstemp creates files readable by their owner only; a written file gets the mode `open` would
# give it (0o666 less the umask), so that labels and results can be shared like any other file.
_FILE_MODE = 0o666 & ~_umask()


def write_atomic(path: str | os.PathLike, content: bytes | str | Callable[[BinaryIO], None]
                 ) -> None:
  """Writes `content` to `path` through a temporary file in the same folder.

  Args:
    path: destination (its folder must exist).
    content: bytes, text (UTF-8), or a function writing to the open binary file.
  """
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      os.fchmod(f.fileno(), _FILE_MODE)
      if callable(content):
        content(f)
      else:
        f.write(content.encode() if isinstance(content, str) else content)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def write_png_atomic(path: str | os.PathLike, array: np.ndarray,
                     palette: np.ndarray | None = None) -> None:
  """Writes a uint8 HxW (or HxWx3) array as PNG: temp name in the same folder, then rename.

  Args:
    path: destination file.
    array: HxW uint8 (written as 'L', or 'P' with `palette`) or HxWx3 uint8.
    palette: optional Nx3 uint8 colours for the values 0..N-1 of an HxW array.
  """
  image = Image.fromarray(np.ascontiguousarray(array, np.uint8))
  if palette is not None and image.mode == "L":
    full = np.zeros((256, 3), np.uint8)
    full[:len(palette)] = palette
    full[IGNORE_INDEX] = 255  # Unlabeled shows white.
    image = Image.frombytes("P", image.size, np.ascontiguousarray(array, np.uint8).tobytes())
    image.putpalette(full.ravel().tolist())
  write_atomic(path, lambda f: image.save(f, format="PNG"))
