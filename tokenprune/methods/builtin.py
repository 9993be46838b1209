"""The built-in methods, registered through the same hook a third-party plugin uses.

Each factory is a composition of :mod:`tokenprune.stages`; its parameters (all with defaults) are
the method's parameters.
"""

from __future__ import annotations

from tokenprune.hookspecs import hookimpl
from tokenprune.registry import MethodRegistrar
from tokenprune.selector import Selector
from tokenprune.stages import (
    Contextual,
    ExternalScores,
    Hierarchical,
    LayerAttention,
    MaxMin,
    RandomScores,
    Relevance,
    Stride,
    TopK,
    make_pooling,
)

__all__ = ["attention", "divprune", "fastervlm", "fastv", "random", "relevance", "stride", "visionzip", "zspa"]

DEFAULT_CORE_RATIO = 0.2
"""zspa's default share of the budget given to prompt-relevant tokens.

The paper tunes it per benchmark (§4.3, Qwen2.5-VL at 10% retention: best 0.1 on GQA, 0.2 on POPE,
0.4 on MMMU); 0.2 is the middle of that range and POPE's optimum.
"""


def zspa(core_ratio: float = DEFAULT_CORE_RATIO, pooling: str = "mean") -> Selector:
    """ZSPAPrune (§3.3): the prompt-relevant core, then a max-min diversity fill.

    ``core_ratio`` in [0, 1] is the core's share of the budget (0 = divprune, 1 = relevance);
    ``pooling`` is how the prompt becomes one query: ``mean`` (paper), ``max``, ``none``.
    """
    return Hierarchical(core=TopK(Relevance(make_pooling(pooling))), fill=MaxMin(), core_ratio=core_ratio)


def divprune() -> Selector:
    """DivPrune: greedy max-min diversity, seeded by the token whose nearest neighbour is farthest."""
    return MaxMin()


def relevance(pooling: str = "mean") -> Selector:
    """All-in task relevance: the top-K tokens by cosine to the pooled prompt (zspa, core_ratio=1)."""
    return TopK(Relevance(make_pooling(pooling)))


def random(seed: int = 0) -> Selector:
    """A uniformly random subset, reproducible from ``seed`` (a control)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int; got {seed!r}")
    return TopK(RandomScores(seed))


def stride() -> Selector:
    """Evenly spaced token positions (a uniform-subsampling control)."""
    return Stride()


def attention() -> Selector:
    """The top-K tokens by the caller's ``scores`` (e.g. attention); the base of FastV and CLS-attention methods."""
    return TopK(ExternalScores())


def fastervlm() -> Selector:
    """FasterVLM: the top-K tokens by the vision encoder's [CLS] attention at the feature layer.

    Inside a model (:func:`tokenprune.apply`) the scores are computed from the vision tower; called
    directly, pass them as ``scores=``.
    """
    return TopK(ExternalScores(source="cls_attention"))


DEFAULT_CONTEXTUAL_RATIO = 10 / 64
"""visionzip's default share of the budget given to contextual tokens: VisionZip's own split for
LLaVA-1.5 (54 dominant + 10 contextual of 64 tokens, 108 + 20 of 128, 162 + 30 of 192)."""


def visionzip(contextual_ratio: float = DEFAULT_CONTEXTUAL_RATIO) -> Selector:
    """VisionZip: dominant tokens by the vision encoder's [CLS] attention, then contextual tokens, evenly
    spaced among the rest, each merged with the dropped tokens whose keys are most similar to its own.

    ``contextual_ratio`` in [0, 1] is the contextual tokens' share of the budget (0 = fastervlm).
    Inside a model (:func:`tokenprune.apply`) the merge runs on the vision features before the
    projector, by the feature layer's keys; called directly it returns the kept tokens (pass
    ``scores=``), and :meth:`~tokenprune.Selector.plan` gives the merge.
    """
    ratio = contextual_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not (0.0 <= ratio <= 1.0):
        raise ValueError(f"contextual_ratio must be a number in [0, 1]; got {ratio!r}")
    dominant = TopK(ExternalScores(source="cls_attention"))
    return Contextual(core=dominant, fill=Stride(start=True), core_ratio=1.0 - ratio)


def fastv(layer: int = 2) -> Selector:
    """FastV: inside the language model, drop visual tokens before layer ``layer``, keeping those the
    last prompt token attends to most at that layer (averaged over heads).

    Called directly (no model), the attention scores are the caller's ``scores=``.
    """
    return TopK(LayerAttention(layer))


@hookimpl
def tokenprune_register_methods(register: MethodRegistrar) -> None:
    for factory in (zspa, divprune, relevance, random, stride, attention, fastervlm, visionzip, fastv):
        register(factory.__name__, factory, summary=factory.__doc__ or "")
