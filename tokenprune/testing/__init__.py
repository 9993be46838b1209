"""Test utilities for selectors, public for plugin authors.

* :func:`assert_conforms`: the selector contract as one check.
* :func:`assert_adapter_contract`: the model-adapter contract (a model family under ``tokenprune.apply``) as one check.
* :func:`token_cases` (hypothesis strategy), :func:`make_case`, :func:`degenerate_cases`: inputs.
* :class:`HostTraffic`, :class:`Operations`: what a call costs the host (device reads, blocking
  copies, operations issued), countable on a CPU.

Importing this module needs ``hypothesis`` (the ``test`` extra).
"""

from tokenprune.testing.adapters import assert_adapter_contract
from tokenprune.testing.cases import TokenCase, degenerate_cases, make_case
from tokenprune.testing.conformance import assert_conforms, check_output
from tokenprune.testing.host import HostTraffic, Operations
from tokenprune.testing.strategies import budgets, token_cases

__all__ = [
    "HostTraffic",
    "Operations",
    "TokenCase",
    "assert_adapter_contract",
    "assert_conforms",
    "budgets",
    "check_output",
    "degenerate_cases",
    "make_case",
    "token_cases",
]
