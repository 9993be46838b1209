"""The built-in methods, registered through the same hook a third-party plugin uses.

Each factory is a composition of :mod:`tokenprune.stages`; its parameters (all with defaults) are
the method's parameters.
"""

from __future__ import annotations

from tokenprune.hookspecs import hookimpl
from tokenprune.registry import MethodRegistrar
from tokenprune.selector import Selector
from tokenprune.stages import (
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

__all__ = ["attention", "divprune", "fastervlm", "fastv", "random", "relevance", "stride", "zspa"]

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


def fastv(layer: int = 2) -> Selector:
    """FastV: inside the language model, drop visual tokens before layer ``layer``, keeping those the
    last prompt token attends to most at that layer (averaged over heads).

    Called directly (no model), the attention scores are the caller's ``scores=``.
    """
    return TopK(LayerAttention(layer))


@hookimpl
def tokenprune_register_methods(register: MethodRegistrar) -> None:
    for factory in (zspa, divprune, relevance, random, stride, attention, fastervlm, fastv):
        register(factory.__name__, factory, summary=factory.__doc__ or "")
