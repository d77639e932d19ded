"""Configs from the command line: `--config=file.py:arg` and `--config.a.b=value` overrides.

A config file exposes `get_config(arg: str | None = None) -> ml_collections.ConfigDict`
(big_vision / nanodo style), built from the presets in `sesam_jax.configs_common`. The command
line is parsed by ml_collections' own `config_flags` (the absl flag that big_vision and the flax
examples use): the part after the colon goes to `get_config` unchanged, and every field can be
overridden with `--config.optim.lr=6e-5`, parsed as the type of the field it replaces. Here the
flag lives on a private `absl.flags.FlagValues` per call (the `sesam` command's subcommands stay
argparse), and its errors are turned into one line that names the flag and the fix:

  an unknown field         lists the fields of its group
  a value of the wrong type names the field, its type and its default
  a missing config file    names the path
  an error in get_config   keeps the file's own message
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags


def config_from_flags(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config of `--config=spec` with `overrides` applied: what `sesam train` calls.

  Args:
    spec: the value of `--config`, `path/to/file.py[:arg]` (relative to the working directory).
    overrides: flags such as "--config.optim.lr=6e-5" (also "--config.x value" pairs).

  Returns:
    The ConfigDict (unlocked, so the loop may read absent optional fields with `.get`).

  Raises:
    FileNotFoundError / ValueError: one line naming the flag or file and the fix.
  """
  path = spec.split(":", 1)[0] if ".py:" in spec or spec.endswith(".py") else spec
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} not found (from --config={spec}); give a path "
                            "such as configs/segformer_camvid.py relative to the working directory.")
  for flag in overrides:
    if flag.startswith("-") and not flag.startswith("--config."):
      raise ValueError(f"unknown flag {flag!r}; fields are set as --config.a.b=value.")
  argv = ["sesam", f"--config={spec}", *_integral_ints(spec, overrides)]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config file", flag_values=values,
                                  lock_config=False, sys_argv=argv)
  try:
    rest = values(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    raise ValueError(_one_line(e, spec, overrides)) from None
  if len(rest) > 1:
    raise ValueError(f"unexpected argument {rest[1]!r}; fields are set as --config.a.b=value.")
  return values.config


def _integral_ints(spec: str, overrides: Sequence[str]) -> list[str]:
  """Overrides with integer fields written as floats ("1e3", "2000.0") spelled as integers."""
  out, config = list(overrides), None
  for i, flag in enumerate(out):
    name, eq, value = flag.partition("=")
    if not eq and i + 1 < len(out) and not out[i + 1].startswith("--"):
      value, target = out[i + 1], i + 1  # The "--config.x VALUE" form.
    elif eq:
      target = i
    else:
      continue
    if not re.fullmatch(r"[+-]?\d+(\.0*)?([eE][+]?\d+)?", value.strip()) or value.isdigit():
      continue
    config = config or load_config(spec)
    try:
      like = _lookup(config, name[len("--config."):])
    except (KeyError, AttributeError):
      continue
    if isinstance(like, int) and not isinstance(like, bool) and float(value) == int(float(value)):
      out[target] = f"{name}={int(float(value))}" if eq else str(int(float(value)))
  return out


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of `--config=spec` without overrides."""
  return config_from_flags(spec, [])


def _one_line(error: Exception, spec: str, overrides: Sequence[str]) -> str:
  """config_flags' error as the one line a user needs."""
  text = str(error)
  if isinstance(error, (AttributeError, KeyError)):  # An unknown field or group.
    return _unknown_field(text, spec, overrides)
  match = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)", text, re.S)
  if match:
    name, value, why = match.groups()
    config = load_config(spec)
    like = _lookup(config, name)
    if isinstance(like, ml_collections.ConfigDict):
      return f"--config.{name}: is a config group; set its fields as --config.{name}.FIELD=VALUE."
    if value.startswith("--"):
      return f"--config.{name} has no value; write --config.{name}=VALUE."
    return (f"--config.{name}={value}: cannot read this as a {type(like).__name__} (the type of "
            f"its default {like!r}).")
  if text.startswith("flag --config="):
    # An error raised by the file's get_config: its own message is the traceback's last line.
    last = [line for line in text.splitlines() if line.strip()][-1]
    return re.sub(r"^\w+(Error|Exception): ", "", last)
  return text.splitlines()[0]


def _unknown_field(text: str, spec: str, overrides: Sequence[str]) -> str:
  config = load_config(spec)
  bad = text.strip().splitlines()[0].strip("'\"")
  for flag in overrides:
    name = flag[len("--config."):].split("=", 1)[0]
    *groups, leaf = name.split(".")
    parent = config
    for group in groups:
      if not isinstance(parent, ml_collections.ConfigDict) or group not in parent:
        return f"--config.{name}: {group!r} is not a config group."
      parent = parent[group]
    if isinstance(parent, ml_collections.ConfigDict) and leaf not in parent:
      close = difflib.get_close_matches(leaf, list(parent.keys()), n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      return (f"--config.{name}: no such field{hint}; fields here: "
              f"{', '.join(sorted(parent.keys()))}.")
  return f"--config: no such field {bad!r}."


def _lookup(config: ml_collections.ConfigDict, name: str):
  value = config
  for part in name.split("."):
    value = value[part]
  return value


def override(config: ml_collections.ConfigDict, overrides: Sequence[str]
             ) -> ml_collections.ConfigDict:
  """`config` (e.g. a run's config.json) with `--config.a.b=value` flags applied.

  Raises:
    ValueError: one line naming the flag (an unknown field, a value of the wrong type).
  """
  for flag in overrides:
    if flag.startswith("-") and not flag.startswith("--config."):
      raise ValueError(f"unknown flag {flag!r}; fields are set as --config.a.b=value.")
  argv = ["sesam", *overrides]
  values = flags.FlagValues()
  try:
    config_flags.DEFINE_config_dict("config", ml_collections.ConfigDict(config),
                                    flag_values=values, lock_config=False, sys_argv=argv)
    rest = values(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0].strip("'\"")
    if isinstance(e, (AttributeError, KeyError)):
      first = f"no field {first!r}"
    raise ValueError(f"cannot apply {' '.join(overrides)} to the run's config ({first}); "
                     "fields are set as --config.a.b=value, named as in its config.json.") from None
  if len(rest) > 1:
    raise ValueError(f"unexpected argument {rest[1]!r}; fields are set as --config.a.b=value.")
  return values.config
