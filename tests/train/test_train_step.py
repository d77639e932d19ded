"""The jitted step: loss against a numpy reference, optimizer groups, EMA, 4 devices == 1."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sesam_jax import configs_common
from sesam_jax.train import losses, optim, train_state
from sesam_jax.train import train_step as step_lib
from tests import fakes


def _model(num_classes=4):
  """A small conv + batch-norm net: the step's sharding semantics (batch-norm statistics and
  losses over the global batch) without the compile time of a real student."""
  return fakes.TinySeg(num_classes)


def _batch(n=8, size=32, num_classes=4, seed=0):
  rng = np.random.default_rng(seed)
  weak = rng.integers(0, num_classes, (n, size, size)).astype(np.uint8)
  weak[rng.random(weak.shape) < 0.5] = 255  # half the pixels unlabeled
  return {"image": rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8), "weak": weak,
          "label": weak.copy(), "index": np.arange(n, dtype=np.int32)}


def test_cross_entropy_matches_numpy_and_ignores_255():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 8, 8, 5)).astype(np.float32)
  labels = rng.integers(0, 5, (2, 8, 8)).astype(np.uint8)
  labels[0, :4] = 255
  total, count = losses.cross_entropy_sum(jnp.asarray(logits), jnp.asarray(labels))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  keep = labels != 255
  want = -np.take_along_axis(logp, np.where(keep, labels, 0)[..., None], -1)[..., 0][keep].sum()
  np.testing.assert_allclose(float(total), want, rtol=1e-5)
  assert int(count) == keep.sum()


def test_segmentation_loss_upsamples_and_weights_sources():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 4, 4, 3)).astype(np.float32))
  a = jnp.asarray(rng.integers(0, 3, (2, 16, 16)).astype(np.uint8))
  empty = jnp.full((2, 16, 16), 255, jnp.uint8)
  total, m = losses.segmentation_loss(logits, {"weak": losses.LabelSource(a, 1.0),
                                               "sam": losses.LabelSource(a, 0.5),
                                               "pseudo": losses.LabelSource(empty, 0.01)})
  np.testing.assert_allclose(float(total), 1.5 * float(m["loss_weak"]), rtol=1e-6)
  assert float(m["loss_pseudo"]) == 0.0 and float(m["coverage_pseudo"]) == 0.0
  assert float(m["coverage_weak"]) == 1.0
  # Upsampling is PyTorch's bilinear with align_corners=False (half-pixel centres).
  up = losses.upsample_logits(logits, (16, 16))
  torch = pytest.importorskip("torch")
  ref = torch.nn.functional.interpolate(torch.tensor(np.asarray(logits)).permute(0, 3, 1, 2),
                                        size=(16, 16), mode="bilinear", align_corners=False)
  np.testing.assert_allclose(np.asarray(up), ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_optimizer_groups_schedule_and_decay_mask():
  params = train_state.abstract_params(_model())
  groups = optim.param_groups(params)
  assert groups["decode_head"]["kernel"] == "head"
  assert set(jax.tree.leaves(groups)) == {"head", "backbone"}
  mask = optim.decay_mask(params)
  assert mask["decode_head"]["kernel"] and not mask["decode_head"]["bias"]
  assert not any(any(jax.tree.leaves(mask[k])) for k in params if "bn" in k or "norm" in k)
  # The real students: SegFormer's all-MLP decoder and DeepLabV3+'s ASPP/decoder are the head;
  # no norm or 1-D parameter is decayed.
  from sesam_jax.models import create_model
  for name in ("segformer_tiny", "deeplabv3plus_tiny"):
    p = train_state.abstract_params(create_model(name, 5))
    g, m = optim.param_groups(p), optim.decay_mask(p)
    assert {"head", "backbone"} <= set(jax.tree.leaves(g)), name
    for path, decayed in jax.tree_util.tree_flatten_with_path(m)[0]:
      leaf = p
      for k in path:
        leaf = leaf[k.key]
      keys = "/".join(str(k.key) for k in path).lower()
      assert not decayed or (leaf.ndim >= 2 and "norm" not in keys), keys
  cfg = ml_collections.ConfigDict(dict(lr=1e-4, warmup_steps=10, poly_power=1.0))
  s = optim.lr_schedule(cfg, 110)
  assert float(s(0)) < 1e-9 and float(s(10)) == pytest.approx(1e-4)
  assert float(s(60)) == pytest.approx(0.5e-4) and float(s(110)) == pytest.approx(0.0)
  bad = {"backbone": {"kernel": jnp.zeros((2, 2))}}
  with pytest.raises(ValueError, match="head_lr_mult"):
    optim.make_optimizer(configs_common.base_config().optim, bad, 10)


def _run(mesh, steps=3, ema_decay=0.9):
  model = _model()
  # Plain SGD: parameters move linearly in the gradients, so 1 vs 4 devices can be compared
  # tightly. (Adam turns the rounding noise of near-zero gradients, e.g. of a bias before a
  # batch norm, into lr-sized steps, which says nothing about the sharding.)
  tx, schedule = optax.sgd(0.1), optax.constant_schedule(0.1)
  state = train_state.create_train_state(model, tx, jax.random.key(0), mesh)
  cfg = step_lib.StepConfig(lr_schedule=schedule, ema_decay=ema_decay)
  step = step_lib.jit_step(functools.partial(step_lib.train_step, model=model, cfg=cfg), mesh,
                           state)
  rng = jax.device_put(jax.random.key(1), train_state.replicated(mesh))
  history = []
  for i in range(steps):
    batch = step_lib.shard_batch(_batch(seed=i), mesh)
    with jax.transfer_guard("disallow"):  # Everything the step reads is on the devices.
      state, metrics, aux = step(state, batch, rng)
    assert aux == {}  # The supervised step has no outputs for the host.
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history


def test_four_devices_match_one_device():
  assert jax.device_count() == 4, "tests/conftest.py sets 4 fake CPU devices"
  state4, hist4 = _run(step_lib.make_mesh())
  state1, hist1 = _run(step_lib.make_mesh(jax.devices()[:1]))
  for a, b in zip(hist4, hist1):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-7, err_msg=k)
  for tree in ("params", "batch_stats", "ema_params", "ema_batch_stats"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 getattr(state4, tree), getattr(state1, tree))
  assert int(state4.step) == 3
  assert hist4[-1]["update_norm"] > 0 and hist4[-1]["lr"] == pytest.approx(0.1)


def test_ema_follows_params_and_state_is_donated():
  mesh = step_lib.make_mesh()
  model = _model()
  tx, schedule = optim.make_optimizer(configs_common.base_config().optim,
                                      train_state.abstract_params(model), 100)
  state0 = train_state.create_train_state(model, tx, jax.random.key(0), mesh)
  p0 = jax.device_get(state0.params)
  cfg = step_lib.StepConfig(schedule, ema_decay=0.75)
  step = step_lib.jit_step(functools.partial(step_lib.train_step, model=model, cfg=cfg), mesh,
                           state0)
  batch = step_lib.shard_batch(_batch(), mesh)
  rng = jax.device_put(jax.random.key(1), train_state.replicated(mesh))
  with jax.transfer_guard("disallow"):
    state1, _, _ = step(state0, batch, rng)
  # (Not params: on CPU, device_get above made numpy views of them, which blocks donation.)
  assert jax.tree.leaves(state0.opt_state)[0].is_deleted(), "state buffers are donated"
  p1, e1 = jax.device_get(state1.params), jax.device_get(state1.ema_params)
  jax.tree.map(lambda e, a, b: np.testing.assert_allclose(e, 0.75 * a + 0.25 * b, rtol=1e-6,
                                                          atol=1e-7), e1, p0, p1)


def test_batch_must_split_across_devices():
  mesh = step_lib.make_mesh()
  with pytest.raises(ValueError, match="does not split across 4 devices"):
    step_lib.check_batch_size(6, mesh)
  step_lib.check_batch_size(8, mesh)
