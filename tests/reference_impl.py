"""Float64 numpy reference implementations of tokenprune's selection rules, written from the specification.

Every function here takes one image (one batch row) with padding already removed and returns the chosen
positions *within the real tokens* (ascending). :func:`reference_select` does the batching: it strips padding
with the masks, calls the per-row rule and maps the positions back to the original indices.

Cosines are computed once per *distinct* row (rows are deduplicated before the matrix product), so exact
duplicate tokens get bit-identical cosines here and the specified tie-breaking (lower index first) is exact.
"""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-12


def _unique_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, inverse = np.unique(x, axis=0, return_inverse=True)
    return uniq, np.asarray(inverse).reshape(-1)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``C[i, j] = a_i . b_j / max(|a_i| |b_j|, 1e-12)`` in float64 (zero vectors have cosine 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    au, ai = _unique_rows(a)
    bu, bi = _unique_rows(b)
    dots = au @ bu.T
    na = np.sqrt(np.sum(au * au, axis=1))
    nb = np.sqrt(np.sum(bu * bu, axis=1))
    cos = dots / np.maximum(na[:, None] * nb[None, :], EPS)
    # A nonzero vector's cosine with itself is exactly 1; the float formula gives 1 +- a few ulp depending on the
    # vector, which would turn the exact ties between duplicate tokens into rounding noise.
    where = {row.tobytes(): j for j, row in enumerate(bu)}
    for i, row in enumerate(au):
        j = where.get(row.tobytes())
        if j is not None and na[i] > 0:
            cos[i, j] = 1.0
    return cos[np.ix_(ai, bi)]


def budget_to_k(budget: int | float, n: int) -> int:
    """int -> K; float ratio r -> max(1, floor(r * n + 0.5))."""
    if isinstance(budget, (int, np.integer)) and not isinstance(budget, bool):
        return int(budget)
    return max(1, math.floor(float(budget) * n + 0.5))


def pool_prompt(prompt: np.ndarray, pooling: str) -> np.ndarray:
    """Pool the real prompt tokens ``(M, D)``: ``mean`` / ``max`` give ``(1, D)``, ``none`` keeps ``(M, D)``."""
    prompt = np.asarray(prompt, dtype=np.float64)
    if pooling == "mean":
        return prompt.mean(axis=0, keepdims=True)
    if pooling == "max":
        return prompt.max(axis=0, keepdims=True)
    if pooling == "none":
        return prompt
    raise ValueError(pooling)


def relevance_scores(visual: np.ndarray, prompt: np.ndarray, pooling: str) -> np.ndarray:
    """``cos(pooled, v_j)``; for ``none`` the max over prompt tokens of ``cos(t_i, v_j)``."""
    pooled = pool_prompt(prompt, pooling)
    return cosine_matrix(pooled, visual).max(axis=0)


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores; equal scores -> lower position first (unsorted output order)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(scores.shape[0]), -scores))
    return order[:k]


def divprune_first(visual: np.ndarray) -> int:
    """argmin over x of max_{y != x} cos(v_x, v_y); a single token is its own pick."""
    n = visual.shape[0]
    if n == 1:
        return 0
    cos = cosine_matrix(visual, visual)
    np.fill_diagonal(cos, -np.inf)
    nearest = cos.max(axis=1)
    return int(np.argmin(nearest))  # argmin returns the first (lowest) position among ties


def maxmin_fill(visual: np.ndarray, chosen: list[int], total: int) -> list[int]:
    """Greedy max-min fill of ``chosen`` up to ``total`` tokens (seeded DivPrune-style when empty)."""
    visual = np.asarray(visual, dtype=np.float64)
    n = visual.shape[0]
    chosen = list(chosen)
    if len(chosen) >= total:
        return chosen
    if not chosen:
        chosen.append(divprune_first(visual))
    cos = cosine_matrix(visual, visual)
    taken = np.zeros(n, dtype=bool)
    taken[chosen] = True
    worst = cos[:, chosen].max(axis=1)  # max cosine of each token to the chosen set
    while len(chosen) < total:
        cand = np.where(taken, np.inf, worst)
        x = int(np.argmin(cand))  # first minimum -> lower position on ties
        chosen.append(x)
        taken[x] = True
        worst = np.maximum(worst, cos[:, x])
    return chosen


def zspa_row(
    visual: np.ndarray, prompt: np.ndarray | None, k_total: int, core_ratio: float, pooling: str
) -> np.ndarray:
    k_core = min(max(math.floor(core_ratio * k_total + 0.5), 0), k_total)
    chosen: list[int] = []
    if k_core > 0:
        chosen = [int(i) for i in topk(relevance_scores(visual, prompt, pooling), k_core)]
    return np.sort(np.asarray(maxmin_fill(visual, chosen, k_total), dtype=np.int64))


def divprune_row(visual: np.ndarray, k_total: int) -> np.ndarray:
    return np.sort(np.asarray(maxmin_fill(visual, [], k_total), dtype=np.int64))


def relevance_row(visual: np.ndarray, prompt: np.ndarray, k_total: int, pooling: str) -> np.ndarray:
    return np.sort(topk(relevance_scores(visual, prompt, pooling), k_total)).astype(np.int64)


def stride_row(n: int, k_total: int) -> np.ndarray:
    return np.asarray([((2 * j + 1) * n) // (2 * k_total) for j in range(k_total)], dtype=np.int64)


def attention_row(scores: np.ndarray, k_total: int) -> np.ndarray:
    return np.sort(topk(scores, k_total)).astype(np.int64)


def visionzip_row(
    scores: np.ndarray, metric: np.ndarray, values: np.ndarray, k_total: int, contextual_ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """VisionZip on one image, written from its paper and description (arXiv 2412.04467, §3).

    Dominant tokens: the ``d`` tokens of highest CLS attention, ``d = floor((1 - ratio) k + 0.5)``. The
    others, in position order, are the *remaining* tokens. Contextual tokens: ``c = k - d`` of them, those
    of rank ``0, s, 2s, ...`` with ``s = max(1, floor(R / c))``. Each other remaining token joins the
    contextual token whose metric vector has the highest cosine with its own (equal cosines: the lower
    position), and a contextual token becomes its own value plus the mean of its members' values.

    Returns:
        The kept positions, ascending, and their values after merging, ``(k, C)``.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    d = min(k_total, max(0, math.floor((1.0 - contextual_ratio) * k_total + 0.5)))
    c = k_total - d
    dominant = [int(i) for i in topk(scores, d)]
    remaining = [i for i in range(n) if i not in set(dominant)]
    targets: list[int] = []
    if c > 0:
        step = max(1, len(remaining) // c)
        targets = [remaining[j * step] for j in range(c)]
    members = [i for i in remaining if i not in set(targets)]
    merged = values.copy()
    if targets and members:
        cos = cosine_matrix(np.asarray(metric)[members], np.asarray(metric)[targets])  # (members, targets)
        owner = np.asarray(targets)[np.argmax(cos, axis=1)]  # argmax: the first maximum, the lower position
        for t in targets:
            joined = [m for m, o in zip(members, owner, strict=True) if o == t]
            if joined:
                merged[t] = values[t] + values[joined].mean(axis=0)
    kept = np.sort(np.asarray(dominant + targets, dtype=np.int64))
    return kept, merged[kept]


def reference_select(
    method: str,
    visual: np.ndarray,
    *,
    budget: int | float,
    prompt: np.ndarray | None = None,
    visual_mask: np.ndarray | None = None,
    prompt_mask: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    core_ratio: float = 0.2,
    pooling: str = "mean",
) -> list[np.ndarray]:
    """Batched reference: one ascending int64 array of original indices per row (no -1 padding)."""
    visual = np.asarray(visual, dtype=np.float64)
    b, n, _ = visual.shape
    vmask = np.ones((b, n), dtype=bool) if visual_mask is None else np.asarray(visual_mask, dtype=bool)
    out = []
    for row in range(b):
        real = np.flatnonzero(vmask[row])
        v = visual[row, real]
        k = budget_to_k(budget, real.size)
        p = None
        if prompt is not None:
            pm = np.ones(prompt.shape[1], dtype=bool) if prompt_mask is None else np.asarray(prompt_mask[row], bool)
            p = np.asarray(prompt[row], dtype=np.float64)[pm]
        if method == "zspa":
            pos = zspa_row(v, p, k, core_ratio, pooling)
        elif method == "divprune":
            pos = divprune_row(v, k)
        elif method == "relevance":
            pos = relevance_row(v, p, k, pooling)
        elif method == "stride":
            pos = stride_row(real.size, k)
        elif method == "attention":
            pos = attention_row(np.asarray(scores[row], dtype=np.float64)[real], k)
        else:
            raise ValueError(method)
        out.append(real[pos])
    return out
