"""A whole split checked before a command works on it: every bad file at once, the verdict cached.

`check_split(source)` reads every example of a file-based source as far as a check needs (the
label whole: decodability, class values, size; the image only as far as its header and PNG
checksums, see `PairedFileSource.check_item`) and returns one `Problem` per bad example, so a
user fixes four bad files in one go instead of meeting them one run at a time.
`require_clean(source, ...)` raises the list (up to 20 lines, then a count) before anything is
written. A clean verdict is cached in the user's cache directory (`$XDG_CACHE_HOME/sesam_jax`, by
default `~/.cache/sesam_jax`), keyed by the dataset's name and every file's path, size and
modification time: training checks a split once, not at every run; any change to a file checks
it again. Sources that are not files (`synthetic`, tfds) have nothing to check.

Measured on CamVid train (367 images 480x360 and their labels, one core of this shared 2-core
machine): 1.2 s for the check vs 7 s to decode every example; a cached verdict costs the stat of
each file (~10 ms).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any

from sesam_jax import report
from sesam_jax.data import base
from sesam_jax.data.weak_sources import Problem, format_problems

CHECKED = (base.UnreadableFileError, FileNotFoundError, ValueError)  # what a bad example raises


def cache_dir() -> pathlib.Path:
  """The user's cache directory for sesam_jax ($XDG_CACHE_HOME/sesam_jax or ~/.cache/sesam_jax)."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(root) / "sesam_jax"


def file_examples(source: Any) -> tuple[base.PairedFileSource, list[int]] | None:
  """(the file source under `source`, the positions `source` reads), or None if not files.

  Unwraps `SubsetSource` (a `max_train_images` subset, `eval.max_images`) and `SkipUnreadable`.
  """
  indices: list[int] | None = None
  for _ in range(8):
    if isinstance(source, base.PairedFileSource):
      return source, list(range(len(source))) if indices is None else indices
    if isinstance(source, base.SubsetSource):
      indices = [source.indices[i] for i in (indices if indices is not None
                                             else range(len(source)))]
    elif not isinstance(source, base.SkipUnreadable):
      return None
    source = source.source
  return None


def check_split(source: Any, *, limit: int | None = None, desc: str = "checking") -> list[Problem]:
  """Every example of `source` (the first `limit`) that cannot be read, in order.

  Returns:
    One `Problem` per bad example (index in `source`, id, the error's line); [] for sources that
    are not files.
  """
  found = file_examples(source)
  if found is None:
    return []
  files, indices = found
  indices = indices[:limit] if limit is not None else indices
  problems = []
  for position, index in enumerate(report.progress(indices, desc=desc, unit="img")):
    try:
      files.check_item(index)
    except CHECKED as e:
      problems.append(Problem(position, files.ids[index], str(e)))
  return problems


def _verdict_key(files: base.PairedFileSource, indices: Sequence[int]) -> str | None:
  """A digest of the dataset's name and each file's path, size and mtime; None if one is missing."""
  h = hashlib.blake2b(digest_size=16)
  h.update(files.info.name.encode())
  for i in indices:
    for path in (files.image_paths[i], files.label_paths[i]):
      try:
        st = os.stat(path)
      except OSError:
        return None
      h.update(f"\0{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
  return h.hexdigest()


def find_problems(source: Any, *, what: str, limit: int | None = None,
                  cache: bool = True) -> list[Problem]:
  """`check_split`, skipped when a clean verdict for exactly these files is cached.

  Args:
    source: a dataset source (file sources are checked; others have no problems).
    what: what the examples are, for the progress bar (e.g. "examples of camvid train").
    limit: only the first `limit` examples (a command's --limit).
    cache: keep a clean verdict in `cache_dir()` and trust it while no file changed.

  Returns:
    One `Problem` per bad example.
  """
  found = file_examples(source)
  if found is None:
    return []
  files, indices = found
  indices = indices[:limit] if limit is not None else indices
  key = _verdict_key(files, indices) if cache else None
  verdict = cache_dir() / "split_checks" / f"{key}.json" if key else None
  if verdict is not None and verdict.is_file():
    return []
  start = time.perf_counter()
  problems = check_split(source, limit=limit, desc=f"checking {what}")
  if not problems and verdict is not None:
    try:
      verdict.parent.mkdir(parents=True, exist_ok=True)
      report.write_json(verdict, {"dataset": files.info.name, "examples": len(indices),
                                  "seconds": round(time.perf_counter() - start, 3),
                                  "checked_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    except OSError:
      pass  # A cache that cannot be written only costs the check next time.
  return problems


def require_clean(sources: Sequence[tuple[Any, str]], *, fix: str, limit: int | None = None,
                  cache: bool = True, skip: bool = False,
                  more: Sequence[tuple[Sequence[Problem], str]] = ()) -> None:
  """Checks each (source, what) of `sources` and stops on any bad example, reporting them all.

  Args:
    sources: (dataset source, what its examples are, e.g. "examples of camvid train").
    fix: the message's last line: how to fix it, naming the command's flags.
    limit: only the first `limit` examples of each source.
    cache: see `find_problems`.
    skip: log the problems instead of raising (training with `dataset.skip_unreadable`).
    more: problems found by other checks (a weak-label reader's), reported with these.

  Raises:
    ValueError: every bad file (up to 20 lines per group, then a count), then `fix`.
  """
  groups = [(find_problems(s, what=w, limit=limit, cache=cache), w) for s, w in sources]
  messages = [format_problems(p, w) for p, w in [*groups, *more] if p]
  if not messages:
    return
  if skip:
    report.log("\n".join(messages) + "\n  They are skipped (dataset.skip_unreadable).")
    return
  raise ValueError("\n".join(messages) + f"\n  {fix}")


def check_training_splits(dataset: Any, train: Any, val: Any) -> None:
  """`sesam train`'s check of both splits (`config.dataset`: name, splits, skip_unreadable).

  With `skip_unreadable`, bad training files are only listed (the pipeline skips them); the
  evaluation split must still be whole.
  """
  d = dataset
  fix = ("Fix or remove these files and run again, or pass --config.dataset.skip_unreadable=true "
         "to train without them (the check itself: --config.dataset.check=false).")
  pairs = [(train, f"examples of {d.name} {d.train_split}"),
           (val, f"examples of {d.name} {d.val_split} (evaluation)")]
  if d.skip_unreadable:
    require_clean(pairs[:1], fix=fix, skip=True)
    pairs = pairs[1:]
  require_clean(pairs, fix=fix)
