"""`sesam reproduce`'s inputs: student weights recognised by content and converted once, each
cell's init, the paper's weak labels where the user has them, and one list of what is missing."""

import json
import os
import pathlib

import numpy as np
import pytest

from sesam_jax import main
from sesam_jax.experiments import grid, label_grid, label_sources, sweep, weights
from sesam_jax.models import conversion

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
MIT_B0 = {"model_type": "segformer", "depths": [2, 2, 2, 2], "hidden_sizes": [32, 64, 160, 256]}


def _reproduce(capsys, *argv):
  """`sesam reproduce` in-process: (exit code, command lines, JSON or error, stderr)."""
  code = main.main(["reproduce", *argv])
  captured = capsys.readouterr()
  lines = captured.out.strip().splitlines()
  return code, lines[:-1], json.loads(lines[-1]), captured.err


def _hf_folder(path, config):
  """A `transformers`-style folder: config.json and a weights file (content unread here)."""
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps(config))
  (path / "model.safetensors").write_bytes(b"")


def _torchvision_resnet101(path):
  """A safetensors file with torchvision ResNet-101 key names (tiny tensors: names tell depth)."""
  from safetensors.numpy import save_file
  keys = {"conv1.weight": np.zeros((1,), np.float32)}
  for stage, blocks in enumerate((3, 4, 23, 3), 1):
    keys.update({f"layer{stage}.{b}.conv1.weight": np.zeros((1,), np.float32)
                 for b in range(blocks)})
  save_file(keys, str(path))


@pytest.fixture
def weights_dir(tmp_path):
  root = tmp_path / "weights"
  _hf_folder(root / "mit-b0", MIT_B0)
  _torchvision_resnet101(root / "resnet101-63fe2227.safetensors")
  (root / "README.txt").write_text("downloaded by hand")
  return root


def test_scan_recognises_each_backbone_by_content(weights_dir):
  found, notes = weights.scan(weights_dir)
  assert sorted(found) == ["deeplabv3plus_r101", "segformer_b0"]
  assert found["segformer_b0"].fmt == "hf" and found["deeplabv3plus_r101"].fmt == "torchvision"
  assert found["segformer_b0"].path.endswith("mit-b0/model.safetensors")
  assert len(notes) == 1 and "README.txt" in notes[0]
  assert weights.state_dict_format(["backbone.patch_embed1.proj.weight"]) == "mmseg"
  with pytest.raises(FileNotFoundError, match="--weights"):
    weights.scan(weights_dir / "nope")


def test_prepare_converts_once_and_a_converted_file_is_used_as_it_is(tmp_path):
  transformers = pytest.importorskip("transformers")
  from sesam_jax.bench import parity
  folder = tmp_path / "weights" / "my-mit"
  config = transformers.SegformerConfig(**parity.SEGFORMER_HF_CONFIGS["tiny"])
  transformers.SegformerModel(config).save_pretrained(str(folder))
  found, _ = weights.scan(tmp_path / "weights")
  assert list(found) == ["segformer_tiny"]
  cache = tmp_path / "cache"
  out = weights.prepare(found, {"segformer_tiny"}, cache)
  assert out == {"segformer_tiny": str(cache / "segformer_tiny.msgpack")}
  variables, meta = conversion.load_converted(out["segformer_tiny"])
  assert meta["model"] == "segformer_tiny" and meta["scope"] == "encoder" and variables["params"]
  stamp = os.path.getmtime(out["segformer_tiny"])
  assert weights.prepare(found, {"segformer_tiny"}, cache) == out  # Reused, not converted again.
  assert os.path.getmtime(out["segformer_tiny"]) == stamp
  # The converted file placed in the weights folder is recognised and used without conversion.
  os.replace(out["segformer_tiny"], tmp_path / "weights" / "mine.msgpack")
  found, _ = weights.scan(tmp_path / "weights")
  assert found["segformer_tiny"].converted
  assert weights.prepare(found, {"segformer_tiny"}, cache) == {
      "segformer_tiny": str(tmp_path / "weights" / "mine.msgpack")}


def test_every_cell_gets_its_students_init(capsys, monkeypatch, weights_dir, tmp_path):
  monkeypatch.chdir(REPO_ROOT)
  root = tmp_path / "runs"
  code, commands, out, err = _reproduce(
      capsys, "--table", "2", "--dataset", "cityscapes", "--student", "all", "--weights",
      str(weights_dir), "--workdir-root", str(root))
  assert code == 0 and len(commands) == 32  # 16 cells per column (AGMM* included), 2 students
  for command in commands:
    model = "segformer_b0" if "segformer_cityscapes" in command else "deeplabv3plus_r101"
    assert f"--config.init={root}/pretrained/{model}.msgpack" in command
  assert {c["init"] for c in out["cells"]} == {"pretrained"}
  assert f"init pretrained ({root}/pretrained/segformer_b0.msgpack)" in err
  assert not any("student weights" in m for m in out["missing"])
  assert not (root / "pretrained").exists()  # The dry run converts nothing.


def test_run_lists_everything_missing_at_once(capsys, monkeypatch, tmp_path):
  monkeypatch.chdir(REPO_ROOT)
  empty = tmp_path / "weights"
  empty.mkdir()
  code, _, out, err = _reproduce(
      capsys, "--table", "1", "--weights", str(empty), "--sam-checkpoint",
      str(tmp_path / "sam_vit_b_01ec64.pth"), "--data-dir", f"voc={tmp_path / 'voc'}",
      "--scribbles", f"voc={tmp_path / 'scribblesup'}", "--workdir-root", str(tmp_path / "r"),
      "--run")
  last = err.strip().splitlines()[-1]
  assert code == 2 and out["exit_code"] == 2 and "missing 4 input(s)" in last
  for item in (f"no deeplabv3plus_r101 weights in {empty}", "sam_vit_b_01ec64.pth not found",
               f"{tmp_path / 'voc'}: no such folder", f"{tmp_path / 'scribblesup'}: no such"):
    assert item in last
  assert not (tmp_path / "r").exists()
  # Random students are asked for: the weights are no longer missing.
  code, _, out, err = _reproduce(
      capsys, "--table", "1", "--random-init", "--sam-checkpoint", str(tmp_path / "sam.pth"),
      "--workdir-root", str(tmp_path / "r"), "--run")
  assert code == 2 and "student weights" not in err.strip().splitlines()[-1]


def test_weak_labels_auto_paper_generated(capsys, monkeypatch, tmp_path):
  monkeypatch.chdir(REPO_ROOT)
  data = tmp_path / "cityscapes"
  data.mkdir()
  base = ["--table", "2", "--dataset", "cityscapes", "--weak", "coarse,scribbles,points",
          "--methods", "supervised", "--random-init", "--data-dir", f"cityscapes={data}"]
  # auto without gtCoarse or scribbles: generated, with a note per kind.
  code, commands, out, _ = _reproduce(capsys, *base)
  assert code == 0 and not any("weak_source" in c for c in commands)
  assert any(f"no {data}/gtCoarse/train" in n for n in out["notes"])
  assert any(n.startswith("points: made from the fine labels") and "protocol" in n
             for n in out["notes"])
  # paper: each missing folder is an error naming it and its flag.
  code, _, out, _ = _reproduce(capsys, *base, "--weak-labels", "paper")
  assert code == 2 and "gtCoarse" in out["error"] and "--scribbles cityscapes=DIR" in out["error"]
  # The folders present: the paper's labels, recorded per cell.
  (data / "gtCoarse" / "train").mkdir(parents=True)
  scribbles = tmp_path / "s4a"
  scribbles.mkdir()
  code, commands, out, _ = _reproduce(capsys, *base, "--weak-labels", "paper", "--scribbles",
                                      str(scribbles))
  assert code == 0
  sources = {c["workdir"].split("/")[-3]: c["weak_source"] for c in out["cells"]}
  assert sources == {"coarse": "cityscapes_coarse", "scribbles": "scribble_png",
                     "points": "generated", "fine": "generated"}
  assert any(f"--config.weak_source=scribble_png:{scribbles}" in c for c in commands)
  # generated: always made from the fine labels.
  code, commands, _, _ = _reproduce(capsys, *base, "--weak-labels", "generated", "--scribbles",
                                    str(scribbles))
  assert code == 0 and not any("weak_source" in c for c in commands)


def test_scribble_reader_follows_the_folders_content(tmp_path):
  (tmp_path / "2007_000032.xml").write_text("<annotation/>")
  choice = label_sources.choose("voc", "scribbles", scribbles=str(tmp_path))
  assert choice.spec == f"scribblesup_xml:{tmp_path}" and not choice.missing
  assert label_sources.source_name(choice.spec) == "scribblesup_xml"
  assert label_sources.choose("ade20k", "coarse", mode="paper").spec == ""
  assert label_sources.parse_scribbles(["voc=/a", "/b"], ["cityscapes"]) == {
      "voc": "/a", "cityscapes": "/b"}
  with pytest.raises(ValueError, match="--weak-labels"):
    label_sources.choose("voc", "points", mode="published")
  assert sweep.INIT_PLACEHOLDER.format(model="m").endswith("m.msgpack")


def test_table5_refines_with_each_sam_version_and_reports_precision_recall(capsys, monkeypatch,
                                                                         tmp_path):
  monkeypatch.chdir(REPO_ROOT)
  data = tmp_path / "cityscapes"
  (data / "gtCoarse" / "val").mkdir(parents=True)
  sam = tmp_path / "sam_vit_b_01ec64.pth"
  sam.write_bytes(b"")
  (tmp_path / "sam2").mkdir()
  root = tmp_path / "runs"
  base = ["--table", "5", "--data-dir", f"cityscapes={data}", "--workdir-root", str(root),
          "--sam-checkpoint", str(sam), "--sam2-checkpoint", str(tmp_path / "sam2")]
  code, commands, out, _ = _reproduce(capsys, *base)
  assert code == 0 and len(commands) == 3 and all(c.startswith("sesam refine ") for c in commands)
  assert all("--split val --weak coarse" in c and "--weak-source cityscapes_coarse" in c
             for c in commands)
  assert out["missing"] == ["SAM 3 checkpoint (the transformers folder of facebook/sam3: give "
                            "--sam3-checkpoint PATH)"]
  code, _, out, _ = _reproduce(capsys, *base, "--run")
  assert code == 2 and "--sam3-checkpoint" in out["error"]
  # A stand-in `sesam refine` (the interpreter the sweep starts) prints its JSON result.
  (tmp_path / "sam3").mkdir()
  fake = tmp_path / "python"
  fake.write_text('#!/bin/sh\necho \'{"precision": 0.9, "recall": 0.6, "f1": 0.72, '
                  '"images": 3, "weak_source": "cityscapes_coarse"}\'\n')
  fake.chmod(0o755)
  cells, _ = grid.expand("table5")
  plans = label_grid.plan_cells(cells, root=str(root), checkpoints={}, data_dirs={},
                                weak_sources={})
  assert [r["status"] for r in label_grid.run_plans(plans[:2], python=str(fake))] == ["ran"] * 2
  assert [r["status"] for r in label_grid.run_plans(plans, python=str(fake))] == [
      "skipped", "skipped", "ran"]
  code = main.main(["report", str(root / "table5")])
  text = capsys.readouterr().out
  assert code == 0 and "| | SAM ViT-B | SAM 2.1 Hiera-B+ | SAM 3 |" in text
  assert "| Precision | 90.0 (paper 92.2, -2.2) | 90.0 (paper 92.8, -2.8) |" in text
