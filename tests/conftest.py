"""Shared test set-up: 4 fake CPU devices so sharding is exercised, and the
location of the real data samples in ../shared/data (never copied here)."""

import os
import pathlib

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
