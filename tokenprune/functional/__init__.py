"""Pure tensor functions: pooling, similarity, selection on keep-masks, and token merging.

No globals, no hidden random state; shapes are in each docstring. The stages in
:mod:`tokenprune.stages` are thin wrappers around these.
"""

from tokenprune.functional.merging import assign_nearest, merge_into
from tokenprune.functional.pooling import POOLING_MODES, pool_prompt
from tokenprune.functional.selection import (
    isolated_token,
    mark_picks,
    mask_to_indices,
    max_similarity,
    select_maxmin,
    select_stride,
    select_topk,
    similarity_matrix,
)
from tokenprune.functional.similarity import (
    EPS,
    TIE_GRID,
    cosine_similarity,
    relevance_scores,
    snap_unit,
    snap_unit_,
    token_norms,
)

__all__ = [
    "EPS",
    "TIE_GRID",
    "POOLING_MODES",
    "assign_nearest",
    "cosine_similarity",
    "isolated_token",
    "mark_picks",
    "mask_to_indices",
    "merge_into",
    "max_similarity",
    "pool_prompt",
    "relevance_scores",
    "select_maxmin",
    "select_stride",
    "select_topk",
    "similarity_matrix",
    "snap_unit",
    "snap_unit_",
    "token_norms",
]
