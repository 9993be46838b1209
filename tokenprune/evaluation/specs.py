"""What a comparison runs: method specs with parameters (``zspa:core_ratio=0.2,pooling=max``) and keep ratios.

A method spec is a registered method name, optionally followed by ``:`` and ``key=value`` parameters. In a
comma-separated list, a piece with ``=`` and no ``:`` is one more parameter of the method before it, so

>>> [str(m) for m in parse_methods("zspa:core_ratio=0.2,pooling=max,divprune")]
['zspa:core_ratio=0.2,pooling=max', 'divprune']

is two methods. Values are read as int, float, bool (``true``/``false``), None (``none``/``null``) or,
failing those, a string (quotes optional):

>>> parse_value("0.2"), parse_value("3"), parse_value("True"), parse_value("none"), parse_value("'max'")
(0.2, 3, True, None, 'max')

None means the method's default. A parameter whose default is text takes the text as written, so
``zspa:pooling=none`` is the pooling called "none", not the default.

One key is not a method parameter but a setting of the harness: ``positions=original`` (or
``contiguous``) says how the language model positions the kept tokens (``tokenprune.apply(positions=...)``),
so ``zspa,zspa:positions=original`` compares the two in one run.

A value may list alternatives with ``|``: the spec stands for one method per alternative, and for every
combination when several parameters have them (a sweep, in the order written):

>>> for method in parse_methods("zspa:core_ratio=0.1|0.4,pooling=mean|max"):
...     print(method)
zspa:core_ratio=0.1,pooling=mean
zspa:core_ratio=0.1,pooling=max
zspa:core_ratio=0.4,pooling=mean
zspa:core_ratio=0.4,pooling=max

A name may be an fnmatch pattern (``*``, ``?``, ``[...]``), and ``all`` is ``*``: every registered method it
matches that can run inside a model (not ``attention``, whose scores only a caller can pass), each with its
defaults, so a new plugin's method is compared with every baseline by ``--methods mine,all``. A pattern
takes no parameters. Its methods are :attr:`MethodConfig.optional`: a comparison skips, with the reason,
those the model at hand cannot run (a [CLS] attention method on Qwen2.5-VL), where a method named
explicitly is an error.

The same method may appear several times with different parameters; a spec whose full parameters
(defaults included) equal an earlier one's is dropped. ``none``, the unpruned reference, is always run
and is not a method spec.

Benchmarks are names, or ``NAME=PATH`` for a local copy (:func:`parse_benchmarks`).
"""

from __future__ import annotations

import ast
import itertools
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from tokenprune._json import jsonable
from tokenprune.errors import InputError

__all__ = [
    "ALL",
    "POSITIONS_KEY",
    "REFERENCE",
    "MethodConfig",
    "is_pattern",
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
        optional: chosen by a pattern (``all``, ``div*``) rather than by name: a comparison skips it where
            the model cannot run it instead of stopping. Not part of the configuration's identity.
    """

    name: str
    given: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    positions: str | None = None
    optional: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "given", MappingProxyType(dict(self.given)))
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @property
    def is_reference(self) -> bool:
        return self.name == REFERENCE

    @property
    def identity(self) -> tuple[str, str]:
        """``(name, repr of the full parameters and the positions)``: equal for equal configurations (numbers
        by value: ``core_ratio=1`` is ``core_ratio=1.0``)."""
        params = repr(sorted((key, _canonical(value)) for key, value in self.params.items()))
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


def _canonical(value: Any) -> Any:
    """A number as a float (``1`` and ``1.0`` alike; bools stay bools), anything else as it is."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


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


ALL = "all"
"""The method pattern that matches every registered method (``*``)."""

_GLOB = frozenset("*?[")


def is_pattern(name: str) -> bool:
    """Whether a spec's name is a pattern of method names (``all``, or with fnmatch's ``*``, ``?``, ``[``)."""
    return name == ALL or not _GLOB.isdisjoint(name)


def _alternatives(key: str, raw: str, name: str, default: Any) -> list[Any]:
    """The values of ``key=raw``: one, or one per ``|``-separated alternative (not inside a quoted value).

    A parameter whose default is text takes the text as written: ``pooling=none`` is the pooling named
    "none", not None (which would mean the default, ``mean``).
    """
    text = raw.strip()
    quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
    pieces = [text] if quoted else text.split("|")
    if any(not piece.strip() for piece in pieces):
        raise InputError(
            f"bad value {raw!r} of {key!r} for method {name!r}: expected a value, or alternatives "
            f"separated by '|' such as 0.1|0.2|0.4"
        )
    if isinstance(default, str):
        values: list[Any] = [_text(piece) for piece in pieces]
    else:
        values = [parse_value(piece) for piece in pieces]
    unique = list(dict.fromkeys(repr(_canonical(v)) for v in values))
    if len(unique) != len(values):
        raise InputError(f"{key}={raw!r} for method {name!r} lists a value twice")
    return values


def _text(piece: str) -> str:
    """A text value as written: stripped, and unquoted when quoted."""
    piece = piece.strip()
    value = parse_value(piece)
    return value if isinstance(value, str) and piece[:1] in "'\"" else piece


def _in_model_methods(pattern: str) -> list[str]:
    """The registered methods matching ``pattern`` that can run inside a model (scores not from the caller)."""
    from tokenprune.registry import create_method, list_methods

    names = list_methods("*" if pattern == ALL else pattern)
    runnable = []
    for name in names:
        selector = create_method(name)
        if not ("scores" in selector.requires and selector.score_source == "external"):
            runnable.append(name)
    if not runnable:
        raise InputError(
            f"method pattern {pattern!r} matches no registered method that can run inside a model; "
            f"registered: {', '.join(list_methods()) or 'none'}"
        )
    return runnable


def parse_methods(text: str, *, positions: str | None = None) -> list[MethodConfig]:
    """The method configurations of a ``--methods`` value, checked against the registry.

    ``positions``: the positions setting of the specs that do not give one (None: the model's default).
    Sweeps (``key=a|b``) and patterns (``all``, ``div*``) are expanded (see the module docstring); a
    configuration equal to an earlier one is dropped (one named explicitly is then not optional).

    Raises:
        InputError: a malformed spec, a parameter given twice for one method, parameters after a pattern,
            a pattern that matches nothing runnable, or a positions setting that is unknown or that the
            method cannot use (FastV prunes inside the LM: always original).
        UnknownMethodError: a name that is not registered (the message lists what is).
        MethodParameterError: a parameter the method does not have, or a value it rejects.

    Example:
        >>> [m.params["core_ratio"] for m in parse_methods("zspa,zspa:core_ratio=0.5")]
        [0.2, 0.5]
    """
    from tokenprune.integrations.base import check_positions
    from tokenprune.registry import create_method, get_method_spec

    configs: list[MethodConfig] = []

    def add(config: MethodConfig) -> None:
        if config not in configs:
            configs.append(config)
        elif not config.optional:  # named explicitly as well: an error where the model cannot run it
            index = configs.index(config)
            configs[index] = replace(configs[index], optional=False)

    for name, raw in _split_specs(text):
        if is_pattern(name):
            if raw:
                raise InputError(
                    f"method pattern {name!r} takes no parameters (got {', '.join(k for k, _ in raw)}): it matches "
                    f"several methods; write each method with its parameters"
                )
            for match in _in_model_methods(name):  # checked against the positions and the model when run
                add(MethodConfig(match, {}, dict(create_method(match).params), positions, optional=True))
            continue
        if "|" in name:
            raise InputError(
                f"{name!r} is not a method: '|' separates the values of one parameter (zspa:core_ratio=0.1|0.2); "
                f"separate methods with ',' (zspa,divprune)"
            )
        defaults = {} if name == REFERENCE else dict(get_method_spec(name).params)  # an unknown name raises here
        defaults[POSITIONS_KEY] = ""  # the harness setting is text too
        sweeps: dict[str, list[Any]] = {}
        for key, value in raw:
            if key in sweeps:
                raise InputError(f"parameter {key!r} given twice for method {name!r} in {text!r}")
            sweeps[key] = _alternatives(key, value, name, defaults.get(key))
        if name == REFERENCE:
            if sweeps:
                raise InputError(f"{REFERENCE!r} (the unpruned reference) takes no parameters; got {dict(raw)!r}")
            continue  # always run anyway
        for values in itertools.product(*sweeps.values()):
            given = dict(zip(sweeps, values, strict=True))
            where = given.pop(POSITIONS_KEY, positions)
            method = create_method(name, **given)  # unknown names and parameters raise here, with suggestions
            check_positions(where, inside_lm=method.prune_layer is not None, label=str(MethodConfig(name, given)))
            add(MethodConfig(name, given, dict(method.params), where))
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
