"""The Flax SAM (sesam_jax.models.sam) against code we did not write, its converter, and
the JAX backend under sam_bridge's refine().

Parity: transformers' SamModel with the `tiny` sizes and random weights vs the Flax
model given the converted state dict (point, box, point+box, mask prompts, transformers'
padded batches, and our masked padding against unpadded sets). The full ViT-B figures
come from `sesam bench --what sam --parity`.
"""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sam_bridge.api import RefineRequest  # noqa: E402
from sam_bridge.refine import RefineConfig, refine  # noqa: E402
from sesam_jax.bench.sam import synthetic_scene  # noqa: E402
from sesam_jax.bench.sam_parity import (  # noqa: E402
    random_transformers_sam, sam_parity, state_dict_numpy)
from sesam_jax.models import sam, sam_convert  # noqa: E402
from sesam_jax.sam.jax_backend import JaxSamBackend, create_jax_backend  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
  """torch on one thread: on a shared 2-core machine its idle OpenMP threads spin (~20x CPU)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_pair():
  """(transformers SamModel `tiny` with every parameter random, its numpy state dict)."""
  model = random_transformers_sam("tiny", seed=0)
  return model, state_dict_numpy(model)


def _flat(params):
  import flax.traverse_util
  return flax.traverse_util.flatten_dict(params["params"])


@pytest.mark.parametrize("attention", ["chunked", "dot_product"])
def test_tiny_matches_transformers_for_every_prompt_kind(attention):
  # window_size=6 on the 16x16 grid pads windows as ViT-B's 64x64 grid does with 14;
  # "chunked" runs the global attention of the CPU backend 4 query rows at a time,
  # "dot_product" every attention through jax.nn.dot_product_attention, relative terms as bias.
  result = sam_parity("tiny", bf16=False, window_size=6, attention=attention, query_rows=4)
  assert result["logits_max_abs"] > 1.0  # Masks are not all-background noise.
  for key in ("embedding", "iou", "points_logits", "box_logits", "points_box_logits",
              "mask_logits", "padded_logits", "masked_pad_logits"):
    assert result[f"{key}_max_abs_diff"] < 1e-4, (key, result)
  assert result["mask_agreement"] >= 0.9999


def test_official_and_transformers_layouts_convert_to_the_same_params():
  from sam_bridge.backends.official_loader import build_official_sam
  from sam_bridge.backends.sam_convert import convert_official_sam
  torch.manual_seed(0)
  official = build_official_sam("tiny", img_size=256, window_size=4)
  sd = {k: v.numpy() for k, v in official.state_dict().items()}
  ours, spec, fmt = sam_convert.convert_sam(sd)
  assert fmt == "official" and spec == sam.sam_spec("tiny")
  # sam_bridge's own (independent) renaming to transformers names, then ours from there.
  via_hf, spec_hf, fmt_hf = sam_convert.convert_sam(convert_official_sam(sd))
  assert fmt_hf == "transformers" and spec_hf == spec
  a, b = _flat(ours), _flat(via_hf)
  assert a.keys() == b.keys() == _flat(sam.param_shapes(spec)).keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg="/".join(k))


def test_bad_checkpoints_fail_naming_the_key(tiny_pair, tmp_path):
  _, sd = tiny_pair
  missing = {k: v for k, v in sd.items() if k != "mask_decoder.iou_token.weight"}
  with pytest.raises(ValueError, match="mask_decoder/iou_token"):
    sam_convert.convert_sam(missing)
  bad = dict(sd)
  bad["mask_decoder.transformer.layers.1.mlp.lin1.weight"] = np.zeros((2048, 255), np.float32)
  with pytest.raises(ValueError, match=r"layers\.1\.mlp\.lin1\.weight"):
    sam_convert.convert_sam(bad)
  extra = dict(sd)
  extra["mask_decoder.hf_token.weight"] = np.zeros((1, 256), np.float32)  # A SAM-HQ key.
  with pytest.raises(ValueError, match="hf_token"):
    sam_convert.convert_sam(extra)
  from safetensors.numpy import save_file
  save_file(missing, str(tmp_path / "broken.safetensors"))
  dst = tmp_path / "out.msgpack"
  with pytest.raises(ValueError, match="broken.safetensors.*iou_token"):
    sam_convert.convert_file(tmp_path / "broken.safetensors", dst)
  assert not dst.exists() and not list(tmp_path.glob("out.msgpack*"))


def test_refine_gives_the_same_labels_as_the_torch_backend(tiny_pair):
  """`random:tiny`'s torch backend and the JAX backend from the same weights."""
  from sam_bridge.backends.transformers_sam import TransformersSamBackend
  from sam_bridge.cache import EmbeddingCache
  from sesam_jax.data import weak_labels
  model, sd = tiny_pair
  params, spec, _ = sam_convert.convert_sam(sd)
  torch_backend = TransformersSamBackend(model, name="random:tiny (randomised)")
  jax_backend = JaxSamBackend(params, spec, name="jax-random:tiny (same weights)")
  image, fine, coarse = synthetic_scene(96, 128, 8)
  points = weak_labels.make_weak_label(fine, "points", seed=0, image_id="x", num_classes=19)
  # (Box prompts and predict()'s full-size masks are covered by the other tests.)
  cases = [(coarse, RefineConfig()), (coarse, RefineConfig(prompt="mask")),
           (points, RefineConfig(weak_kind="points"))]  # 1..5 points per set: padded batches.
  # Pre-warm as the trainer does: encode_images(), states into the cache under refine's key.
  from sam_bridge.cache import cache_key, image_digest
  cache = EmbeddingCache()
  [state] = jax_backend.encode_images([image])
  cache.put(cache_key("x", jax_backend.encoder_name, image.shape[:2], image_digest(image, None)),
            state)
  for weak, cfg in cases:
    want = refine(torch_backend, RefineRequest("x", image, weak), cfg)
    got = refine(jax_backend, RefineRequest("x", image, weak, cache_key="x"), cfg, cache=cache)
    assert got.info["cache"]["hit"]  # Decoded from the pre-warmed embedding.
    assert got.info["instances"] == want.info["instances"] > 0
    np.testing.assert_array_equal(got.label, want.label, err_msg=str(cfg))
    assert [r.chosen for r in got.records] == [r.chosen for r in want.records]
  shapes = jax_backend.compiled_shapes()
  assert shapes["encoder"] == 1 and shapes["decoder"] <= 3, shapes


def test_backend_batches_images_and_prompt_sets_over_local_devices(tiny_pair):
  import jax
  from sam_bridge.api import PromptSet
  _, sd = tiny_pair
  params, spec, _ = sam_convert.convert_sam(sd)
  one = JaxSamBackend(params, spec, name="one device")
  two = JaxSamBackend(params, spec, name="two devices", devices=jax.local_devices()[:2],
                      batch_size=4)
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(3)]
  states = two.encode_images(images)  # Two calls of 2 (the last padded).
  prompts = [PromptSet.from_points(rng.uniform(0, [79, 59], (1 + i % 3, 2))) for i in range(3)]
  prompts.append(PromptSet(np.zeros((0, 2), np.float32), np.zeros(0, np.int32),
                           box=np.float32([10, 5, 50, 40])))
  for image, state in zip(images, states):
    one.set_image(image)
    two.load_image_state(state)
    np.testing.assert_allclose(state["embeddings"], one.image_state()["embeddings"], atol=1e-5)
    for a, b in zip(one.predict(prompts), two.predict(prompts)):
      np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
      assert (a.masks == b.masks).mean() > 0.999
  assert two.compiled_shapes()["encoder"] == 1
  assert all(p % 2 == 0 for p, _, _ in two.compiled_shapes()["decoder_shapes"])
  with pytest.raises(ValueError, match="jax:PATH or jax-random"):
    create_jax_backend("random:tiny")


def test_convert_and_refine_with_the_jax_backend_never_import_torch(tiny_pair, tmp_path):
  """`sesam convert DIR --format sam`, then refine with jax:FILE, in a torch-free process."""
  model, _ = tiny_pair
  model.save_pretrained(tmp_path / "sam_tiny")  # config.json + model.safetensors
  script = f"""
import sys, numpy as np
from sesam_jax import main
assert 0 == main.main(["convert", {str(tmp_path / 'sam_tiny')!r}, {str(tmp_path / 'sam.msgpack')!r},
                       "--format", "sam"])
from sam_bridge.api import RefineRequest
from sam_bridge.refine import refine
from sesam_jax.bench.sam import synthetic_scene
from sesam_jax.sam.jax_backend import create_jax_backend
backend = create_jax_backend("jax:" + {str(tmp_path / 'sam.msgpack')!r})
image, fine, coarse = synthetic_scene(64, 96, 4)
label = refine(backend, RefineRequest("x", image, coarse)).label
np.save({str(tmp_path / 'label.npy')!r}, label)
print(backend.name)
assert "torch" not in sys.modules, "torch was imported"
"""
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env=_env(), timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "sam.msgpack (sam_tiny)" in out.stdout
  params, spec, _ = sam_convert.load_sam(tmp_path / "sam.msgpack")
  want, _, _ = sam_convert.convert_sam(state_dict_numpy(model))
  assert spec == sam.sam_spec("tiny")
  for k, v in _flat(want).items():
    np.testing.assert_array_equal(_flat(params)[k], v)
  # The same label as the backend built in this process from the transformers directory.
  image, _, coarse = synthetic_scene(64, 96, 4)
  label = refine(create_jax_backend(f"jax:{tmp_path / 'sam_tiny'}"),
                 RefineRequest("x", image, coarse)).label
  np.testing.assert_array_equal(np.load(tmp_path / "label.npy"), label)


def _env():
  import os
  import pathlib
  env = dict(os.environ)
  root = str(pathlib.Path(__file__).resolve().parents[1])
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  return env


def test_bench_side_by_side_reports_both_backends_and_ratios():
  import argparse
  from sesam_jax.bench import sam as bench_sam
  parser = argparse.ArgumentParser()
  bench_sam.add_arguments(parser)
  args = parser.parse_args(["--prompts", "4", "--rounds", "1", "--data-dir", "/nonexistent",
                            "--attention", "chunked,dot_product"])
  out = bench_sam.side_by_side(args, ["jax-random:tiny", "random:tiny"])
  for attention in ("chunked", "dot_product"):  # One Flax backend per attention, same rounds.
    flax = out[f"jax-random:tiny[{attention}]"]
    assert "random weights" in flax["name"] and flax["attention"] == attention
    assert flax["compiled_shapes"]["encoder"] == 1
    ratio = out["ratios"][f"jax-random:tiny[{attention}] / random:tiny"]
    assert all(v > 0 for v in ratio.values()), ratio
