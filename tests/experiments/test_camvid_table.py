"""`sesam reproduce --table camvid`: the CPU protocol's grid (issue 25), and one of its cells run
for 20 steps on the real data (slow)."""

import collections
import json
import pathlib
import shlex

import pytest

from sesam_jax import config_lib, main
from sesam_jax.experiments import grid

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _dry_run(capsys, monkeypatch, *argv):
  monkeypatch.chdir(REPO_ROOT)
  code = main.main(["reproduce", "--table", "camvid", "--workdir-root", "/runs", *argv])
  captured = capsys.readouterr()
  assert code == 0, captured.err
  return json.loads(captured.out.strip().splitlines()[-1]), captured.err


def _row(command):
  """(weak, method, prior, seed, workdir) of a printed `sesam train` command."""
  argv = shlex.split(command)
  spec = next(a.partition("=")[2] for a in argv if a.startswith("--config="))
  config = config_lib.config_from_flags(spec, [a for a in argv if a.startswith("--config.")])
  workdir = next(a.partition("=")[2] for a in argv if a.startswith("--workdir="))
  priors = [a.partition("=")[2] for a in argv if a.startswith("--config.sam.backend=")]
  assert spec.endswith(",cpu") and config.num_steps < 10_000, "the CPU protocol"
  assert len(priors) <= 1 and (config.sam.backend if priors else "") == "".join(priors)
  return config.weak, config.method, "".join(priors), config.seed, workdir


def test_the_grid_names_each_prior_and_gives_the_spread_rows_three_seeds(capsys, monkeypatch):
  out, err = _dry_run(capsys, monkeypatch)
  rows = [_row(c) for c in out["commands"]]
  assert len(rows) == 26 and len({r[4] for r in rows}) == 26  # Each run its own workdir.
  seeds = collections.defaultdict(list)
  for weak, method, prior, seed, _ in rows:
    seeds[(weak, method, prior)].append(seed)
  three = [0, 1, 2]
  assert seeds == {
      **{(w, "supervised", ""): three if w != "scribbles" else [0]
         for w in ("points", "scribbles", "coarse")},
      **{(w, "sesam", "superpixel"): three if w != "scribbles" else [0]
         for w in ("points", "scribbles", "coarse")},
      **{(w, m, p): [0] for w in ("points", "scribbles", "coarse")
         for m, p in (("fixmatch", ""), ("sam_baseline", "superpixel"), ("sesam", "oracle"))},
      ("points", "agmm", ""): [0], ("scribbles", "agmm", ""): [0], ("fine", "supervised", ""): [0]}
  # The two priors of one row never share a workdir; the prior is in the path.
  assert ("/runs/camvid/camvid/deeplabv3plus_tiny/coarse/sesam/backend-oracle/seed0"
          in out["workdirs"])
  assert ("/runs/camvid/camvid/deeplabv3plus_tiny/coarse/sesam/backend-superpixel/seed2"
          in out["workdirs"])
  # No SAM weights, no student weights, no placeholders: --run can start as printed.
  assert out["placeholders"] == [] and out["missing"] == []
  assert "--config.init" not in " ".join(out["commands"])
  assert "SAM backend of the SAM cells" not in err  # Every SAM cell names its own.
  assert any("sam.refresh=strict and sam.view=full" in n for n in out["notes"])


def test_seeds_given_apply_to_every_row_and_runlocal_adds_to_cpu(capsys, monkeypatch):
  out, _ = _dry_run(capsys, monkeypatch, "--seeds", "0", "--runlocal")
  assert len(out["commands"]) == 18  # One seed per row: 26 less the 2 x 4 extra seeds.
  assert all(":weak=" in c and ",cpu,runlocal " in c for c in out["commands"])
  cells, _ = grid.expand("camvid", seeds=(3,), methods=["sesam"])
  assert {c.seed for c in cells} == {3} and {c.sam_backend for c in cells
                                            if c.method == "sesam"} == {"superpixel", "oracle"}


@pytest.mark.slow
def test_a_camvid_cell_trains_its_first_20_steps(shared_data, capsys, monkeypatch, tmp_path):
  """SeSAM with the superpixel prior on coarse labels, as the grid prints it, for 20 steps."""
  out, _ = _dry_run(capsys, monkeypatch, "--weak", "coarse", "--methods", "sesam")
  command = next(c for c in out["commands"] if "backend-superpixel/seed0" in c)
  argv = [a for a in shlex.split(command)[1:] if not a.startswith("--workdir=")]
  code = main.main([*argv, f"--workdir={tmp_path / 'run'}", "--config.num_steps=20",
                    "--config.log_every=10", "--config.eval.max_images=8",
                    # 16 training images: the pre-warm refines each (367: minutes of CPU).
                    "--config.dataset.max_train_images=16",
                    f"--config.data_dir={shared_data / 'camvid'}"])
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert code == 0 and result["step"] == 20 and result["val_miou"] is not None
  assert result["sam_backend"].startswith("superpixel")
  assert 0 < result["final_precision_sam"] <= 1 and result["final_coverage_sam"] > 0
  assert result["cpu_seconds"] > 0
