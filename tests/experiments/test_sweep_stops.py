"""A cell of `sesam reproduce --run` stopped by a signal (its `sesam train` checkpointed and exited
143 or 130) stops the sweep with the same exit code and the resume hint; it is not a failure."""

import os
import pathlib
import signal
import stat
import threading
import time

import pytest

from sesam_jax.experiments import grid, sweep
from tests import fakes

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("code", [143, 130])
def test_a_stopped_cell_stops_the_sweep(tmp_path, capsys, code):
  cells, _ = grid.expand("table2", datasets=["synthetic"], students=["segformer"],
                         weak=["points"], methods=["supervised", "fixmatch"])
  plans, _ = sweep.plan_cells(cells, root=str(tmp_path / "runs"),
                              configs_dir=str(REPO_ROOT / "configs"), sam_backend="superpixel",
                              extra=[f"--config.model={fakes.TEST_MODEL}"])
  assert len(plans) >= 2
  # An interpreter whose `sesam train` was stopped by a signal.
  stopped = tmp_path / "python"
  stopped.write_text(f"#!/bin/sh\necho 'sesam train: stopped at step 3; run the same command to "
                     f"resume'\nexit {code}\n")
  stopped.chmod(stopped.stat().st_mode | stat.S_IEXEC)
  with pytest.raises(Exception) as e:
    sweep.run_plans(plans, python=str(stopped), keep_going=True)
  assert getattr(e.value, "exit_code", None) == code
  assert str(e.value) == (f"stopped in cell 1/{len(plans)} ({plans[0].workdir}); run the same "
                          "command to resume")
  assert not pathlib.Path(plans[1].workdir).exists()  # The next cells were not started.


def test_sigterm_to_the_sweep_reaches_the_cell(tmp_path):
  """`kill <sweep>` stops the running cell with a checkpoint (exit 143), not the sweep alone."""
  cells, _ = grid.expand("table2", datasets=["synthetic"], students=["segformer"],
                         weak=["points"], methods=["supervised"])
  plans, _ = sweep.plan_cells(cells, root=str(tmp_path / "runs"),
                              configs_dir=str(REPO_ROOT / "configs"), sam_backend="superpixel",
                              extra=[f"--config.model={fakes.TEST_MODEL}"])
  # A `sesam train` that exits 143 when it gets SIGTERM, after telling the test it started.
  started, child = tmp_path / "started", tmp_path / "python"
  child.write_text(f"#!/bin/sh\ntrap 'echo stopped; exit 143' TERM\ntouch {started}\n"
                   "while true; do sleep 0.1; done\n")
  child.chmod(child.stat().st_mode | stat.S_IEXEC)

  def kill_the_sweep():
    for _ in range(200):
      if started.exists():
        break
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)
  threading.Thread(target=kill_the_sweep, daemon=True).start()
  with pytest.raises(Exception) as e:
    sweep.run_plans(plans, python=str(child))
  assert getattr(e.value, "exit_code", None) == 143
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # The sweep's handler is removed.
