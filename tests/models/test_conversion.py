"""Weight import: parity with `transformers` (same random weights, tiny configs),
the hub/mmseg/torchvision layouts as hand-written key fixtures, refusal of
missing or misshapen keys, and the `sesam convert` file round trip."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sesam_jax import main as sesam_main
from sesam_jax.bench import parity
from sesam_jax.models import conversion, create_model, resnet

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def hf_segformer_tiny():
  """A transformers SegFormer with the Flax "tiny" sizes and random weights."""
  torch.manual_seed(0)
  config = transformers.SegformerConfig(num_labels=NUM_CLASSES,
                                        **parity.SEGFORMER_HF_CONFIGS["tiny"])
  model = transformers.SegformerForSemanticSegmentation(config)
  parity._randomize_and_calibrate(model, (64, 64), seed=0)
  return model


@pytest.fixture(scope="module")
def hf_resnet_tiny():
  torch.manual_seed(0)
  model = transformers.ResNetModel(transformers.ResNetConfig(**parity.RESNET_HF_CONFIGS["tiny"]))
  parity._randomize_and_calibrate(model, (64, 64), seed=0)
  return model


def _numpy(model):
  return parity._state_dict_numpy(model)


def _zero_variables(model, size=32):
  """Variables of the model's shapes without compiling model.init (slow on 2 cores)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(tree)}


# --- parity -----------------------------------------------------------------

@pytest.mark.parametrize("fast_paths", [True, False])
def test_segformer_logits_match_transformers_square_and_non_square(fast_paths):
  # 56x88 makes stage grids 14x22, 7x11, 4x6, 2x3: non-integer upsampling factors.
  # fast_paths: shifted depthwise conv, chunked attention (stage 1 has 196 and 256
  # queries: chunks of 48 with padding), folded decoder; else the plain forms.
  kwargs = (dict(dwconv_impl="shift", attention="chunked", query_chunk=48, fold_decoder=True)
            if fast_paths else dict(dwconv_impl="lax", attention="full", fold_decoder=False))
  result = parity.segformer_parity("tiny", num_classes=NUM_CLASSES,
                                   sizes=((64, 64), (56, 88)), bf16=False, **kwargs)
  assert result["segformer_fp32_max_abs_diff"] < 1e-4, result


def test_resnet_features_match_transformers():
  result = parity.resnet_parity("tiny", size=(64, 80), bf16=False)
  assert result["resnet_fp32_max_abs_diff"] < 1e-4, result


# --- layouts ----------------------------------------------------------------

_TO_HUB = [  # transformers' in-memory names -> hub checkpoint names (nvidia/mit-b0 style).
    (r"stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
    (r"stages\.(\d+)\.blocks\.", r"encoder.block.\1."),
    (r"stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1."),
    (r"attention\.q_proj\.", "attention.self.query."),
    (r"attention\.k_proj\.", "attention.self.key."),
    (r"attention\.v_proj\.", "attention.self.value."),
    (r"attention\.sequence_reduction\.sequence_reduction\.", "attention.self.sr."),
    (r"attention\.sequence_reduction\.layer_norm\.", "attention.self.layer_norm."),
    (r"attention\.o_proj\.", "attention.output.dense."),
    (r"mlp\.fc1\.", "mlp.dense1."), (r"mlp\.fc2\.", "mlp.dense2."),
    (r"layernorm_before\.", "layer_norm_1."), (r"layernorm_after\.", "layer_norm_2."),
    (r"linear_projections\.", "linear_c."),
]


def _to_hub_names(state_dict):
  out = {}
  for key, value in state_dict.items():
    for pattern, repl in _TO_HUB:
      key = re.sub(pattern, repl, key)
    out[key] = value
  return out


def _to_mmseg_names(encoder_state_dict):
  """transformers SegformerModel names -> the original mit_b*.pth names (by hand)."""
  out = {"head.weight": np.zeros((1000, 32), np.float32)}  # The ImageNet head: not loaded.
  for key, value in encoder_state_dict.items():
    if m := re.fullmatch(r"stages\.(\d)\.patch_embeddings\.(proj|layer_norm)\.(\w+)", key):
      out[f"patch_embed{int(m[1]) + 1}.{'proj' if m[2] == 'proj' else 'norm'}.{m[3]}"] = value
    elif m := re.fullmatch(r"stages\.(\d)\.layer_norm\.(\w+)", key):
      out[f"norm{int(m[1]) + 1}.{m[2]}"] = value
    elif m := re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.(.+)\.(\w+)", key):
      block = f"block{int(m[1]) + 1}.{m[2]}"
      inner = {"layernorm_before": "norm1", "layernorm_after": "norm2",
               "attention.q_proj": "attn.q", "attention.o_proj": "attn.proj",
               "attention.sequence_reduction.sequence_reduction": "attn.sr",
               "attention.sequence_reduction.layer_norm": "attn.norm",
               "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
               "mlp.dwconv.dwconv": "mlp.dwconv.dwconv"}.get(m[3])
      if inner:
        out[f"{block}.{inner}.{m[4]}"] = value
      elif m[3] == "attention.k_proj":  # k and v live in one Linear "kv", k first.
        v = encoder_state_dict[key.replace("k_proj", "v_proj")]
        out[f"{block}.attn.kv.{m[4]}"] = np.concatenate([value, v], axis=0)
    else:
      raise AssertionError(key)
  return out


def test_hub_and_in_memory_names_convert_identically(hf_segformer_tiny):
  state = _numpy(hf_segformer_tiny)
  hub = _to_hub_names(state)
  assert "segformer.encoder.block.0.0.attention.self.query.weight" in hub
  a = conversion.convert_checkpoint(state, "hf", model="segformer_tiny")
  b = conversion.convert_checkpoint(hub, "hf")  # Model and classes inferred.
  assert b.model == "segformer_tiny" and a.scope == b.scope == ""
  assert not a.not_loaded and not b.not_loaded
  fa, fb = _flat(a.variables), _flat(b.variables)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k])


def test_encoder_only_hf_and_mmseg_agree_and_merge(hf_segformer_tiny):
  # SegformerModel keys (no "segformer." prefix), as in nvidia/mit-b0.
  encoder = {k.removeprefix("segformer."): v for k, v in _numpy(hf_segformer_tiny).items()
             if k.startswith("segformer.")}
  hf = conversion.convert_checkpoint(encoder, "hf")
  mmseg = conversion.convert_checkpoint(_to_mmseg_names(encoder), "mmseg")
  assert hf.model == mmseg.model == "segformer_tiny"
  assert hf.scope == mmseg.scope == "encoder"
  assert set(hf.variables) == {"params"} and set(hf.variables["params"]) == {"encoder"}
  assert mmseg.not_loaded == ["head.weight"]
  fa, fb = _flat(hf.variables), _flat(mmseg.variables)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k])
  # Lay the encoder over a fresh 3-class model: encoder replaced, head kept.
  fresh = _zero_variables(create_model("segformer_tiny", 3))
  merged, skipped = conversion.merge_pretrained(fresh, hf.variables)
  assert not skipped
  np.testing.assert_array_equal(
      merged["params"]["encoder"]["stages_0"]["patch_embeddings"]["proj"]["kernel"],
      fa["params/encoder/stages_0/patch_embeddings/proj/kernel"])
  np.testing.assert_array_equal(merged["params"]["decode_head"]["classifier"]["kernel"],
                                fresh["params"]["decode_head"]["classifier"]["kernel"])


def _to_torchvision_names(hf_resnet_state):
  """transformers ResNetModel names -> torchvision resnet names (by hand)."""
  out = {"fc.weight": np.zeros((1000, 128), np.float32), "fc.bias": np.zeros(1000, np.float32)}
  for key, value in hf_resnet_state.items():
    if m := re.fullmatch(r"embedder\.embedder\.(convolution|normalization)\.(\w+)", key):
      out[f"{'conv1' if m[1] == 'convolution' else 'bn1'}.{m[2]}"] = value
    elif m := re.fullmatch(r"encoder\.stages\.(\d)\.layers\.(\d+)\.(.+)\.(\w+)", key):
      block = f"layer{int(m[1]) + 1}.{m[2]}"
      if c := re.fullmatch(r"layer\.(\d)\.(convolution|normalization)", m[3]):
        out[f"{block}.{'conv' if c[2] == 'convolution' else 'bn'}{int(c[1]) + 1}.{m[4]}"] = value
      else:
        idx = "0" if m[3].endswith("convolution") else "1"
        out[f"{block}.downsample.{idx}.{m[4]}"] = value
    else:
      raise AssertionError(key)
  return out


def test_torchvision_and_hf_resnet_agree_in_deeplab(hf_resnet_tiny):
  hf_state = _numpy(hf_resnet_tiny)
  tv_state = _to_torchvision_names(hf_state)
  assert "layer1.0.downsample.0.weight" in tv_state and "bn1.running_var" in tv_state
  a = conversion.convert_checkpoint(hf_state, "hf")
  b = conversion.convert_checkpoint(tv_state, "torchvision")
  assert a.model == b.model == "deeplabv3plus_tiny" and a.scope == b.scope == "backbone"
  assert sorted(b.not_loaded) == ["fc.bias", "fc.weight"]
  fa, fb = _flat(a.variables), _flat(b.variables)
  assert fa.keys() == fb.keys() and "batch_stats/backbone/embedder/normalization/mean" in fa
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k])


def _torchvision_resnet50_fixture():
  """Key names and shapes of torchvision's resnet50 state dict, written out by hand."""
  shapes = {"conv1.weight": (64, 3, 7, 7), "fc.weight": (1000, 2048), "fc.bias": (1000,)}
  bn = lambda name, c: shapes.update({f"{name}.{p}": (c,) for p in (
      "weight", "bias", "running_mean", "running_var")} | {f"{name}.num_batches_tracked": ()})
  bn("bn1", 64)
  in_ch = 64
  for s, (depth, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
    for j in range(depth):
      p = f"layer{s}.{j}"
      shapes[f"{p}.conv1.weight"] = (width, in_ch, 1, 1)
      shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
      shapes[f"{p}.conv3.weight"] = (width * 4, width, 1, 1)
      for k, c in ((1, width), (2, width), (3, width * 4)):
        bn(f"{p}.bn{k}", c)
      if j == 0:
        shapes[f"{p}.downsample.0.weight"] = (width * 4, in_ch, 1, 1)
        bn(f"{p}.downsample.1", width * 4)
      in_ch = width * 4
  return {k: np.zeros(v, np.int64 if not v else np.float32) for k, v in shapes.items()}


def test_torchvision_resnet50_names_fill_deeplab_r50():
  state = _torchvision_resnet50_fixture()
  assert len(state) == 320  # torchvision resnet50().state_dict() has 320 entries.
  result = conversion.convert_checkpoint(state, "torchvision")
  assert result.model == "deeplabv3plus_r50"
  assert sorted(result.not_loaded) == ["fc.bias", "fc.weight"]
  kernel = result.variables["params"]["backbone"]["stages_3"]["layers_0"]["layer_1"]
  assert kernel["convolution"]["kernel"].shape == (3, 3, 512, 512)


# --- refusals ---------------------------------------------------------------

def test_missing_key_is_named(hf_segformer_tiny):
  state = _to_hub_names(_numpy(hf_segformer_tiny))
  del state["segformer.encoder.block.1.0.attention.self.query.weight"]
  with pytest.raises(ValueError, match=re.escape(
      "segformer.encoder.block.1.0.attention.self.query.weight")):
    conversion.convert_checkpoint(state, "hf", model="segformer_tiny")


def test_misshapen_key_is_named(hf_resnet_tiny):
  state = _to_torchvision_names(_numpy(hf_resnet_tiny))
  state["layer2.0.conv2.weight"] = state["layer2.0.conv2.weight"][:, :, :1, :1]
  with pytest.raises(ValueError, match=r"'layer2\.0\.conv2\.weight' has shape \(8, 8, 1, 1\)"):
    conversion.convert_checkpoint(state, "torchvision")


def test_wrong_format_for_model_is_refused(hf_resnet_tiny):
  with pytest.raises(ValueError, match="mmseg"):
    conversion.convert_checkpoint(_numpy(hf_resnet_tiny), "mmseg", model="deeplabv3plus_tiny")


def test_merge_refuses_other_num_classes_unless_skipped(hf_segformer_tiny):
  full = conversion.convert_checkpoint(_numpy(hf_segformer_tiny), "hf")
  fresh = _zero_variables(create_model("segformer_tiny", 3))
  with pytest.raises(ValueError, match="decode_head/classifier"):
    conversion.merge_pretrained(fresh, full.variables)
  _, skipped = conversion.merge_pretrained(fresh, full.variables, skip_mismatched=True)
  assert skipped == ["params/decode_head/classifier/bias", "params/decode_head/classifier/kernel"]


# --- files and the command --------------------------------------------------

def test_sesam_convert_writes_a_loadable_checkpoint(tmp_path, capsys, hf_segformer_tiny):
  src = tmp_path / "segformer.pth"
  torch.save(hf_segformer_tiny.state_dict(), src)
  dst = tmp_path / "out" / "segformer_tiny.msgpack"
  assert sesam_main.main(["convert", str(src), str(dst), "--format", "hf"]) == 0
  assert '"not_loaded": []' in capsys.readouterr().out.strip().splitlines()[-1]
  _, meta = conversion.load_converted(dst)
  assert meta["model"] == "segformer_tiny" and meta["format"] == "hf"
  model = create_model("segformer_tiny", NUM_CLASSES)
  variables, skipped = conversion.init_from_converted(_zero_variables(model), dst)
  assert not skipped
  images = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)
  logits = model.apply(variables, images)
  with torch.no_grad():
    want = hf_segformer_tiny(torch.from_numpy(images.transpose(0, 3, 1, 2))).logits.numpy()
  np.testing.assert_allclose(np.asarray(logits).transpose(0, 3, 1, 2), want, atol=1e-4)


def test_sesam_convert_refuses_and_writes_nothing(tmp_path, capsys, hf_resnet_tiny):
  state = hf_resnet_tiny.state_dict()
  del state["embedder.embedder.normalization.running_var"]
  src = tmp_path / "resnet.pth"
  torch.save(state, src)
  dst = tmp_path / "resnet.msgpack"
  assert sesam_main.main(["convert", str(src), str(dst), "--format", "hf"]) == 2
  err = capsys.readouterr().err
  assert "embedder.embedder.normalization.running_var" in err and str(src) in err
  assert not dst.exists() and list(tmp_path.iterdir()) == [src]


def test_resnet_module_names_follow_transformers():
  variables = jax.eval_shape(
      resnet.ResNet(**resnet.RESNET_VARIANTS["tiny"]).init, jax.random.key(0),
      jnp.zeros((1, 32, 32, 3)))
  assert set(variables["params"]) == {"embedder", "stages_0", "stages_1", "stages_2", "stages_3"}
  assert set(variables["params"]["stages_1"]["layers_0"]) == {
      "shortcut", "layer_0", "layer_1", "layer_2"}
