"""Pure numpy/scikit-image geometry of SeSAM (paper section 3.2).

components: instance separation (eq. 1); sampling: point prompts (eq. 2) and the
ablation strategies; selection: coverage/compatibility mask choice; merge:
instance masks -> one label map; sparse: points/scribbles -> prompts for the
sparse-to-coarse stage. Every threshold is a keyword with the paper's default.
"""

from sam_bridge.geometry.components import Instance, class_instances, find_instances
from sam_bridge.geometry.merge import merge_masks
from sam_bridge.geometry.sampling import (SAMPLING_STRATEGIES, cell_index, grid_edges, grid_shape,
                                        sample_points)
from sam_bridge.geometry.selection import SELECTION_STRATEGIES, coverage_compatibility, select_mask
from sam_bridge.geometry.sparse import stroke_points

__all__ = [
    "Instance", "class_instances", "find_instances", "merge_masks", "SAMPLING_STRATEGIES",
    "sample_points", "cell_index", "grid_edges", "grid_shape", "SELECTION_STRATEGIES",
    "coverage_compatibility", "select_mask", "stroke_points",
]
