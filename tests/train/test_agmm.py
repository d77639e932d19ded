"""AGMM: each loss term against a naive numpy transcription of the reference formulas
(docs/agmm.md), the chunked checkpointed path against the full broadcast (values and gradients),
the students' feature output, and a tiny training run through the loop that logs the three
losses, writes result.json and resumes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sesam_jax import config_lib, loop
from sesam_jax.data import input_pipeline
from sesam_jax.models import create_model, segformer
from sesam_jax.train import agmm
from tests import fakes

EPS = 1e-6
B, K, C, H4, S = 3, 5, 6, 4, 4  # batch, classes, channels, feature side, stride
H = H4 * S


def _np_upsample(x_BKhw, size):
  """Bilinear, half-pixel centres, edges clamped (PyTorch's align_corners=False)."""
  h = x_BKhw.shape[-1]
  pos = np.clip((np.arange(size) + 0.5) * h / size - 0.5, 0, h - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, h - 1)
  a = np.zeros((size, h))
  a[np.arange(size), lo] += 1 - (pos - lo)
  a[np.arange(size), hi] += pos - lo
  return np.einsum("Yy,bkyx,Xx->bkYX", a, x_BKhw, a)


def reference(logits_BhwK, feat_BhwC, y, valid, image_cls):
  """The reference formulas, naively: float64, the full B x K x C x h x w broadcast."""
  pred = _np_upsample(np.transpose(logits_BhwK, (0, 3, 1, 2)).astype(np.float64), H)  # B K H W
  feat = np.transpose(feat_BhwC, (0, 3, 1, 2)).astype(np.float64)                     # B C h w
  q = np.exp(pred - pred.max(1, keepdims=True))
  q /= q.sum(1, keepdims=True)
  onehot = (y[:, None] == np.arange(K)[None, :, None, None]).astype(np.float64)      # B K H W
  cls = (onehot.sum((2, 3)) > 0).astype(np.float64)                                   # B K
  # Prototypes: mean over labelled pixels of the feature at each pixel (nearest-upsampled).
  feat_up = feat.repeat(S, 2).repeat(S, 3)
  proto = np.einsum("bkp,bcp->bkc", onehot.reshape(B, K, -1), feat_up.reshape(B, C, -1))
  proto /= onehot.sum((2, 3))[..., None] + EPS
  d = np.abs(feat[:, None] - proto[:, :, :, None, None]).mean(2)                      # B K h w
  d = d * cls[:, :, None, None] * valid[:, None, ::S, ::S]
  g = _np_upsample(np.exp(-d ** 2), H) * cls[:, :, None, None]
  qm = q * cls[:, :, None, None]
  n_cls = np.maximum(cls.sum(1), 1)[:, None, None]
  bce1 = -(g * np.log(qm + EPS) + (1 - g) * np.log(1 - qm + EPS)) / 2
  bce2 = -(onehot * np.log(g + EPS) + (1 - onehot) * np.log(1 - g + EPS)) / 2
  t1 = (bce1 * cls[:, :, None, None]).sum(1) / n_cls
  t2 = (bce2 * cls[:, :, None, None]).sum(1) / n_cls
  labelled = y < K
  term1 = t1[valid > 0].sum() / max((valid > 0).sum(), 1)
  term2 = t2[labelled].sum() / max(labelled.sum(), 1)
  absence = -((1 - image_cls)[:, :, None, None] * np.log(1 - q + EPS)).sum(1)
  absence = absence[valid > 0].sum() / max((valid > 0).sum(), 1)
  # Batch prototypes and the separation over the pairs of present classes.
  pairs = []
  for i in range(K):
    for j in range(i + 1, K):
      if cls[:, i].any() and cls[:, j].any():
        vi = (proto[:, i] * cls[:, i, None]).sum(0) / cls[:, i].sum()
        vj = (proto[:, j] * cls[:, j, None]).sum(0) / cls[:, j].sum()
        pairs.append(np.exp(-np.abs(vi - vj).mean() ** 2))
  return {"gmm_term1": term1, "gmm_term2": term2, "gmm": term1 + term2,
          "proto": np.mean(pairs) if pairs else 0.0, "absence": absence}


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(B, H4, H4, K)).astype(np.float32) * 2
  feats = rng.normal(size=(B, H4, H4, C)).astype(np.float32)
  valid = np.ones((B, H, H), np.uint8)
  valid[1, :, 10:] = 0  # padding on the right of crop 1 (not a multiple of the stride)
  valid[0, 13:] = 0
  y = np.where(rng.random((B, H, H)) < 0.25, rng.integers(0, K - 1, (B, H, H)), 255)
  y[2] = 255  # a crop without any label
  y = np.where(valid > 0, y, 255).astype(np.uint8)
  crop_cls = np.stack([np.isin(np.arange(K), y[b]) for b in range(B)]).astype(np.uint8)
  image_cls = crop_cls.copy()
  image_cls[0, K - 1] = 1  # a class of the image outside the crop
  return logits, feats, y, valid, image_cls


@pytest.mark.parametrize("chunk", [0, 2])
def test_each_term_matches_the_reference_formulas(chunk):
  logits, feats, y, valid, image_cls = _inputs()
  got = jax.jit(lambda *a: agmm.agmm_losses(*a, class_chunk=chunk))(
      logits, feats, y, valid, image_cls)
  want = reference(logits, feats, y, valid, image_cls)
  for name, value in want.items():
    assert float(got[name]) == pytest.approx(value, rel=1e-5, abs=1e-5), name
  assert want["proto"] > 0 and want["absence"] > 0 and want["gmm_term2"] > 0


def _total(chunk):
  def f(logits, feats, y, valid, image_cls):
    t = agmm.agmm_losses(logits, feats, y, valid, image_cls, class_chunk=chunk)
    return t["gmm"] + 0.5 * t["proto"] + 2.0 * t["absence"]
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))


@pytest.mark.parametrize("chunk", [1, 3])
def test_chunked_checkpointed_path_equals_the_full_broadcast(chunk):
  args = _inputs(seed=1)
  value, (g_logits, g_feats) = _total(0)(*args)
  value_c, (g_logits_c, g_feats_c) = _total(chunk)(*args)
  assert float(value_c) == pytest.approx(float(value), rel=1e-6)
  np.testing.assert_allclose(g_logits_c, g_logits, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g_feats_c, g_feats, rtol=1e-5, atol=1e-7)
  assert np.abs(g_feats).sum() > 0  # the features are trained (prototypes, responses)


def test_class_presence_is_taken_before_the_crop():
  label = np.full((8, 8), 255, np.uint8)
  label[0, 0], label[7, 7] = 3, 0
  present = input_pipeline.class_presence(label)
  assert present.shape == (256,) and present.dtype == np.uint8
  assert np.flatnonzero(present).tolist() == [0, 3]


@pytest.mark.parametrize("name", ["segformer_tiny", "deeplabv3plus_tiny"])
def test_students_return_their_feature_only_when_asked(name):
  model = create_model(name, 4)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  logits = jax.eval_shape(model.apply, variables, x)
  logits_f, features = jax.eval_shape(
      lambda v, x: model.apply(v, x, return_features=True), variables, x)
  assert logits.shape == logits_f.shape == (1, 8, 8, 4) and features.shape[:3] == (1, 8, 8)
  classifier = jax.tree.leaves(variables["params"].get("decode_head", variables["params"])[
      "classifier"])
  assert features.shape[3] in {leaf.shape[0] for leaf in classifier}


def test_segformer_feature_is_what_its_classifier_reads():
  head = segformer.SegformerDecodeHead(num_classes=3, decoder_hidden_size=8)
  rng = np.random.default_rng(0)
  stages = [jnp.asarray(rng.normal(size=(1, 8 // 2 ** i, 8 // 2 ** i, 4 * (i + 1))),
                        jnp.float32) for i in range(4)]
  variables = head.init(jax.random.key(0), stages)
  logits, (logits_f, features) = jax.jit(lambda v: (
      head.apply(v, stages), head.apply(v, stages, return_features=True)))(variables)
  np.testing.assert_array_equal(logits, logits_f)
  classifier = variables["params"]["classifier"]
  np.testing.assert_allclose(features @ classifier["kernel"] + classifier["bias"], logits,
                             rtol=1e-5, atol=1e-5)


def _config(workdir_steps=4):
  return config_lib.config_from_flags(
      os.path.join(fakes.REPO, "configs", "segformer_synthetic.py") + ":weak=points,method=agmm",
      [f"--config.num_steps={workdir_steps}", "--config.checkpoint_every=2",
       "--config.log_every=1", "--config.crop=32", "--config.batch_size=4",
       "--config.dataset.image_size=48,64", "--config.dataset.num_train_images=8",
       "--config.dataset.num_val_images=4", "--config.eval.batch_size=4",
       f"--config.model={fakes.TEST_MODEL}", "--config.agmm.class_chunk=2"])


@pytest.fixture
def compile_cache(tmp_path):
  """A persistent XLA cache: the resumed run compiles nothing the first one did not."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  for n, v in zip(names, (str(tmp_path / "xla_cache"), 0, 0)):
    jax.config.update(n, v)
  yield
  for n, v in old.items():
    jax.config.update(n, v)


def test_tiny_agmm_run_logs_its_losses_and_resumes(tmp_path, compile_cache):
  workdir = str(tmp_path / "run")
  first = loop.train_and_evaluate(_config(2), workdir)
  assert first["method"] == "agmm" and first["step"] == 2
  result = loop.train_and_evaluate(_config(4), workdir)  # resumes at step 2
  assert result["step"] == 4 and np.isfinite(result["val_miou"])
  assert json.load(open(os.path.join(workdir, "result.json")))["step"] == 4
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  for r in train_rows:
    for name in ("gmm_loss", "proto_loss", "absence_loss"):
      assert np.isfinite(r[f"train/agmm/{name}"]) and r[f"train/agmm/{name}"] >= 0
    assert r["train/loss"] > r["train/loss_weak"]  # the AGMM terms are added to the CE


def test_agmm_config_parses_with_the_paper_weights():
  config = config_lib.config_from_flags(
      os.path.join(fakes.REPO, "configs", "segformer_synthetic.py") + ":weak=points,method=agmm,"
      "runlocal", ["--config.agmm.absence_weight=0.5"])
  assert config.method == "agmm" and config.num_steps == 40
  assert (config.agmm.gmm_weight, config.agmm.proto_weight, config.agmm.absence_weight) == (
      1.0, 1.0, 0.5)
