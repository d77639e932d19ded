"""sam_bridge: SeSAM label refinement with a frozen Segment Anything Model.

numpy in, numpy out; never imports jax or sesam_jax. Layout mirrors SAM's own
split: `api` (dataclasses, Backend protocol), `backends` (the table of kinds), `geometry`
(pure functions), `refine_config` (RefineConfig: every setting, its default and meaning),
`refine` (orchestrator, no threads), `service` (a worker
process that threads it).
"""
