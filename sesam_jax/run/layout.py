"""The names of everything in a run directory (`--workdir`): the one place they are spelled.

A workdir of `sesam train` holds (who writes each, and what it is):

  config.json              loop: the resolved config, written before step 0 (JSON of the
                           ConfigDict; `open_run` reads it back, `sesam eval` uses it)
  train.lock               run.workdir: an flock with the holder's pid, host and start time,
                           held while a training runs (gone once it stops)
  checkpoints/<step>/      run.checkpoint: one orbax CheckpointManager; items `state` (train
                           state with the EMA teacher), `data` (input position, one file per
                           process), `clock` (training seconds) and the feed's (`sam_bank`)
  unreadable_checkpoints/  run.checkpoint: checkpoints that failed to restore, moved aside
  metrics.jsonl            run.logs: one JSON object per logged step ("train/...", "val/...")
  tensorboard/             run.logs: TensorBoard event files (scalars, validation images)
  result.json              loop: the final summary (schema: `sesam_jax.run.result`), also the
                           last stdout line of `sesam train`; present once the run finished
  train_images.json        loop: ids of a `dataset.max_train_images` subset
  sam_embeddings/          sam.feed: SAM image embeddings (unless `sam.cache_dir` is set)
  sam_baseline_labels/     sam.refine_labels: the SAM baseline's labels, made before step 0
  reproduce.log            experiments.sweep: the output of a `sesam reproduce` cell

A cell of a bench-backed table (`experiments.bench_grid`, Table 6) holds no config.json: its
`sesam bench` records (bench.jsonl), reproduce.log and, once both benchmarks ran, result.json.

Workdirs written before this module existed have the same layout: nothing was renamed.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

CONFIG = "config.json"
LOCK = "train.lock"
CHECKPOINTS = "checkpoints"
UNREADABLE_CHECKPOINTS = "unreadable_checkpoints"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
RESULT = "result.json"
TRAIN_IMAGES = "train_images.json"
SAM_EMBEDDINGS = "sam_embeddings"
SAM_BASELINE_LABELS = "sam_baseline_labels"
REPRODUCE_LOG = "reproduce.log"
BENCH_RECORDS = "bench.jsonl"

# Items of a checkpoint (`checkpoints/<step>/<item>`) that every run has; feeds add their own.
STATE_ITEM = "state"
DATA_ITEM = "data"
CLOCK_ITEM = "clock"
SAM_BANK_ITEM = "sam_bank"  # SeSAM's label bank (`sesam_jax.sam.feed`)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Paths of one workdir's entries (nothing is created or read).

  Attributes:
    root: the workdir, absolute.
  """
  root: pathlib.Path

  @classmethod
  def of(cls, workdir: str | os.PathLike) -> "Layout":
    return cls(pathlib.Path(os.path.abspath(workdir)))

  @property
  def config(self) -> pathlib.Path:
    return self.root / CONFIG

  @property
  def lock(self) -> pathlib.Path:
    return self.root / LOCK

  @property
  def checkpoints(self) -> pathlib.Path:
    return self.root / CHECKPOINTS

  @property
  def unreadable_checkpoints(self) -> pathlib.Path:
    return self.root / UNREADABLE_CHECKPOINTS

  @property
  def metrics(self) -> pathlib.Path:
    return self.root / METRICS

  @property
  def tensorboard(self) -> pathlib.Path:
    return self.root / TENSORBOARD

  @property
  def result(self) -> pathlib.Path:
    return self.root / RESULT

  @property
  def train_images(self) -> pathlib.Path:
    return self.root / TRAIN_IMAGES

  @property
  def sam_embeddings(self) -> pathlib.Path:
    return self.root / SAM_EMBEDDINGS

  @property
  def sam_baseline_labels(self) -> pathlib.Path:
    return self.root / SAM_BASELINE_LABELS

  @property
  def reproduce_log(self) -> pathlib.Path:
    return self.root / REPRODUCE_LOG

  @property
  def bench_records(self) -> pathlib.Path:
    return self.root / BENCH_RECORDS

  def checkpoint(self, step: int, item: str | None = None) -> pathlib.Path:
    """`checkpoints/<step>`, or one of its items (`checkpoints/<step>/state`)."""
    path = self.checkpoints / str(int(step))
    return path / item if item else path

  def is_run(self) -> bool:
    """Whether the folder holds a run (its config.json)."""
    return self.config.is_file()
