"""What a comparison runs: method specs with parameters (``zspa:core_ratio=0.2,pooling=max``) and keep ratios.

A method spec is a registered method name, optionally followed by ``:`` and ``key=value`` parameters. In a
comma-separated list, a piece with ``=`` and no ``:`` is one more parameter of the method before it, so

>>> [str(m) for m in parse_methods("zspa:core_ratio=0.2,pooling=max,divprune")]
['zspa:core_ratio=0.2,pooling=max', 'divprune']

is two methods. Values are read as int, float, bool (``true``/``false``), None (``none``/``null``) or,
failing those, a string (quotes optional):

>>> parse_value("0.2"), parse_value("3"), parse_value("True"), parse_value("none"), parse_value("'max'")
(0.2, 3, True, None, 'max')

One key is not a method parameter but a setting of the harness: ``positions=original`` (or
``contiguous``) says how the language model positions the kept tokens (``tokenprune.apply(positions=...)``),
so ``zspa,zspa:positions=original`` compares the two in one run.

The same method may appear several times with different parameters; a spec whose full parameters
(defaults included) equal an earlier one's is dropped. ``none``, the unpruned reference, is always run
and is not a method spec.

Benchmarks are names, or ``NAME=PATH`` for a local copy (:func:`parse_benchmarks`).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tokenprune._json import jsonable
from tokenprune.errors import InputError

__all__ = [
    "POSITIONS_KEY",
    "REFERENCE",
    "MethodConfig",
    "parse_benchmarks",
    "parse_keeps",
    "parse_methods",
    "parse_value",
]

REFERENCE = "none"
"""The name of the unpruned reference row: every visual token kept, through the same harness."""

POSITIONS_KEY = "positions"
"""The spec key of the harness setting ``positions`` (not a method parameter)."""


@dataclass(frozen=True)
class MethodConfig:
    """One method to compare: a registered name and the parameters given for it.

    Attributes:
        name: the registered method name, or :data:`REFERENCE`.
        given: the parameters written in the spec, in order (what the label shows).
        params: every parameter of the method with its value (defaults filled in by the registry); this,
            not ``given``, identifies the configuration.
        positions: how the language model positions the kept tokens (``"contiguous"``, ``"original"``),
            or None for the model's default (see :func:`tokenprune.apply`).
    """

    name: str
    given: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    positions: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "given", MappingProxyType(dict(self.given)))
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @property
    def is_reference(self) -> bool:
        return self.name == REFERENCE

    @property
    def identity(self) -> tuple[str, str]:
        """``(name, repr of the full parameters and the positions)``: equal for equal configurations."""
        params = repr(sorted(self.params.items()))
        return self.name, params if self.positions is None else f"{params}|positions={self.positions}"

    def json_params(self) -> dict[str, Any]:
        """``params`` with every value JSON-serializable (others as their ``repr``)."""
        return {key: jsonable(value) for key, value in self.params.items()}

    def __str__(self) -> str:
        given = {**self.given, **({} if self.positions is None else {POSITIONS_KEY: self.positions})}
        if not given:
            return self.name
        return f"{self.name}:" + ",".join(f"{key}={_format(value)}" for key, value in given.items())

    def __hash__(self) -> int:
        return hash(self.identity)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MethodConfig) and self.identity == other.identity


def _format(value: Any) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def parse_value(text: str) -> Any:
    """A parameter value from its command-line text: int, float, bool, None, else the string (unquoted)."""
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if kind is float and not math.isfinite(value):
            break  # "nan", "inf": keep as text, the method will reject it
        return value
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text[1:-1]
    return text


def _split_specs(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(name, [(key, raw value), ...]), ...]`` from ``"zspa:core_ratio=0.2,pooling=max,divprune"``."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"expected a comma-separated list of methods such as 'zspa,divprune'; got {text!r}")
    specs: list[tuple[str, list[tuple[str, str]]]] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            raise InputError(f"empty method spec in {text!r}: expected 'name' or 'name:key=value' between commas")
        if ":" in piece:
            name, _, param = piece.partition(":")
            specs.append((name.strip(), []))
            piece = param
        elif "=" not in piece:
            specs.append((piece, []))
            continue
        elif not specs:
            raise InputError(f"parameter {piece!r} comes before any method in {text!r}: write 'method:{piece}'")
        key, eq, value = piece.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise InputError(f"bad parameter {piece!r} of method {specs[-1][0]!r}: expected key=value")
        specs[-1][1].append((key.strip(), value))
    return specs


def parse_methods(text: str, *, positions: str | None = None) -> list[MethodConfig]:
    """The method configurations of a ``--methods`` value, checked against the registry.

    ``positions``: the positions setting of the specs that do not give one (None: the model's default).

    Raises:
        InputError: a malformed spec, a parameter given twice for one method, or a positions setting
            that is unknown or that the method cannot use (FastV prunes inside the LM: always original).
        UnknownMethodError: a name that is not registered (the message lists what is).
        MethodParameterError: a parameter the method does not have, or a value it rejects.

    Example:
        >>> [m.params["core_ratio"] for m in parse_methods("zspa,zspa:core_ratio=0.5")]
        [0.2, 0.5]
    """
    from tokenprune.integrations.base import check_positions
    from tokenprune.registry import create_method

    configs: list[MethodConfig] = []
    for name, raw in _split_specs(text):
        given: dict[str, Any] = {}
        for key, value in raw:
            if key in given:
                raise InputError(f"parameter {key!r} given twice for method {name!r} in {text!r}")
            given[key] = parse_value(value)
        if name == REFERENCE:
            if given:
                raise InputError(f"{REFERENCE!r} (the unpruned reference) takes no parameters; got {dict(given)!r}")
            continue  # always run anyway
        where = given.pop(POSITIONS_KEY, positions)
        method = create_method(name, **given)  # unknown names and parameters raise here, with suggestions
        check_positions(where, inside_lm=method.prune_layer is not None, label=str(MethodConfig(name, given)))
        config = MethodConfig(name, given, dict(method.params), where)
        if config not in configs:
            configs.append(config)
    return configs


def parse_keeps(text: str) -> tuple[float, ...]:
    """Keep ratios from ``"0.1,0.3,0.5"``: each in (0, 1], duplicates dropped, order kept.

    Example:
        >>> parse_keeps("0.1, 0.3,0.1,1")
        (0.1, 0.3, 1.0)
    """
    keeps: list[float] = []
    for piece in str(text).split(","):
        try:
            value = float(piece)
        except ValueError:
            value = math.nan
        if not 0 < value <= 1:
            raise InputError(
                f"keep ratios must be numbers in (0, 1], such as 0.1,0.3,0.5; got {piece.strip()!r} in {text!r}"
            )
        if value not in keeps:
            keeps.append(value)
    return tuple(keeps)


def parse_benchmarks(text: str) -> list[tuple[str, str | None]]:
    """``[(name, local path or None), ...]`` from ``"pope=/data/POPE,gqa"``; names are checked, duplicates dropped.

    Raises:
        UnknownBenchmarkError: a name that is not a benchmark (the message lists them).

    Example:
        >>> parse_benchmarks("scenes, POPE=/data/pope")
        [('scenes', None), ('pope', '/data/pope')]
    """
    from tokenprune.evaluation.datasets import get_benchmark

    chosen: list[tuple[str, str | None]] = []
    for piece in str(text).split(","):
        name, eq, path = piece.strip().partition("=")
        if not name.strip() or (eq and not path.strip()):
            raise InputError(f"expected benchmarks as NAME or NAME=PATH separated by commas; got {text!r}")
        entry = (get_benchmark(name.strip()).name, path.strip() or None)
        if entry not in chosen:
            chosen.append(entry)
    return chosen
