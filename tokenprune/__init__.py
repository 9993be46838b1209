"""tokenprune: visual-token pruning for vision-language models, as composable, comparable selectors.

>>> import torch, tokenprune
>>> visual = torch.randn(2, 576, 64)          # projected visual tokens (B, N, D)
>>> prompt = torch.randn(2, 12, 64)           # prompt token embeddings (B, M, D)
>>> keep = tokenprune.create_method("zspa")(visual, prompt=prompt, budget=0.1)
>>> keep.shape, keep.dtype
(torch.Size([2, 58]), torch.int64)
"""

from tokenprune.budget import Budget, resolve_budget
from tokenprune.errors import (
    BudgetError,
    DuplicateMethodError,
    InputError,
    MethodParameterError,
    MissingInputError,
    PluginWarning,
    SelectorError,
    TokenPruneError,
    UnknownMethodError,
)
from tokenprune.graphs import Graphed, graphed
from tokenprune.hookspecs import hookimpl
from tokenprune.integrations import PruneStats, PruningSession, apply
from tokenprune.registry import (
    Method,
    MethodRegistrar,
    MethodSpec,
    create_method,
    get_method_spec,
    list_methods,
    register_method,
)
from tokenprune.selector import CheckedInputs, MergePlan, Selection, Selector, TokenBatch

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "BudgetError",
    "CheckedInputs",
    "DuplicateMethodError",
    "Graphed",
    "InputError",
    "Method",
    "MethodParameterError",
    "MethodRegistrar",
    "MethodSpec",
    "MergePlan",
    "MissingInputError",
    "PluginWarning",
    "PruneStats",
    "PruningSession",
    "Selection",
    "Selector",
    "SelectorError",
    "TokenBatch",
    "TokenPruneError",
    "UnknownMethodError",
    "__version__",
    "apply",
    "create_method",
    "get_method_spec",
    "graphed",
    "hookimpl",
    "list_methods",
    "register_method",
    "resolve_budget",
]
