"""JAX's persistent compilation cache (`sesam_jax.run.compile_cache`): the folder a setting
names, the JAX options `enable` sets, and compile seconds measured ahead of time."""

import pathlib

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from sesam_jax import configs_common
from sesam_jax.run import compile_cache

OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture
def jax_options():
  """JAX's cache options as they were before the test, restored (and its cache closed) after."""
  old = {name: getattr(jax.config, name) for name in OPTIONS}
  yield
  jax_cache.reset_cache()
  for name, value in old.items():
    jax.config.update(name, value)


def test_auto_is_under_xdg_cache_home_or_home(tmp_path):
  xdg = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
  assert compile_cache.resolve_dir("auto", xdg) == str(tmp_path / "xdg" / "sesam" / "jax")
  home = {"HOME": str(tmp_path / "home")}
  expected = str(tmp_path / "home" / ".cache" / "sesam" / "jax")
  assert compile_cache.resolve_dir("auto", home) == expected
  assert compile_cache.resolve_dir("", {**home, "XDG_CACHE_HOME": ""}) == expected
  assert compile_cache.resolve_dir(None, home) == expected
  # JAX's own variable, when the user set it, wins over the default folder.
  jax_dir = {**xdg, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine")}
  assert compile_cache.resolve_dir("auto", jax_dir) == str(tmp_path / "mine")


def test_none_turns_it_off_and_a_folder_is_taken_as_given(tmp_path):
  env = {"HOME": str(tmp_path), "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine")}
  assert compile_cache.resolve_dir("none", env) is None
  assert compile_cache.resolve_dir(" None ", env) is None
  assert compile_cache.resolve_dir(str(tmp_path / "c"), env) == str(tmp_path / "c")
  assert compile_cache.resolve_dir("~/c", env) == str(pathlib.Path("~/c").expanduser())


def test_the_config_default_is_resolved_at_run_time():
  assert configs_common.base_config().compile_cache_dir == compile_cache.AUTO


def test_enable_sets_jax_options_and_the_cache_is_written(tmp_path, jax_options):
  path = compile_cache.enable(str(tmp_path / "cache"), log=False)
  assert path == str(tmp_path / "cache")
  assert jax.config.jax_compilation_cache_dir == path
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
  assert jax.config.jax_persistent_cache_min_entry_size_bytes == 0
  # A fresh function (a new constant), compiled ahead of time, lands in the folder.
  seconds = compile_cache.compile_seconds(jax.jit(lambda x: x * 3.0 + 0.123456), jnp.ones(7))
  assert seconds > 0
  assert any((tmp_path / "cache").iterdir())
  assert compile_cache.current() == path
  assert compile_cache.enable("none", log=False) is None
  assert jax.config.jax_compilation_cache_dir is None and compile_cache.current() == "none"
