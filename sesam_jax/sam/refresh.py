"""How a SeSAM run's SAM refreshes went: due, done, skipped, and the age of the labels used.

The label bank (`sam/bank.py`) tells a `RefreshCounter` which examples were due for a refresh
at each step (`note_due`) and, once the step that uses them is about to run, which of them got
a label made for that step (`settle`); each batch's label ages are noted as it is joined
(`note_ages`). Everything is counted in examples. An async run (`sam.refresh=async`) whose
skipped share over the last `WARN_WINDOW` steps passes `WARN_SHARE` says so in one line, once,
naming the settings that help (`sam.wait_s`, `sam.device`).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
from typing import Any

from sesam_jax import report

WARN_SHARE = 0.10  # skipped / due over the window that makes an async run warn
WARN_WINDOW = 100  # steps


class RefreshCounter:
  """Counts refreshes due / done / skipped and label ages, in examples.

  Args:
    refresh: "strict" or "async" (only async warns).
    refresh_every: M (the warning waits for M steps of history).
    wait_s: `sam.wait_s`, for the warning.
    device: `sam.device` as it runs, for the warning.
  """

  def __init__(self, refresh: str, refresh_every: int, wait_s: float, device: str = "") -> None:
    self.refresh, self.refresh_every, self.wait_s, self.device = (refresh, refresh_every,
                                                                  wait_s, device)
    self.counts: collections.Counter = collections.Counter()  # due, done, skipped
    self.age_sum, self.age_count = 0, 0        # label ages in steps, over every example
    self.last_age: float | None = None         # the mean age of the last batch's labels
    self._due: collections.deque[tuple[int, list[int]]] = collections.deque()
    self._window: collections.deque[tuple[int, int]] = collections.deque(maxlen=WARN_WINDOW)
    self.warned = False

  def note_due(self, step: int, indices: list[int]) -> None:
    """The images (source indices) whose refresh was due at `step`."""
    if indices:  # Counted once settled: a batch read ahead of the run's end never is.
      self._due.append((int(step), list(indices)))

  def due_by(self, step: int) -> Iterator[int]:
    """The indices due at `step` or before and not settled yet."""
    for s, indices in self._due:
      if s <= step:
        yield from indices

  def settle(self, step: int, label_step: Mapping[int, int]) -> None:
    """Counts the refreshes due by `step`: done where the image's label was made for the
    step it was due at (`label_step`: index -> that step), skipped otherwise."""
    while self._due and self._due[0][0] <= step:
      due_step, indices = self._due.popleft()
      done = sum(label_step.get(i) == due_step for i in indices)
      self.counts["due"] += len(indices)
      self.counts["done"] += done
      self.counts["skipped"] += len(indices) - done
      self._window.append((len(indices), len(indices) - done))
    due = sum(d for d, _ in self._window)
    skipped = sum(k for _, k in self._window)
    if (self.refresh == "async" and not self.warned and due
        and len(self._window) >= self.refresh_every and skipped > WARN_SHARE * due):
      self.warned = True
      report.log(f"warning: {skipped / due:.0%} of the SAM refreshes due over the last "
                 f"{len(self._window)} steps were skipped (not back in time, queue full or "
                 "still in flight; sam.refresh=async), so the student trains on older SAM "
                 f"labels: raise sam.wait_s (now {self.wait_s:g} s), run SAM on an "
                 f"accelerator (sam.device, now {self.device or '?'}), or set "
                 "sam.refresh=strict")

  def note_ages(self, ages: list[int]) -> None:
    """The ages in steps of the SAM labels one batch trains on."""
    if ages:
      self.age_sum += sum(ages)
      self.age_count += len(ages)
      self.last_age = sum(ages) / len(ages)

  def summary(self) -> dict[str, float]:
    """For the logs: refresh_due / done / skipped so far, label_age_steps of the last batch."""
    out = {f"refresh_{k}": self.counts[k] for k in ("due", "done", "skipped")}
    if self.last_age is not None:
      out["label_age_steps"] = round(self.last_age, 3)
    return out

  def result(self) -> dict[str, Any]:
    """result.json's `sam_refresh`: {"due", "done", "skipped", "mean_age_steps"}."""
    age = round(self.age_sum / self.age_count, 3) if self.age_count else None
    return {"due": self.counts["due"], "done": self.counts["done"],
            "skipped": self.counts["skipped"], "mean_age_steps": age}

  def get_state(self) -> dict[str, Any]:
    """JSON-able totals (what a resumed run carries on from)."""
    return {"counts": dict(self.counts), "age": [self.age_sum, self.age_count]}

  def set_state(self, state: Mapping[str, Any]) -> None:
    self.counts = collections.Counter({k: int(v) for k, v in state.get("counts", {}).items()})
    self.age_sum, self.age_count = state.get("age", [0, 0])
