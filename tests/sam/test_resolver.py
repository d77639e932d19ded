"""The SAM resolver: every command's backend settings checked in one place, decoder dtype auto."""

import pytest

from sam_bridge.refine import RefineConfig
from sesam_jax import configs_common
from sesam_jax.sam import resolver


def _official_index(path, width=768, depth=12):
  """An official-layout SAM state dict of placeholder tensors: what the resolver reads."""
  torch = pytest.importorskip("torch")
  from sam_bridge.weights import official_sam_keys
  sd = {k: torch.zeros(1) for k in official_sam_keys(depth)}
  sd["image_encoder.patch_embed.proj.weight"] = torch.zeros(width, 3, 1, 1)
  torch.save(sd, path)


def test_specs_resolve_to_a_worker_or_an_in_process_backend(tmp_path):
  weights = tmp_path / "sam_vit_b_01ec64.pth"
  _official_index(weights)
  oracle = resolver.resolve("oracle")
  assert oracle.spec == "oracle" and oracle.kwargs == {} and not oracle.in_process
  rnd = resolver.resolve("random", device="cpu", decoder_dtype="float32")
  assert rnd.spec == "random:vit_b"
  assert rnd.kwargs == {"device": "cpu", "dtype": "float32", "decoder_dtype": "float32"}
  tr = resolver.resolve("transformers", str(weights), decoder_dtype="")
  assert tr.spec == f"transformers:{weights}" and "decoder_dtype" not in tr.kwargs
  jx = resolver.resolve("jax-random:tiny", decoder_dtype="bfloat16")
  assert jx.in_process and jx.kwargs == {"dtype": "float32", "decoder_dtype": "bfloat16",
                                         "attention": "auto"}


def test_the_config_names_the_flax_sam_encoders_attention():
  """`--config.sam.attention` reaches the Flax SAM (resolved for this platform there); the
  PyTorch backends keep their own attention and take no such keyword."""
  config = configs_common.base_config()
  config.sam.backend, config.sam.attention = "jax-random:tiny", "full"
  backend = resolver.from_config(config.sam)
  assert backend.kwargs["attention"] == "full" and backend.build().attention == "full"
  config.sam.attention = "auto"
  assert resolver.from_config(config.sam).build().attention == "chunked"  # This CPU.
  assert "attention" not in resolver.resolve("random:tiny", attention="full").kwargs


def test_bad_settings_name_the_flag_of_the_command():
  with pytest.raises(ValueError, match="--config.sam.checkpoint=/path"):
    resolver.resolve("transformers", flags=resolver.TRAIN_FLAGS)
  with pytest.raises(ValueError, match="give --checkpoint=/path"):
    resolver.resolve("transformers")
  with pytest.raises(FileNotFoundError, match="/nonexistent.pth not found"):
    resolver.resolve("transformers", "/nonexistent.pth")
  with pytest.raises(ValueError, match="--backend='sam9'.*choose one of oracle"):
    resolver.resolve("sam9")
  with pytest.raises(ValueError, match="--config.sam.decoder_dtype='fp8'"):
    resolver.resolve("random:tiny", decoder_dtype="fp8", flags=resolver.TRAIN_FLAGS)
  with pytest.raises(ValueError, match="--config.sam.attention='flash': choose one of chunked"):
    resolver.resolve("jax-random:tiny", attention="flash", flags=resolver.TRAIN_FLAGS)


def test_auto_decoder_dtype_follows_native_bf16(monkeypatch):
  monkeypatch.setattr(resolver, "cpu_has_native_bf16", lambda: False)
  dtype, why = resolver.auto_decoder_dtype("cpu")
  assert dtype == "float32" and "emulated" in why
  note = resolver.resolve("random:tiny").decoder_note
  assert "float32" in note and "--decoder-dtype" in note
  monkeypatch.setattr(resolver, "cpu_has_native_bf16", lambda: True)
  assert resolver.auto_decoder_dtype("cpu")[0] == "bfloat16"
  assert resolver.auto_decoder_dtype("cuda:0")[0] == "bfloat16"
  assert resolver.resolve("random:tiny").kwargs["decoder_dtype"] == "bfloat16"


def test_this_machine_and_the_training_config():
  flags = open("/proc/cpuinfo").read()
  native = "avx512_bf16" in flags or "amx_bf16" in flags
  resolver.cpu_has_native_bf16.cache_clear()
  assert resolver.auto_decoder_dtype("cpu")[0] == ("bfloat16" if native else "float32")
  config = configs_common.base_config()
  assert config.sam.decoder_dtype == "auto"
  config.weak, config.sam.k = "points", 3
  rc = resolver.refine_config(config)
  assert isinstance(rc, RefineConfig) and rc.weak_kind == "points" and rc.k == 3


def test_no_backend_stops_with_how_to_point_at_sam_weights():
  config = configs_common.base_config()
  assert config.sam.backend == ""  # Real datasets: SAM must be named (synthetic names superpixel).
  with pytest.raises(ValueError, match=r"method=sesam needs SAM and --config.sam.backend is not "
                                       r"set\. Point it at SAM weights: --config.sam.backend="
                                       r"transformers --config.sam.checkpoint=/path/to/sam"):
    resolver.from_config(config.sam, what="method=sesam")
  # What is not SAM says so wherever the run reports its backend.
  assert resolver.resolve("superpixel").description.startswith("superpixel (SAM-free prior")
  assert "oracle" in resolver.resolve("oracle").description.split("(")[1]
  assert resolver.resolve("random:tiny").description == (
      "random:tiny (random weights: for timing and tests only)")


def test_the_ablation_switches_reach_refine():
  config = configs_common.base_config()
  config.weak = "coarse"
  config.sam.update(sampling="confidence", selection="best_score", prompt="box",
                    instances=False, refined_sampling=False)
  rc = resolver.refine_config(config)
  assert (rc.sampling, rc.selection, rc.prompt, rc.instances, rc.refined_sampling) == (
      "confidence", "best_score", "box", False, False)


def test_every_kind_of_the_backend_table_resolves(tmp_path):
  weights = tmp_path / "sam_vit_b_01ec64.pth"
  _official_index(weights)
  assert list(resolver.BACKENDS) == ["oracle", "superpixel", "random", "transformers",
                                     "segment_anything", "jax", "jax-random"]
  for name, kind in resolver.BACKENDS.items():
    checkpoint = str(weights) if kind.weights == "checkpoint" else ""
    b = resolver.resolve(name, checkpoint, decoder_dtype="float32")
    assert b.kind == name and b.in_process == (kind.runs_on == "jax")
    assert resolver.runs_on(b.spec) == kind.runs_on
    assert set(b.kwargs) == set(kind.options), name  # The settings the row says it takes.
    assert resolver.needs_weights(name) == (kind.weights == "checkpoint")
    if kind.weights == "random":
      assert b.spec == f"{name}:{kind.variants[0]}"
    # What is not SAM with its own weights says so in every report; SAM weights say nothing.
    assert b.description == (f"{b.spec} ({kind.note})" if kind.note else b.spec)
    assert bool(kind.note) == (kind.weights != "checkpoint")


def test_unknown_kind_is_one_line_naming_the_flag_and_the_kinds():
  for flags, flag in ((resolver.CLI_FLAGS, "--backend"), (resolver.TRAIN_FLAGS,
                                                          "--config.sam.backend")):
    with pytest.raises(ValueError) as e:
      resolver.resolve("sam9:/w", flags=flags)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{flag}='sam9:/w': unknown backend")
    assert all(name in message for name in resolver.BACKENDS)
  assert resolver.runs_on("sam9") == "" and not resolver.needs_weights("sam9")


def test_gpu_sharing_and_benchmarks_read_the_table():
  from sesam_jax.bench import sam as bench_sam
  from sesam_jax.run import distributed
  config = configs_common.base_config()
  config.method, config.weak, config.sam.device = "sesam", "points", "cuda"
  for name, kind in resolver.BACKENDS.items():
    config.sam.backend = name
    assert distributed.bridge_shares_gpu(config) == (kind.runs_on == "torch"), name
    assert bench_sam._is_jax(f"{name}:x") == (kind.runs_on == "jax"), name


def test_every_config_file_keeps_the_papers_refresh_defaults():
  import importlib.util
  import pathlib
  files = sorted((pathlib.Path(__file__).parents[2] / "configs").glob("*.py"))
  assert files
  for path in files:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for arg in ("weak=coarse,method=sesam", "weak=points,method=sesam,runlocal"):
      sam = module.get_config(arg).sam
      # The CamVid CPU protocol (runlocal shrinks it) refreshes from the full image, and says so.
      view = "full" if path.name == "segformer_camvid.py" and "runlocal" in arg else "weak_aug"
      assert (sam.device, sam.refresh, sam.view) == ("auto", "strict", view), path.name
      assert "cache_embeddings" not in sam, path.name
