"""The paper's figures, drawn from the user's own data and runs (matplotlib, imported lazily).

Every figure is a PNG with, beside it, the data it drew as JSON (`FILE.png` -> `FILE.json`), so
that what a figure claims can be checked without looking at pixels (runs are opened with
`sesam_jax.run.runs.open_run`):

  refinement   Figures 2 / 12: instances, sampling grid and field, points, SAM's three
               candidates with coverage r and compatibility p, the chosen one; weak / SeSAM /
               fine label maps (`sesam refine --visualize N`).
  qualitative  Figure 5: image, weak label, SeSAM label, each run's prediction, fine label
               (`sesam plot qualitative`).
  cost_quality Figure 4: annotation hours against val mIoU per label kind (`sesam plot cost`).
  curves       training loss, val mIoU and label coverage against steps (`sesam plot curves`).
  output       saving a figure with its JSON; run-length codes for label maps in the JSON.
"""
