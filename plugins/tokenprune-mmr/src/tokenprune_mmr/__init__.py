"""tokenprune-mmr: Maximal Marginal Relevance visual-token selection, as a tokenprune plugin.

Installing the package is all it takes: ``tokenprune.create_method("mmr", lam=0.5)``.
The pieces are importable too, e.g. to compose :class:`MMR` into another method::

    from tokenprune.stages import Hierarchical, Relevance, TopK
    from tokenprune_mmr import MMR

    Hierarchical(core=TopK(Relevance()), fill=MMR(lam=0.3), core_ratio=0.2)
"""

from tokenprune_mmr.mmr import MMR, mmr, select_mmr

__version__ = "0.1.0"

__all__ = ["MMR", "__version__", "mmr", "select_mmr"]
