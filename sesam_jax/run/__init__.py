"""A run directory (`--workdir`) and everything in it; nothing outside this package spells its
file names or calls orbax on it.

  layout       the name of every file and folder of a workdir (`Layout`)
  workdir      `RunDir`: the lock, storage checks, clean-up of a run that trained nothing
  checkpoint   `Checkpointer`: the one orbax CheckpointManager (state, data position, ...)
  logs         `MetricWriter` (TensorBoard + metrics.jsonl) and `read_metrics`
  result       result.json's schema (`FIELDS`), `make_result`, `check`, `write`, `read`
  runs         `open_run(workdir) -> Run`: config, result, metrics, checkpoints, restore
  val_images   validation predictions drawn in TensorBoard
  preemption   stop signals -> a checkpoint at the next step boundary
  compile_cache  JAX's persistent compilation cache (`enable`), `compile_seconds`
"""
