"""Shared test set-up: 4 fake CPU devices so sharding is exercised, the real data samples in
../shared/data (never copied here; tests that need them skip without them), and the tiny run."""

import os
import pathlib
from typing import Any, NamedTuple

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """../shared/data beside the checkout; without it the test skips (fails under
  SESAM_REQUIRE_TEST_DATA=1, as in CI): `fakes.require_shared_data`."""
  from tests import fakes
  return fakes.require_shared_data()


@pytest.fixture(scope="session", autouse=True)
def hermetic_caches(tmp_path_factory):
  """XDG_CACHE_HOME in a temporary folder for the session: runs and benchmarks with the default
  `compile_cache_dir=auto` (`sesam_jax/run/compile_cache.py`) and the split checks' verdicts
  never write into the user's ~/.cache (nor read a JAX_COMPILATION_CACHE_DIR of theirs);
  subprocesses inherit it."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
    mp.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    yield


@pytest.fixture(scope="session", autouse=True)
def test_model():
  """TinySeg (tests/fakes.py) as model `fakes.TEST_MODEL` for the session, then removed."""
  from sesam_jax import models
  from tests import fakes
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(models.MODELS, fakes.TEST_MODEL, fakes._tiny_seg)
    yield fakes.TEST_MODEL


class TinyRun(NamedTuple):
  workdir: pathlib.Path
  config: Any  # the ConfigDict trained with
  flags: list  # `--config=... --config.x=...` flags that rebuild it (for `sesam eval`)
  result: dict  # train_and_evaluate's summary (also <workdir>/result.json)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, shared_data, test_model) -> TinyRun:
  """A finished tiny run, trained once per session on first use: TinySeg on CamVid
  (`fakes.TINY_CONFIG`), 4 steps with checkpoints and evaluations at 2 and 4, on 3 val images.

  Its workdir holds checkpoints, metrics.jsonl, result.json and config.json; tests must not
  write into it.
  """
  from sesam_jax import config_lib
  from sesam_jax import loop
  from tests import fakes
  config = config_lib.config_from_flags(fakes.TINY_CONFIG, fakes.TINY_OVERRIDES)
  workdir = tmp_path_factory.mktemp("tiny_run") / "run"
  result = loop.train_and_evaluate(config, str(workdir))
  return TinyRun(workdir, config, [f"--config={fakes.TINY_CONFIG}", *fakes.TINY_OVERRIDES],
                 result)
