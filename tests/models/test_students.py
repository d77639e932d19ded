"""Students: shapes of every registered variant (eval_shape, no compute), real
forward/backward of the tiny ones, batch-norm modes, bf16, depthwise conv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sesam_jax.models import MODELS, create_model, mit, normalize_images
from sesam_jax.models import attention as attention_lib

NUM_CLASSES = 5


def random_variables(model, images, seed=0):
  """Variables with the model's shapes, filled by numpy (fan-in scaled normal kernels).

  Compiling `model.init` (its threefry key splitting) costs tens of seconds on
  the shared 2-core machine; tests only need well-scaled random weights.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)

  def fill(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), leaf.dtype)
    if name in ("scale", "var"):
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.asarray(0.1 * rng.standard_normal(leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_variant_has_stride4_float32_logits(name):
  model = create_model(name, NUM_CLASSES)
  images = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)
  logits, variables = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x), images)
  assert logits.shape == (2, 16, 24, NUM_CLASSES)
  assert logits.dtype == jnp.float32
  assert set(variables) == {"params", "batch_stats"}
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))


def test_published_parameter_counts():
  # SegFormer paper table 1 (encoder+decoder, 150 classes): B0 3.8M, B5 84.7M.
  for name, millions in (("segformer_b0", 3.8), ("segformer_b5", 84.7)):
    model = create_model(name, 150)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    count = sum(p.size for p in jax.tree.leaves(variables["params"])) / 1e6
    assert abs(count - millions) < 0.1, (name, count)


def test_create_model_rejects_unknown_names():
  with pytest.raises(ValueError, match="segformer_b0"):
    create_model("segformer_b9", 3)


def test_normalize_images():
  images = np.full((1, 2, 2, 3), 255, np.uint8)
  out = normalize_images(images)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out[0, 0, 0], (1 - np.array([0.485, 0.456, 0.406]))
                             / np.array([0.229, 0.224, 0.225]), rtol=1e-5)


@pytest.mark.parametrize("name", ["segformer_tiny", "deeplabv3plus_tiny"])
def test_tiny_train_and_eval_modes(name):
  model = create_model(name, NUM_CLASSES)
  images = jax.random.normal(jax.random.key(1), (2, 64, 48, 3))
  variables = random_variables(model, images)
  # Train: batch statistics are used and the running statistics move.
  train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
  evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
  logits, updates = train(variables, images)
  assert logits.shape == (2, 16, 12, NUM_CLASSES)
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                       variables["batch_stats"], updates["batch_stats"])
  assert max(jax.tree.leaves(moved)) > 0
  # Eval: running statistics, deterministic, no mutation needed.
  eval_logits = evaluate({**variables, **updates}, images)
  assert np.all(np.isfinite(eval_logits))
  assert not np.allclose(eval_logits, logits)  # Running stats differ from batch stats.


def test_dropout_only_with_an_rng():
  model = create_model("segformer_tiny", NUM_CLASSES, drop_path_rate=0.5)
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = random_variables(model, images)
  plain = jax.jit(lambda v: model.apply(v, images, train=True, mutable=["batch_stats"])[0])
  dropped = jax.jit(lambda v, key: model.apply(v, images, train=True, mutable=["batch_stats"],
                                               rngs={"dropout": key})[0])
  np.testing.assert_array_equal(plain(variables), plain(variables))
  assert not np.allclose(dropped(variables, jax.random.key(2)),
                         dropped(variables, jax.random.key(3)))


@pytest.mark.parametrize("name", [pytest.param("segformer_tiny", marks=pytest.mark.slow),
                                  "deeplabv3plus_tiny"])
def test_bf16_compute_keeps_fp32_params_and_logits(name):
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  fp32 = create_model(name, NUM_CLASSES)
  variables = random_variables(fp32, images)
  bf16 = create_model(name, NUM_CLASSES, dtype=jnp.bfloat16)

  def loss(params):
    logits, _ = bf16.apply({"params": params, "batch_stats": variables["batch_stats"]}, images,
                           train=True, mutable=["batch_stats"])
    return jnp.mean(logits ** 2), logits

  grads, logits = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
  assert logits.dtype == jnp.float32
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  # Eval mode (train-mode BN over 2 pooled values amplifies any rounding).
  got = jax.jit(bf16.apply)(variables, images)
  want = jax.jit(fp32.apply)(variables, images)
  assert got.dtype == jnp.float32
  # bf16 keeps ~3 significant digits; the logits stay close in norm.
  assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < 0.05


def test_deeplab_output_stride_8_and_16_share_parameters():
  images = jnp.zeros((1, 64, 64, 3))
  shapes = []
  for stride in (8, 16):
    model = create_model("deeplabv3plus_tiny", NUM_CLASSES, output_stride=stride)
    logits, variables = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x), images)
    shapes.append(jax.tree.map(jnp.shape, variables))
    assert logits.shape == (1, 16, 16, NUM_CLASSES)
  assert shapes[0] == shapes[1]


def test_shifted_depthwise_conv_matches_lax():
  x = jax.random.normal(jax.random.key(0), (2, 7, 9, 6))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 6))
  np.testing.assert_allclose(mit.depthwise_conv3x3(x, kernel, "shift"),
                             mit.depthwise_conv3x3(x, kernel, "lax"), atol=1e-5)
  with pytest.raises(ValueError, match="dwconv_impl"):
    mit.depthwise_conv3x3(x, kernel, "cudnn")


def test_segformer_dwconv_impls_agree():
  images = jax.random.normal(jax.random.key(1), (1, 32, 32, 3))
  shift = create_model("segformer_tiny", NUM_CLASSES, dwconv_impl="shift")
  lax_model = create_model("segformer_tiny", NUM_CLASSES, dwconv_impl="lax")
  variables = random_variables(shift, images)
  np.testing.assert_allclose(jax.jit(shift.apply)(variables, images),
                             jax.jit(lax_model.apply)(variables, images), atol=1e-5)


@pytest.mark.parametrize("attention", ["chunked", "dot_product"])
def test_attention_implementations_match_full_with_gradients(attention):
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (2, 100, 2, 8))  # 100 queries: chunks of 32 plus padding.
  k = jax.random.normal(keys[1], (2, 16, 2, 8))  # Spatially reduced: fewer keys than queries.
  v = jax.random.normal(keys[2], (2, 16, 2, 8))
  loss = lambda impl: jax.jit(jax.value_and_grad(
      lambda q, k, v: jnp.sum(mit.attend(q, k, v, attention=impl, query_chunk=32) ** 2),
      argnums=(0, 1, 2)))
  (plain, plain_grads), (other, other_grads) = loss("full")(q, k, v), loss(attention)(q, k, v)
  np.testing.assert_allclose(other, plain, rtol=1e-5)
  for a, b in zip(other_grads, plain_grads):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_segformer_attention_implementations_agree():
  images = jax.random.normal(jax.random.key(1), (1, 64, 64, 3))  # Stage 1: 256 queries.
  models = {name: create_model("segformer_tiny", NUM_CLASSES, attention=name, query_chunk=96)
            for name in ("full", "chunked", "dot_product")}
  variables = random_variables(models["full"], images)
  logits = {name: jax.jit(m.apply)(variables, images) for name, m in models.items()}
  for name in ("chunked", "dot_product"):
    np.testing.assert_allclose(logits[name], logits["full"], rtol=1e-5, atol=1e-5, err_msg=name)


def test_attention_auto_is_resolved_when_the_model_is_built():
  resolve = attention_lib.resolve_attention
  assert resolve("auto", platform="cpu") == "chunked"
  # cuDNN stays opt-in until a GPU has measured it (sesam_jax/models/attention.py).
  assert resolve("auto", platform="gpu", dtype=jnp.bfloat16) == "dot_product"
  assert resolve("auto", platform="gpu", dtype=jnp.float32) == "dot_product"
  assert resolve("auto", platform="tpu", dtype=jnp.bfloat16) == "dot_product"
  model = create_model("segformer_tiny", NUM_CLASSES, platform="gpu", dtype=jnp.bfloat16)
  assert model.attention == "dot_product"
  with pytest.raises(ValueError, match=r"^unknown attention implementation 'flash' for "
                     r"config\.attention; choose one of: chunked, full, dot_product, cudnn, "
                     r"auto\.$"):
    create_model("segformer_tiny", NUM_CLASSES, attention="flash")
