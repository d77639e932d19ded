"""Output folders that appear whole or not at all: `staged_folder(out_dir)`.

A command that writes one file per image (`sesam weak-labels`, `sesam refine`) writes them into a
hidden sibling folder `.<name>.partial-<pid>` and moves them into `out_dir` only once every image
is done. A run that stops on the way (bad input, an exception, Ctrl-C) removes that folder and
says so, so `out_dir` never holds a half set of labels that a later command would take for
complete; files already in `out_dir` from earlier runs are left as they were. A partial folder
left by a killed process (SIGKILL) is removed by the next run into the same folder.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
from collections.abc import Iterator

from sesam_jax import report

_PARTIAL = ".partial-"


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # Someone else's process.
  return True


def _remove_stale(parent: pathlib.Path, name: str) -> None:
  """Removes `.<name>.partial-<pid>` folders of processes that no longer run."""
  for stale in parent.glob(f".{name}{_PARTIAL}*"):
    pid = stale.name.rpartition(_PARTIAL)[2]
    if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
      shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(out_dir: str | os.PathLike, *, flag: str = "--out") -> Iterator[pathlib.Path]:
  """A folder to write into; its files land in `out_dir` only if the block finishes.

  Args:
    out_dir: the destination folder (created at the end if missing).
    flag: how the command names `out_dir`, for messages.

  Yields:
    The staging folder (same file system as `out_dir`, so the final moves are renames).

  Raises:
    report.UserError: `out_dir` is a file, or its parent cannot be created or written.
  """
  out = pathlib.Path(out_dir)
  if out.exists() and not out.is_dir():
    raise report.UserError(f"{flag} {out} is a file; give a folder (it is created if missing).")
  stage = out.parent / f".{out.name}{_PARTIAL}{os.getpid()}"
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out.parent, out.name)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
  except OSError as e:
    raise report.UserError(f"cannot write in {out.parent} ({e.strerror or e}); give a {flag} "
                           "folder you can write to.") from None
  try:
    yield stage
  except BaseException:
    made = sum(1 for _ in stage.iterdir()) if stage.is_dir() else 0
    shutil.rmtree(stage, ignore_errors=True)
    report.log(f"nothing was written to {out}: the {made} file(s) made before the stop were "
               "removed.")
    raise
  try:
    if not out.exists():
      os.rename(stage, out)  # One rename: the whole folder appears at once.
      return
    for item in sorted(stage.iterdir()):
      os.replace(item, out / item.name)
    stage.rmdir()
  except OSError as e:
    raise report.UserError(f"cannot move the finished files from {stage} into {out} "
                           f"({e.strerror or e}); they are complete in {stage}.") from None
