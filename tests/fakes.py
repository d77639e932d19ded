"""What tests share: a fast stand-in student, a fake source whose pixels are checkable, the
tiny run's settings, and the one gate in front of the real data in ../shared/data.

`TinySeg` is a two-conv network with the students' interface (stride-4 logits, batch stats,
dropout): loop, resume and evaluation tests are about the machinery, not the network, and it
compiles in seconds. It is registered under `TEST_MODEL` for the whole test session by a fixture
in tests/conftest.py (undone at the end); a child process calls `register_test_model()` itself.
"""

from __future__ import annotations

import json
import os
import pathlib

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TEST_MODEL = "test_tiny"  # The name TinySeg is registered under in sesam_jax.models.MODELS.

# The real CamVid/Cityscapes/VOC/ADE20K samples, beside the checkout (never copied into it).
SHARED_DATA = pathlib.Path(REPO).parent / "shared" / "data"
REQUIRE_DATA_ENV = "SESAM_REQUIRE_TEST_DATA"  # "1": a missing SHARED_DATA fails (CI), not skips.


def require_shared_data() -> pathlib.Path:
  """SHARED_DATA, or the calling test skips (fails where REQUIRE_DATA_ENV=1) saying why.

  Every test that reads the real samples comes through here (tests/conftest.py's `shared_data`
  fixture calls it), so a clone without ../shared/data skips them with one reason, and CI, which
  has the folder, can refuse such skips.
  """
  if SHARED_DATA.is_dir():
    return SHARED_DATA
  message = (f"{SHARED_DATA} not found: the real-image tests need the project's shared/data "
             "folder beside the clone")
  if os.environ.get(REQUIRE_DATA_ENV) == "1":
    pytest.fail(f"{message} ({REQUIRE_DATA_ENV}=1)", pytrace=False)
  pytest.skip(message)


class TinySeg(nn.Module):
  """Stride-4 conv + BN backbone and a 1x1 decode head: B x H/4 x W/4 x K logits."""
  num_classes: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False, return_features=False):
    x = nn.Conv(8, (3, 3), strides=(2, 2), use_bias=False, dtype=self.dtype, name="backbone_conv1")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name="backbone_bn")(x))
    x = nn.Conv(16, (3, 3), strides=(2, 2), dtype=self.dtype, name="backbone_conv2")(x)
    x = nn.Dropout(0.1, deterministic=not train)(nn.relu(x))
    logits = nn.Conv(self.num_classes, (1, 1), name="decode_head")(x).astype(jnp.float32)
    return (logits, x) if return_features else logits  # features: AGMM's (train/agmm.py)


def _tiny_seg(num_classes, dtype, **kw):
  del kw
  return TinySeg(num_classes, dtype)


def register_test_model(models_table=None) -> None:
  """Registers TinySeg as `TEST_MODEL` (in a child process; the test session has a fixture)."""
  if models_table is None:
    from sesam_jax import models
    models_table = models.MODELS
  models_table[TEST_MODEL] = _tiny_seg


class FakeSource:
  """A source whose labels say where each pixel was: checkable geometry, no files.

  label[y, x] = ((y // block) * cols + x // block + shift * i) % modulo, cols = ceil(W / block);
  image channels: (label * 5, (label + i) % 250, i), so the image shows its example and pixel.

  Args:
    n: examples; ids are `id_format.format(i)`.
    hw: (H, W) of every example.
    block: side of the label's blocks.
    shift: added to the labels per example index.
    modulo: labels are taken modulo this (None: no wrap).
    id_format: how ids are made from indices.
  """

  def __init__(self, n=10, hw=(60, 80), *, block=10, shift=0, modulo=None,
               id_format="img{:03d}"):
    self.ids = [id_format.format(i) for i in range(n)]
    self.hw, self.block, self.shift, self.modulo = tuple(hw), block, shift, modulo
    self.info = None

  def __len__(self):
    return len(self.ids)

  def __getitem__(self, i):
    h, w = self.hw
    yy, xx = np.mgrid[:h, :w]
    cols = -(-w // self.block)
    label = (yy // self.block) * cols + xx // self.block + self.shift * i
    if self.modulo:
      label = label % self.modulo
    label = label.astype(np.uint8)
    image = np.stack([label * 5, (label + i) % 250, np.full_like(label, i)], -1).astype(np.uint8)
    return {"id": self.ids[i], "image": image, "label": label}


# The shared tiny run (tests/conftest.py `tiny_run`): TinySeg on CamVid (../shared/data), 4 steps,
# checkpoints and evaluations (with TensorBoard images) at 2 and 4, on the first 3 val images.
# Tests that need a finished workdir use it instead of training again.
TINY_CONFIG = os.path.join(REPO, "configs", "segformer_camvid.py") + ":tiny,cpu"
TINY_OVERRIDES = [
    f"--config.model={TEST_MODEL}", "--config.num_steps=4", "--config.checkpoint_every=2",
    "--config.log_every=2", "--config.crop=32", "--config.batch_size=8",
    "--config.optim.warmup_steps=2", "--config.eval.max_images=3", "--config.eval.batch_size=4",
    "--config.eval_every=2",
    f"--config.data_dir={SHARED_DATA / 'camvid'}"]


# `sesam train` in a child process, for tests that kill, signal or watch a real run:
# `python -c CHILD.format(repo=REPO) train FLAGS...` (TinySeg registered). Switches, by
# environment variable:
#   INDICES=FILE  append each step's batch indices to FILE, one JSON line [step, [index, ...]];
#   REPORT_AT=n   print "CHECKPOINT n" once checkpoint n is committed;
#   STALL=1       then stall there (600 s), for the parent to kill it at a known point.
# At exit it prints "NO TORCH" if torch was never imported by the training process.
CHILD = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
from tests import fakes
fakes.register_test_model()
from sesam_jax.run import checkpoint
from sesam_jax.data import feed
if os.environ.get("INDICES"):
  _next = feed.Feed.next
  def next_(self, step):
    batch = _next(self, step)
    with open(os.environ["INDICES"], "a") as f:
      f.write(json.dumps([step, [int(i) for i in batch["index"]]]) + "\\n")
    return batch
  feed.Feed.next = next_
_save = checkpoint.Checkpointer.save
def save(self, step, state, items=None):
  _save(self, step, state, items)
  if step == int(os.environ.get("REPORT_AT", "-1")):
    self.manager.wait_until_finished()
    print("CHECKPOINT", step, flush=True)
    if os.environ.get("STALL"):
      time.sleep(600)
checkpoint.Checkpointer.save = save
from sesam_jax import main
code = main.main(sys.argv[1:])
if "torch" not in sys.modules:
  print("NO TORCH", flush=True)
sys.exit(code)
"""


def run_cli(capsys, *argv) -> dict:
  """`sesam ARGV` in this process; asserts exit 0 and returns the JSON line it printed last."""
  from sesam_jax import main
  capsys.readouterr()
  code = main.main([str(a) for a in argv])
  captured = capsys.readouterr()
  assert code == 0, captured.err
  return json.loads(captured.out.strip().splitlines()[-1])
