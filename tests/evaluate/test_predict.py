"""`sesam predict` on CamVid val images with the shared tiny run: labels, overlays, the same
mIoU as `sesam eval`, an export that predicts the same labels in a fresh process, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sesam_jax import main
from sesam_jax.data import camvid
from tests import fakes

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NUM_IMAGES = 3  # The tiny run evaluates the first 3 val images (eval.max_images).


@pytest.fixture(scope="module")
def val_folder(tmp_path_factory, shared_data):
  """A folder holding the first val images (links), as a user's own folder would."""
  folder = tmp_path_factory.mktemp("camvid_val_images")
  for name in sorted(os.listdir(shared_data / "camvid" / "val"))[:NUM_IMAGES]:
    os.symlink(shared_data / "camvid" / "val" / name, folder / name)
  return folder


def test_predict_folder_writes_labels_and_overlays_with_evals_miou(tiny_run, val_folder,
                                                                   tmp_path, capsys):
  run = tiny_run
  out = tmp_path / "pred"
  result = fakes.run_cli(capsys, "predict", "--workdir", run.workdir, "--input", val_folder, "--out", out,
                "--overlay", "--dataset", "camvid")
  evaluated = fakes.run_cli(capsys, "eval", f"--workdir={run.workdir}", *run.flags)
  assert result["images"] == result["labeled_images"] == evaluated["val_images"] == NUM_IMAGES
  assert result["miou"] == pytest.approx(evaluated["val_miou"], abs=1e-12)
  assert result["mode"] == "whole" and result["image_scale"] == 0.5  # the run's eval settings
  assert result["weights"] == "student" and result["step"] == run.result["step"]
  stems = sorted(p.stem for p in val_folder.iterdir())
  for stem in stems:
    label = Image.open(out / f"{stem}.png")
    assert label.mode == "P" and label.size == (480, 360)
    palette = np.asarray(label.getpalette()[:3 * 11], np.uint8).reshape(11, 3)
    np.testing.assert_array_equal(palette, camvid.COLORS)
    assert np.asarray(label).max() < 11
    overlay = np.asarray(Image.open(out / f"{stem}_overlay.jpg"))
    assert overlay.shape == (360, 480, 3)
  # The EMA teacher's weights score as eval scores the EMA.
  ema = fakes.run_cli(capsys, "predict", "--workdir", run.workdir, "--input", val_folder, "--out",
             tmp_path / "ema", "--ema", "--dataset", "camvid")
  assert ema["weights"] == "ema"
  assert ema["miou"] == pytest.approx(evaluated["val_miou_ema"], abs=1e-12)

  # The export, loaded in a fresh process without training code, predicts the same labels.
  export_dir = tmp_path / "export"
  exported = fakes.run_cli(capsys, "predict", "--workdir", run.workdir, "--export", export_dir,
                  "--input", val_folder, "--export-platforms", "cpu")
  assert exported["input_shape"] == ["b", 360, 480, 3]
  script = (
      "import sys, json, numpy as np\n"
      "from PIL import Image\n"
      "from sesam_jax.evaluate.predictor import load_predictor\n"
      "predictor = load_predictor(sys.argv[1])\n"
      "images = np.stack([np.asarray(Image.open(p).convert('RGB')) for p in sys.argv[3:]])\n"
      "np.save(sys.argv[2], predictor(images))\n"
      "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('sesam_jax.train', "
      "'sesam_jax.models', 'ml_collections', 'orbax', 'optax')))))\n")
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run([sys.executable, "-c", script, str(export_dir), str(tmp_path / "l.npy"),
                         *(str(val_folder / f"{s}.png") for s in stems)],
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
  labels = np.load(tmp_path / "l.npy")
  for stem, label in zip(stems, labels):
    np.testing.assert_array_equal(label, np.asarray(Image.open(out / f"{stem}.png")))


def test_bad_input_is_one_line_and_exit_2(tiny_run, tmp_path, capsys):
  def error(*argv):
    capsys.readouterr()
    assert main.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "sesam predict: error: " in err, err
    return err[err.index("sesam predict: error: "):]

  out = ["--out", tmp_path / "o"]
  empty = tmp_path / "no_checkpoint"
  empty.mkdir()
  (empty / "config.json").write_text((tiny_run.workdir / "config.json").read_text())
  assert str(empty / "checkpoints") in error("predict", "--workdir", empty, "--input", empty, *out)
  assert "config.json" in error("predict", "--workdir", tmp_path, "--input", empty, *out)
  images = tmp_path / "images"
  images.mkdir()
  assert str(images) in error("predict", "--workdir", tiny_run.workdir, "--input", images,
                              *out)
  (images / "broken.png").write_bytes(b"not a png")
  assert str(images / "broken.png") in error("predict", "--workdir", tiny_run.workdir,
                                             "--input", images, *out)
  assert not (tmp_path / "o").exists()


def test_every_bad_image_is_named_in_one_error_and_no_folder_is_left(tiny_run, val_folder,
                                                                     tmp_path, capsys):
  images = tmp_path / "images"
  images.mkdir()
  good = sorted(val_folder.iterdir())[0]
  os.symlink(good, images / good.name)
  (images / "corrupt.png").write_bytes(b"not a png")
  png = (images / good.name).read_bytes()
  (images / "truncated.png").write_bytes(png[:len(png) // 2])
  (images / "empty.jpg").write_bytes(b"")
  # Named as a CamVid val image, but not its size: its fine label does not fit.
  other = sorted(val_folder.iterdir())[1]
  Image.new("RGB", (64, 48)).save(images / other.name)
  bad = ["corrupt.png", "truncated.png", "empty.jpg", other.name]

  def error(out):
    capsys.readouterr()
    code = main.main(["predict", "--workdir", str(tiny_run.workdir), "--input", str(images),
                      "--out", str(out), "--dataset", "camvid"])
    assert code == 2
    err = capsys.readouterr().err
    lines = err[err.index("sesam predict: error: "):].strip().splitlines()
    assert lines[0].startswith(f"sesam predict: error: {len(bad)} of 5 input images"), err
    assert len(lines) == 1 + len(bad), err
    for name in bad:
      assert sum(str(images / name) in line for line in lines[1:]) == 1, (name, err)
    assert "64x48" in err and "--dataset" in err
    assert good.name not in err

  new = tmp_path / "new" / "pred"
  error(new)
  assert not new.parent.exists()
  kept = tmp_path / "kept"
  kept.mkdir()
  (kept / "mine.txt").write_text("keep")
  error(kept)
  assert [p.name for p in kept.iterdir()] == ["mine.txt"]
  assert (kept / "mine.txt").read_text() == "keep"


def test_image_that_fails_only_when_decoded_is_named_after_the_run(tiny_run, val_folder,
                                                                   tmp_path, capsys):
  images = tmp_path / "images"
  images.mkdir()
  good = sorted(val_folder.iterdir())[0]
  os.symlink(good, images / good.name)
  Image.open(good).convert("RGB").save(images / "cut.jpg")
  jpeg = (images / "cut.jpg").read_bytes()
  (images / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2])  # The header check passes.
  out = tmp_path / "pred"
  capsys.readouterr()
  assert main.main(["predict", "--workdir", str(tiny_run.workdir), "--input", str(images),
                    "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "sesam predict: error: 1 of 2 input images" in err and str(images / "cut.jpg") in err
  assert not out.exists() and list(tmp_path.glob(".pred*")) == []
