"""JAX's persistent compilation cache, and how long a jitted function takes to compile.

`sesam train` (`config.compile_cache_dir`) and `sesam bench` (`--compile-cache-dir`) call
`enable` before they compile anything, so a second run of the same step on the same machine
loads XLA's executable from disk instead of compiling it again. The setting takes three forms:

  auto   (the default) JAX's own JAX_COMPILATION_CACHE_DIR when the environment sets it, else
         `$XDG_CACHE_HOME/sesam/jax`, or `~/.cache/sesam/jax` when XDG_CACHE_HOME is unset;
         resolved when the run starts, so a config never bakes in one user's path (and the
         tests, whose conftest points XDG_CACHE_HOME at a temporary folder, stay hermetic);
  none   the cache off (a JAX_COMPILATION_CACHE_DIR in the environment included);
  DIR    that folder (`~` expanded).

Every executable is cached, however fast it compiled and however small it is (JAX's minimum
compile time and entry size are set to 0): the students' steps are the slow ones, and the many
small functions around them cost a file each. The cache is trusted code: do not point it at a
folder others can write to.

`compile_seconds(jitted, *args)` compiles a jitted function ahead of time for `args` (XLA's
compile, or the load from the cache) and returns the seconds it took; jit's own call cache then
holds the executable, so the first call with those shapes does not compile again.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from sesam_jax import report

AUTO = "auto"
NONE = "none"


def resolve_dir(value: str | None, environ: Mapping[str, str] | None = None) -> str | None:
  """The cache folder a setting names, or None when it turns the cache off.

  Args:
    value: "auto" (or "" / None), "none", or a folder.
    environ: the environment read for XDG_CACHE_HOME and HOME (default `os.environ`).

  Returns:
    An absolute path, or None for "none".
  """
  environ = os.environ if environ is None else environ
  text = (value or AUTO).strip()
  if text.lower() == NONE:
    return None
  if text.lower() == AUTO and environ.get("JAX_COMPILATION_CACHE_DIR"):
    text = environ["JAX_COMPILATION_CACHE_DIR"]
  elif text.lower() == AUTO:
    xdg = environ.get("XDG_CACHE_HOME", "")
    home = environ.get("HOME") or str(pathlib.Path.home())
    base = pathlib.Path(xdg) if xdg else pathlib.Path(home) / ".cache"
    return str((base / "sesam" / "jax").absolute())
  return str(pathlib.Path(text).expanduser().absolute())


def enable(value: str | None, *, log: bool = True) -> str | None:
  """Points JAX's persistent compilation cache at `resolve_dir(value)` (None: turns it off).

  Best called before the process compiles anything; a later call naming another folder closes
  the cache JAX opened (it opens one once, at the first compile that finds a folder set).

  Args:
    value: "auto", "none" or a folder (see the module docstring).
    log: print the folder on stderr.

  Returns:
    The folder used, or None.
  """
  path = resolve_dir(value)
  if path != jax.config.jax_compilation_cache_dir:
    jax_cache.reset_cache()  # JAX keeps the folder it opened first; forget it.
    jax.config.update("jax_compilation_cache_dir", path)
  if path is not None:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  if log:
    report.log(f"compilation cache: {path}" if path else "compilation cache: off")
  return path


def current() -> str:
  """The folder JAX's cache is set to now, or "none": for a config trained inside a process
  whose cache is already chosen (`sesam bench --compile-cache-dir`), so the loop keeps it."""
  return jax.config.jax_compilation_cache_dir or NONE


def compile_seconds(jitted: Any, *args: Any) -> float:
  """Seconds to trace, lower and compile `jitted` for `args` (a load, when the cache holds it).

  Args:
    jitted: a `jax.jit` function.
    *args: its arguments (arrays or `jax.ShapeDtypeStruct`s); donated ones are not consumed.

  Returns:
    Wall seconds; near 0 when this process compiled the same function for the same shapes
    before.
  """
  start = time.perf_counter()
  jitted.lower(*args).compile()
  return time.perf_counter() - start
