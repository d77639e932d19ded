"""Bad SAM weights give one line naming the file (and the command's flag) and exit code 2 in
every entry point: a missing file, a file that is not a PyTorch checkpoint, a state dict without
SAM's keys (the first missing one named), a ViT width that is not the variant the name says.
The check reads names and shapes only, without torch; the worker turns what it finds at load time
into the same one line."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sam_bridge import weights
from sam_bridge.api import RefineRequest, SamSetupError
from sam_bridge.refine import RefineConfig
from sam_bridge.service import RefineService
from tests.sam_fakes import make_box_backend
from sesam_jax import main

torch = pytest.importorskip("torch")

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = dict(img_size=128, prompt_embed_dim=32, window_size=4, decoder_mlp_dim=64, decoder_heads=2,
            iou_head_hidden_dim=32)


@pytest.fixture(scope="module")
def official_tiny(tmp_path_factory):
  """A real official-format state dict (segment_anything's modules, random weights), saved."""
  from sam_bridge.backends.official_loader import build_official_sam
  sd = build_official_sam("tiny", **TINY).state_dict()
  path = tmp_path_factory.mktemp("weights") / "sam_tiny.pth"
  torch.save(sd, path)
  return sd, path


def test_the_official_keys_are_the_official_modules(official_tiny):
  sd, path = official_tiny
  assert list(sd) == weights.official_sam_keys(2)
  assert weights.check_weights(path, "transformers") == "width 64"


def test_bad_files_are_named_in_one_line(official_tiny, tmp_path):
  sd, _ = official_tiny

  def fails(path, kind="transformers", match=""):
    with pytest.raises(SamSetupError, match=match) as e:
      weights.check_weights(path, kind, flag="--checkpoint")
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert "(--checkpoint)" in str(e.value)
    return str(e.value)

  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(os.urandom(4096))
  fails(garbage, match="is not a PyTorch checkpoint|are not a PyTorch checkpoint")
  html = tmp_path / "sam_vit_b_01ec64.pth"
  html.write_text("<html>404 Not Found</html>")  # What a failed download often saves.
  fails(html, match="not a PyTorch checkpoint")
  whole = (tmp_path / "whole.pth")
  torch.save(sd, whole)
  cut = tmp_path / "cut.pth"
  cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
  fails(cut, match="cut short")
  missing = dict(sd)
  del missing["image_encoder.blocks.1.attn.qkv.weight"]
  torch.save(missing, tmp_path / "missing.pth")
  fails(tmp_path / "missing.pth", match="key 'image_encoder.blocks.1.attn.qkv.weight' is missing")
  torch.save({"model": sd}, tmp_path / "wrapped.pth")
  fails(tmp_path / "wrapped.pth", match="key 'image_encoder.pos_embed' is missing.*first keys: "
                                        "model")
  torch.save(sd, tmp_path / "sam_vit_l_0b3195.pth")  # A ViT of width 64 under ViT-L's name.
  fails(tmp_path / "sam_vit_l_0b3195.pth", match="width 64.*not the vit_l its name says")
  torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
  assert weights.check_weights(tmp_path / "legacy.pth", "transformers") == "width 64"
  (tmp_path / "dir").mkdir()
  fails(tmp_path / "dir", match="has no config.json")
  (tmp_path / "dir" / "config.json").write_text(json.dumps({"model_type": "sam"}))
  (tmp_path / "dir" / "model.safetensors").write_bytes(b"\xff" * 64)
  fails(tmp_path / "dir", match="not a readable safetensors file")
  fails(tmp_path / "nowhere.pth", match="not found")


def test_the_check_never_imports_torch(official_tiny):
  _, path = official_tiny
  code = ("import sys; from sesam_jax.sam import resolver; "
          f"print(resolver.resolve('transformers', {str(path)!r}).spec); "
          "assert 'torch' not in sys.modules")
  run = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)),
                       capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-2000:]


def _one_line_exit_2(capsys, argv, *, flag):
  code = main.main([str(a) for a in argv])
  err = capsys.readouterr().err
  assert code == 2, err[-2000:]
  lines = [line for line in err.strip().splitlines() if line.startswith("sesam ")]
  assert len(lines) == 1 and "Traceback" not in err and f"({flag})" in lines[0]
  return lines[0]


def test_every_entry_point_gives_one_line_and_writes_nothing(official_tiny, tmp_path, capsys):
  garbage = tmp_path / "sam_vit_b_01ec64.pth"
  garbage.write_bytes(os.urandom(4096))
  out = tmp_path / "out"
  refine = ["refine", "--dataset", "synthetic", "--num-images", "1", "--size", "64", "64",
            "--weak", "points", "--out", out, "--backend", "transformers"]
  for extra in ((), ("--service",)):
    line = _one_line_exit_2(capsys, refine + ["--checkpoint", garbage, *extra], flag="--checkpoint")
    assert "not a PyTorch checkpoint" in line
    line = _one_line_exit_2(capsys, refine + ["--checkpoint", tmp_path / "no.pth", *extra],
                            flag="--checkpoint")
  _one_line_exit_2(capsys, ["demo", "--out", out, "--sam-checkpoint", garbage, "--no-train"],
                   flag="--sam-checkpoint")
  run_dir = tmp_path / "run"
  line = _one_line_exit_2(capsys, [
      "train", f"--config={REPO / 'configs' / 'segformer_synthetic.py'}:weak=points,method=sesam",
      f"--workdir={run_dir}", "--config.sam.backend=transformers",
      f"--config.sam.checkpoint={garbage}"], flag="--config.sam.checkpoint")
  assert "sesam train: error: SAM weights" in line
  assert not out.exists() and not run_dir.exists()


@pytest.mark.slow
def test_weights_that_fail_to_load_in_the_worker_give_one_line(official_tiny, tmp_path, capsys):
  """A file the index check accepts but the backend cannot build (a non-official width): the
  worker's SamSetupError arrives as the same single line, naming train's flag."""
  _, path = official_tiny
  run_dir = tmp_path / "run"
  line = _one_line_exit_2(capsys, [
      "train", f"--config={REPO / 'configs' / 'segformer_synthetic.py'}:weak=points,method=sesam",
      f"--workdir={run_dir}", "--config.sam.backend=transformers",
      f"--config.sam.checkpoint={path}", "--config.dataset.num_train_images=4",
      "--config.dataset.image_size=48,64"], flag="--config.sam.checkpoint")
  assert "cannot be loaded (cannot infer encoder heads for width 64" in line
  assert not run_dir.exists()


def test_the_worker_ignores_ctrl_c():
  """A terminal's Ctrl-C reaches the whole process group; the trainer decides when the worker
  stops (after its checkpoint), so the worker must survive it."""
  with RefineService(backend_factory=make_box_backend, config=RefineConfig(weak_kind="coarse"),
                     start_timeout_s=120) as service:
    os.kill(service._proc.pid, signal.SIGINT)
    time.sleep(0.5)
    weak = np.full((16, 16), 255, np.uint8)
    weak[4:8, 4:8] = 1
    service.submit(RefineRequest("a", np.zeros((16, 16, 3), np.uint8), weak))
    assert service.get("a").label.shape == (16, 16)
    assert service._proc.is_alive() and service.stats["restarts"] == 0
