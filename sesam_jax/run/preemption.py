"""Stopping a training on SIGTERM or Ctrl-C at a step boundary, with a checkpoint to resume from.

A preemptible TPU VM or a cluster scheduler sends SIGTERM before it takes the machine; a person
presses Ctrl-C. Either way `StopRequest` notes the signal, the loop finishes the step it is in,
checkpoints, closes the SAM bridge and raises `report.Stopped` (before the first step, when
there is nothing new to checkpoint, it stops at once), and `sesam` prints
`stopped at step N; run the same command to resume` and exits with 128 + the signal's number
(143, 130), so the scheduler sees an interrupted job. A Ctrl-C after the first signal exits at
once (130, no checkpoint: the last committed one stays); a repeated SIGTERM changes nothing.

Several processes (a multi-host run) must stop at the same step, or the collective save would
hang. There the agreement is JAX's preemption sync point
(`multihost_utils.reached_preemption_sync_point`, set up by `jax.distributed.initialize`): JAX's
coordination service hears a SIGTERM sent to any process (its own handler, so this module leaves
SIGTERM alone there), and every process's call for the same step returns True at the first step
all of them can reach. Ctrl-C on one process is turned into that SIGTERM. A process that got no
signal itself stops with 143: the run was preempted. Without JAX's preemption service
(`jax_enable_preemption_service=False`) each process only sees its own signals.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import jax
from jax._src import distributed as jax_distributed  # Holds jax.distributed's state.
from jax.experimental import multihost_utils

from sesam_jax import report


def _signal_name(signum: int) -> str:
  return signal.Signals(signum).name


def _preemption_service() -> bool:
  """Whether this is one of several processes with JAX's preemption sync manager running."""
  if jax.process_count() == 1:
    return False
  try:
    return jax_distributed.global_state.preemption_sync_manager is not None
  except AttributeError:
    return False


class StopRequest:
  """The signal handlers of one training run (a context manager) and the step-boundary check.

  Args:
    multiprocess: whether several processes must agree (JAX's preemption sync point); None
      decides from `jax.process_count()`.
  """

  def __init__(self, multiprocess: bool | None = None) -> None:
    if multiprocess is None:
      multiprocess = _preemption_service()
    self.multiprocess = multiprocess
    self.signum: int | None = None  # the first signal this process received
    self.stepping = False  # the loop runs: a signal waits for the step boundary
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is not threading.main_thread():
      return self  # Signal handlers live in the main thread (tests call train from others).
    signals = [signal.SIGINT] if self.multiprocess else [signal.SIGINT, signal.SIGTERM]
    for signum in signals:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc: Any) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame: Any) -> None:
    if self.signum is not None:
      if signum != signal.SIGINT:
        return  # Already stopping; a repeated SIGTERM (a sweep forwarding one) changes nothing.
      sys.stderr.write("\nCtrl-C again: exiting at once, without a checkpoint (the last committed "
                       "one is kept).\n")
      sys.stderr.flush()
      os._exit(128 + signum)  # Ctrl-C after a first signal: leave now.
    self.signum = signum
    if not self.stepping and not self.multiprocess:
      # Before the first step (data check, SAM start and pre-warm, restore) there is nothing new
      # to checkpoint, and that work can take long: stop now, as Ctrl-C would.
      raise report.Stopped("stopped before the first step; run the same command to resume",
                           128 + signum)
    again = "Ctrl-C again" if signum == signal.SIGINT else "Ctrl-C"
    sys.stderr.write(f"\n{_signal_name(signum)}: stopping after this step, with a checkpoint "
                     f"({again} exits at once, without it).\n")
    sys.stderr.flush()
    if self.multiprocess and signum != signal.SIGTERM:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's handler tells every process.

  def begin_steps(self) -> None:
    """From now on a signal stops the run at the next step boundary, with a checkpoint."""
    self.stepping = True

  def should_stop(self, step: int) -> bool:
    """Whether to stop after `step` (every process gets the same answer for the same step).

    Called once per step by every process, with the number of steps done.
    """
    if not self.multiprocess:
      return self.signum is not None
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # The preemption service is disabled (jax_enable_preemption_service).
      return self.signum is not None

  def stopped(self, step: int) -> report.Stopped:
    """The exception that ends the run at `step` (a checkpoint of `step` is committed)."""
    signum = self.signum if self.signum is not None else signal.SIGTERM
    return report.Stopped(f"stopped at step {step}; run the same command to resume",
                          128 + signum)
