"""The paper's experiments as grids of runs: `grid` (the tables as data), `sweep` (`sesam
reproduce`: one `sesam train` command per cell, run one after another) and `summary`
(`sesam report`: the tables from the runs' own result.json and config.json)."""
