"""sam_bridge: SeSAM label refinement with a frozen Segment Anything Model.

numpy in, numpy out; never imports jax or sesam_jax. Layout mirrors SAM's own
split: `api` (dataclasses, Backend protocol), `backends` (registry), `geometry`
(pure functions), `refine` (orchestrator, no threads), `service` (a worker
process that threads it).
"""
