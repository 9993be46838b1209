"""Exceptions raised by tokenprune.

Every error says what was expected, what was received and what to do. They all derive from
:class:`TokenPruneError`, and each also derives from the built-in exception a caller would catch
without knowing tokenprune (``ValueError`` for bad input, ``LookupError`` for unknown names).
"""

from __future__ import annotations

__all__ = [
    "BudgetError",
    "DuplicateMethodError",
    "InputError",
    "MethodParameterError",
    "MissingInputError",
    "PluginWarning",
    "SelectorError",
    "TokenPruneError",
    "UnknownMethodError",
]


class TokenPruneError(Exception):
    """Base class of every error tokenprune raises on purpose."""


class InputError(TokenPruneError, ValueError):
    """A tensor passed to a selector has the wrong shape, dtype, device or values."""


class MissingInputError(InputError):
    """A selector needs an input (``prompt`` or ``scores``) that was not passed."""


class BudgetError(InputError):
    """The budget cannot be met: ``K < 1``, ``K`` larger than the image's real tokens, or a bad type."""


class UnknownMethodError(TokenPruneError, LookupError):
    """No method of that name is registered."""


class DuplicateMethodError(TokenPruneError, ValueError):
    """A method name is registered twice without ``override=True``."""


class MethodParameterError(TokenPruneError, TypeError, ValueError):
    """A method was given a parameter it does not have, or a value it does not accept."""


class SelectorError(TokenPruneError, RuntimeError):
    """A selector failed, or returned something that breaks the selector contract."""


class PluginWarning(UserWarning):
    """A plugin failed to load or registered a broken method; the rest of the registry still works."""
