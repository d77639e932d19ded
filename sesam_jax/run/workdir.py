"""The run directory a training owns: one training at a time, storage checked before step 0,
nothing left behind by a run that stopped before it trained anything.

`RunDir(workdir)` wraps `loop.train`:

  - it creates the workdir (a path it cannot create is named with the fix: --workdir);
  - it takes `<workdir>/train.lock`, an flock held for the whole run with the holder's pid, host
    and start time inside: a second training in the same workdir stops at once, naming the first
    one's pid. The kernel drops the flock when its process dies, so the lock of a killed run is
    free and is taken over (said in one line);
  - it checks that `checkpoints/` can be created and written (a probe file), and with
    `check_space(state_bytes)`, before the first step, that its disk has room for a checkpoint
    (`margin` x the train state's bytes); otherwise one line naming the folder and the fix
    (exit code 2);
  - on the way out it releases the lock; if the run failed before it trained anything (no
    checkpoint, no metrics), it removes what the run created (the whole workdir when the run
    created it) and says so.
Only process 0 locks and cleans up: the workdir is shared by every process of a multi-host run.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import shutil
import socket
import time
from typing import Any

from sesam_jax import report
from sesam_jax.run.layout import Layout


class StorageError(report.UserError):
  """The workdir or its checkpoint folder cannot be created, written, or has no room."""


class WorkdirBusy(report.UserError):
  """Another training holds the workdir's lock."""


def human_bytes(n: float) -> str:
  """1536 -> '1.5 KiB'."""
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} TiB"


def _reason(error: OSError) -> str:
  return error.strerror or str(error)


def _start_ticks(pid: int) -> int | None:
  """When process `pid` started (clock ticks since boot, /proc/<pid>/stat), None if unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return int(f.read().rpartition(")")[2].split()[19])
  except (OSError, ValueError, IndexError):
    return None


def _holder_alive(holder: dict[str, Any]) -> bool:
  """Whether the process a lock file names still runs (same host, same pid and start time)."""
  if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
    return False
  ticks = _start_ticks(holder["pid"])
  return ticks is not None and ticks == holder.get("start_ticks", ticks)


class RunDir:
  """The workdir of one training run (see the module docstring).

  Args:
    workdir: the run directory (`--workdir`).
    primary: whether this process locks and cleans up (process 0).
  """

  def __init__(self, workdir: str | os.PathLike, *, primary: bool = True) -> None:
    self.layout = Layout.of(workdir)
    self.path = self.layout.root
    self.primary = primary
    self.existed = self.path.is_dir()
    self.before: set[str] = set(os.listdir(self.path)) if self.existed else set()
    self._lock_fd: int | None = None

  @property
  def checkpoints(self) -> pathlib.Path:
    return self.layout.checkpoints

  # --- lifecycle -------------------------------------------------------------

  def __enter__(self) -> "RunDir":
    if self.path.exists() and not self.path.is_dir():
      raise StorageError(f"--workdir {self.path} is a file; give a folder (it is created if "
                         "missing).")
    if not self.primary:
      return self
    try:
      self.path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise StorageError(f"cannot create the workdir {self.path} ({_reason(e)}); give a "
                         "--workdir you can write to.") from None
    try:
      self._lock()
      self._check_writable()
    except BaseException:
      self._unlock()
      self._clean_up()
      raise
    return self

  def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
    if not self.primary:
      return
    self._unlock()
    if exc_type is not None:
      self._clean_up()  # Only if nothing was trained (a stop at a step boundary checkpointed).

  # --- the lock --------------------------------------------------------------

  def _lock(self) -> None:
    path = self.layout.lock
    for _ in range(5):
      try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as e:
        raise StorageError(f"cannot write in the workdir {self.path} ({_reason(e)}); make it "
                           "writable or give another --workdir.") from None
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise WorkdirBusy(self._busy_message(holder)) from None
      except OSError:  # A file system without locks: go on, unguarded.
        report.log(f"note: {path} cannot be locked on this file system; make sure no other "
                   "training uses this workdir.")
      try:
        same = os.fstat(fd).st_ino == os.stat(path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)  # The previous holder removed the file while we opened it: again.
    else:
      raise WorkdirBusy(f"could not take {path}: other processes keep replacing it; give "
                        "another --workdir.")
    holder = _read_holder(fd)
    if holder and holder.get("pid") != os.getpid():
      if _holder_alive(holder):  # flock granted while its holder runs: locks do not work here.
        os.close(fd)
        raise WorkdirBusy(self._busy_message(holder))
      report.log(f"taking over {path} from pid {holder.get('pid')}, which is no longer running")
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": _start_ticks(
        os.getpid()), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(mine) + "\n").encode(), 0)
    self._lock_fd = fd

  def _busy_message(self, holder: dict[str, Any]) -> str:
    who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
           if holder else "another process")
    return (f"another training ({who}) is running in {self.path}; wait for it to finish or stop "
            f"it, or give another --workdir (if no training runs there, delete "
            f"{self.layout.lock}).")

  def _unlock(self) -> None:
    if self._lock_fd is None:
      return
    try:
      os.unlink(self.layout.lock)  # While still held: a waiting process re-checks the inode.
    except OSError:
      pass
    os.close(self._lock_fd)
    self._lock_fd = None

  # --- storage -----------------------------------------------------------------

  def _check_writable(self) -> None:
    """`<workdir>/checkpoints` exists (created) and takes a file; else StorageError."""
    folder = self.checkpoints
    if folder.exists() and not folder.is_dir():
      raise StorageError(f"{folder} is a file, where the checkpoint folder should be; move it "
                         "away or give another --workdir.")
    try:
      folder.mkdir(exist_ok=True)
    except OSError as e:
      raise StorageError(f"cannot create the checkpoint folder {folder} ({_reason(e)}); give a "
                         "--workdir you can write to.") from None
    probe = folder / f".write-test-{os.getpid()}"
    try:
      with open(probe, "wb") as f:
        f.write(b"\0" * 4096)
        f.flush()
        os.fsync(f.fileno())
    except OSError as e:
      raise StorageError(f"cannot write in the checkpoint folder {folder} ({_reason(e)}); make it "
                         "writable or give another --workdir.") from None
    finally:
      try:
        probe.unlink(missing_ok=True)
      except OSError:
        pass

  def check_space(self, state_bytes: int, *, margin: float = 2.0) -> None:
    """Stops before step 0 unless the checkpoint folder's disk has room for a checkpoint.

    Args:
      state_bytes: bytes of the train state (student, teacher, optimizer) a checkpoint holds.
      margin: room asked for, in train states (orbax writes the new checkpoint before it deletes
        the oldest; the data position, SAM bank and metadata add a little).

    Raises:
      StorageError: one line naming the folder, the room there and the room needed.
    """
    if not self.primary:
      return
    folder = self.checkpoints
    free = shutil.disk_usage(folder).free
    need = int(margin * state_bytes)
    if free < need:
      raise StorageError(
          f"the checkpoint folder {folder} has {human_bytes(free)} free but a checkpoint needs "
          f"about {human_bytes(need)} ({margin:g} x the {human_bytes(state_bytes)} train state); "
          "free space there or give a --workdir on a larger disk.")

  # --- clean-up ----------------------------------------------------------------

  def trained(self) -> bool:
    """Whether anything of value was written: a checkpoint or metrics."""
    steps = self.checkpoints.is_dir() and any(p.name.isdigit() for p in self.checkpoints.iterdir())
    metrics = self.layout.metrics
    return steps or (metrics.is_file() and metrics.stat().st_size > 0)

  def _clean_up(self) -> None:
    """After a failure before any training: removes what this run created, and says so."""
    try:
      if not self.path.is_dir() or self.trained():
        return
      if not self.existed:
        shutil.rmtree(self.path)
        report.log(f"removed {self.path}: this run created it and stopped before training")
        return
      new = sorted(set(os.listdir(self.path)) - self.before)
      for name in new:
        target = self.path / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
      if new:
        report.log(f"removed what this run created in {self.path} before it stopped: "
                   f"{', '.join(new)}")
    except OSError as e:
      report.log(f"could not remove the partial files of this run from {self.path} "
                 f"({_reason(e)})")


def _read_holder(fd: int) -> dict[str, Any]:
  """The JSON a lock file holds ({} if empty or unreadable)."""
  try:
    data = os.pread(fd, 4096, 0)
    return json.loads(data) if data.strip() else {}
  except (OSError, ValueError):
    return {}
