"""Shared test set-up: 4 fake CPU devices so sharding is exercised, and the
location of the real data samples in ../shared/data (never copied here)."""

import os
import pathlib
from typing import Any, NamedTuple

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """../shared/data beside the checkout; CI always has it, so missing is an error."""
  if not SHARED_DATA.is_dir():
    raise FileNotFoundError(
        f"{SHARED_DATA} not found: clone the repository next to the project's shared/ "
        "folder (tests read the real CamVid/Cityscapes/VOC samples from there).")
  return SHARED_DATA


# The shared tiny finished run: SegFormer-tiny trained for 2 steps on CamVid (fine labels), its
# final evaluation on the first 3 val images. Trained once per session, on first use (~40 s).
TINY_RUN_CONFIG = str(REPO_ROOT / "configs" / "segformer_camvid.py") + ":tiny"
TINY_RUN_OVERRIDES = [
    "--config.num_steps=2", "--config.batch_size=4", "--config.crop=32",
    "--config.optim.warmup_steps=1", "--config.log_every=1", "--config.checkpoint_every=2",
    "--config.eval.max_images=3", "--config.eval.batch_size=4"]


class TinyRun(NamedTuple):
  workdir: pathlib.Path
  config: Any  # the ConfigDict trained with
  flags: list  # `--config=... --config.x=...` flags that rebuild it (for `sesam eval`)
  result: dict  # train_and_evaluate's summary


@pytest.fixture(scope="session")
def tiny_camvid_run(tmp_path_factory, shared_data) -> TinyRun:
  """A finished tiny run (checkpoint, config.json, metrics.jsonl), shared by the session."""
  from sesam_jax import config_lib
  from sesam_jax.train import loop
  overrides = TINY_RUN_OVERRIDES + [f"--config.data_dir={shared_data / 'camvid'}"]
  config = config_lib.config_from_flags(TINY_RUN_CONFIG, overrides)
  workdir = tmp_path_factory.mktemp("tiny_camvid_run")
  result = loop.train_and_evaluate(config, str(workdir))
  return TinyRun(workdir, config, [f"--config={TINY_RUN_CONFIG}", *overrides], result)
