"""How every `sesam` subcommand talks to people and scripts.

Two channels: progress bars and human-readable lines go to stderr, and each
command ends by printing exactly one JSON object as the last line of stdout
(`emit`), so `sesam ... | tail -n 1 | python -m json.tool` always works.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np
import tqdm

from sesam_jax.atomic import write_atomic

T = TypeVar("T")


class UserError(Exception):
  """A fault the user can fix outside the code (storage, a busy workdir, a bad checkpoint):
  `sesam` prints its message (one line naming the path or flag and the fix) and exits with 2."""


class Stopped(Exception):
  """A command stopped on request (SIGTERM, Ctrl-C) after saving what a rerun resumes from.

  Attributes:
    exit_code: what `sesam` exits with: 128 + the signal's number (143 SIGTERM, 130 SIGINT), so a
      scheduler sees an interrupted job, not a finished one.
  """

  def __init__(self, message: str, exit_code: int) -> None:
    super().__init__(message)
    self.exit_code = exit_code


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None,
             unit: str = "it", disable: bool | None = None) -> Iterator[T]:
  """A tqdm progress bar on stderr (shows rate and ETA).

  Args:
    iterable: what to iterate over.
    desc: short label shown left of the bar.
    total: number of items when `iterable` has no `len`.
    unit: unit name shown in the rate ("img", "step").
    disable: None hides the bar when stderr is not a terminal and the work is
      short; True/False force it.
  """
  return tqdm.tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.5, disable=disable,
                   leave=False)


def log(message: str) -> None:
  """A human-readable line on stderr (stdout is kept for the final JSON)."""
  print(message, file=sys.stderr, flush=True)


def jsonable(value: Any) -> Any:
  """Turns numpy / jax scalars and arrays into plain JSON values."""
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
    return jsonable(np.asarray(value).tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return None  # JSON has no NaN; null reads as "not defined".
  return value


def emit(result: Mapping[str, Any]) -> None:
  """Prints `result` as one JSON object on the last line of stdout."""
  sys.stdout.flush()
  print(json.dumps(jsonable(result), sort_keys=False), flush=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes `obj` as indented JSON to `path` atomically (`sesam_jax.atomic`)."""
  write_atomic(path, json.dumps(jsonable(obj), indent=2) + "\n")
