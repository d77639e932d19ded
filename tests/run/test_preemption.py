"""SIGTERM and Ctrl-C stop a SeSAM run at the next step boundary with a checkpoint, exit 143/130,
and the same command resumes it: state, data position and SAM bank from that step, one metrics
row per step. The children run `tests/train/test_sesam_resume.py`'s harness (it records each
step's batch indices and asserts that torch never loads in the trainer), paused at a known step
until the signal has arrived, so the stop step is exact."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from sesam_jax import report
from sesam_jax.run import preemption, workdir as workdir_lib
from tests import fakes
from tests.train.test_sesam_resume import CONFIG, OVERRIDES, REPO, _expected_indices

# Runs before the harness: step PAUSE_AT's batch waits (up to 60 s) for a stop signal.
_PAUSE = """
import os, sys, time
sys.path.insert(0, {repo!r})
from sesam_jax.data import feed as _feed
from sesam_jax.run import preemption as _preemption
_signals = []
_paused_handle = _preemption.StopRequest._handle
def _noting_handle(self, signum, frame):
  _signals.append(signum)
  _paused_handle(self, signum, frame)
_preemption.StopRequest._handle = _noting_handle
_paused_next = _feed.Feed.next
def _pausing_next(self, step):
  if step == int(os.environ.get("PAUSE_AT", "-1")):
    print("AT", step, flush=True)
    for _ in range(600):
      if _signals:
        print("GOT", _signals[0], flush=True)
        break
      time.sleep(0.1)
  return _paused_next(self, step)
_feed.Feed.next = _pausing_next
"""


def _start(workdir, indices, pause_at=None):
  env = dict(os.environ, PYTHONPATH=REPO, INDICES=str(indices))
  if pause_at is not None:
    env["PAUSE_AT"] = str(pause_at)
  code = _PAUSE.format(repo=REPO) + fakes.CHILD.format(repo=REPO)
  # A session of its own: the SIGINT test signals the whole group, as a terminal's Ctrl-C does.
  return subprocess.Popen([sys.executable, "-c", code, "train", f"--config={CONFIG}",
                           f"--workdir={workdir}", *OVERRIDES], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)


def _stop_at_step_2(workdir, indices, signum, *, group):
  """Runs until step 2's batch is read, signals, and returns (exit code, stderr)."""
  child = _start(workdir, indices, pause_at=2)
  try:
    line = child.stdout.readline()
    assert line.startswith("AT 2"), child.communicate()[1][-3000:]
    if group:
      os.killpg(child.pid, signum)  # The trainer and its SAM worker, like Ctrl-C in a terminal.
    else:
      child.send_signal(signum)
    out, err = child.communicate(timeout=300)
  finally:
    if child.poll() is None:
      child.kill()
      child.wait()
  assert "NO TORCH" in out
  return child.returncode, err


def _resume_and_check(workdir, indices):
  """The same command again: it resumes at step 3 and ends where an uninterrupted run ends."""
  resumed = _start(workdir, indices)
  out, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err[-3000:]
  assert "at step 3" in err and "NO TORCH" in out
  result = json.loads(out.strip().splitlines()[-2])
  assert result["step"] == 4
  # The bank came back from step 3: every image has its SAM label, none was pre-warmed again.
  assert result["prewarmed"] == 0 and result["sam/images_with_sam_label"] == 8
  # The data position came back: steps 0-2 before the stop, step 3 after it, as uninterrupted.
  rows = [json.loads(line) for line in open(indices)]
  assert [s for s, _ in rows] == [0, 1, 2, 3]
  assert [idx for _, idx in rows] == _expected_indices(4)
  # One metrics row per step (log_every=1), the stopped run's and the resumed run's together.
  train_rows = [r["step"] for r in map(json.loads, open(workdir / "metrics.jsonl"))
                if any(k.startswith("train/") for k in r)]
  assert train_rows == [1, 2, 3, 4]


def test_sigterm_checkpoints_at_the_step_boundary_and_resumes(tmp_path):
  workdir, indices = tmp_path / "run", tmp_path / "indices.jsonl"
  code, err = _stop_at_step_2(workdir, indices, signal.SIGTERM, group=False)
  assert code == 143, err[-3000:]
  assert err.strip().splitlines()[-1] == ("sesam train: stopped at step 3; run the same command "
                                          "to resume")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "3"]
  assert {"state", "data", "sam_bank", "clock"} <= set(os.listdir(workdir / "checkpoints" / "3"))
  assert not (workdir / "result.json").exists() and not (workdir / "train.lock").exists()
  _resume_and_check(workdir, indices)


@pytest.mark.slow  # The same stop as SIGTERM's test (default suite), through SIGINT.
def test_ctrl_c_checkpoints_at_the_step_boundary_and_resumes(tmp_path):
  workdir, indices = tmp_path / "run", tmp_path / "indices.jsonl"
  code, err = _stop_at_step_2(workdir, indices, signal.SIGINT, group=True)
  assert code == 130, err[-3000:]
  assert "stopped at step 3; run the same command to resume" in err
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "3"]
  _resume_and_check(workdir, indices)


def _signal_self(signum):
  os.kill(os.getpid(), signum)
  time.sleep(0.5)  # The handler runs in this (main) thread, between two bytecodes of the sleep.


def test_a_signal_before_the_first_step_stops_at_once(tmp_path):
  """Before the loop (data check, SAM pre-warm, restore) there is nothing new to checkpoint: the
  run stops at once, and a workdir it created is removed. In the loop it waits for the step."""
  run_dir = tmp_path / "new"
  with pytest.raises(report.Stopped) as stopped:
    with workdir_lib.RunDir(run_dir), preemption.StopRequest(multiprocess=False) as stop:
      assert signal.getsignal(signal.SIGTERM) == stop._handle
      _signal_self(signal.SIGTERM)
  assert stopped.value.exit_code == 143 and "before the first step" in str(stopped.value)
  assert not run_dir.exists()
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # Handlers restored.
  with preemption.StopRequest(multiprocess=False) as stop:
    stop.begin_steps()
    assert not stop.should_stop(4)
    _signal_self(signal.SIGTERM)
    _signal_self(signal.SIGTERM)  # Repeated (a sweep forwarding one): nothing changes.
    assert stop.should_stop(5)
    end = stop.stopped(5)
  assert end.exit_code == 143
  assert str(end) == "stopped at step 5; run the same command to resume"


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(tmp_path):
  workdir, indices = tmp_path / "run", tmp_path / "indices.jsonl"
  child = _start(workdir, indices, pause_at=0)
  try:
    assert child.stdout.readline().startswith("AT 0"), child.communicate()[1][-3000:]
    child.send_signal(signal.SIGINT)
    assert child.stdout.readline().startswith("GOT")  # The first one was handled.
    child.send_signal(signal.SIGINT)  # During step 0: no boundary is reached.
    _, err = child.communicate(timeout=120)
  finally:
    if child.poll() is None:
      child.kill()
      child.wait()
  assert child.returncode == 130
  assert "Ctrl-C again: exiting at once" in err
  assert os.listdir(workdir / "checkpoints") == []  # Nothing written on the way out.


# Two processes of one JAX job (CPU, coordinator on this machine) stepping at different speeds;
# only one of them is signalled. Every process must stop at the same step.
_TWO = """
import os, sys, time
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, {repo!r})
import jax
index = int(sys.argv[1])
jax.distributed.initialize(coordinator_address="127.0.0.1:" + sys.argv[2], num_processes=2,
                           process_id=index)
from sesam_jax import report
from sesam_jax.run import preemption
with preemption.StopRequest() as stop:
  assert stop.multiprocess
  try:
    for n in range(1, 1000):
      time.sleep(0.05 if index == 0 else 0.08)
      if n == 10:
        print("STEPPING", flush=True)
      if stop.should_stop(n):
        raise stop.stopped(n)
  except report.Stopped as e:
    print("STOPPED", e, flush=True)
    sys.exit(e.exit_code)
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_two_processes_stop_at_the_same_step(signum):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, "-c", _TWO.format(repo=REPO), str(i), str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    assert procs[1].stdout.readline().startswith("STEPPING"), procs[1].communicate()[1][-3000:]
    procs[1].send_signal(signum)
    outs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  stops = [next(line for line in out.splitlines() if line.startswith("STOPPED")) for out in outs]
  assert stops[0] == stops[1]  # "STOPPED stopped at step N; ...": the same N.
  assert procs[1].returncode == 128 + signum and procs[0].returncode == 143
