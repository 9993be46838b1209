"""Paired significance tests: is method A better than method B on the same samples, or is it noise?

Both methods answer the same questions, so the tests are paired: they look at per-sample
differences, which is far more sensitive than comparing two independent accuracies.

* :func:`mcnemar_exact` for 0/1 outcomes (exact match, multiple choice, ChartQA): only the discordant
  samples (one method right, the other wrong) carry information; under no difference each is equally
  likely to favour either method, a binomial(``b01 + b10``, 1/2) law.
* :func:`paired_bootstrap` for everything else (VQA accuracy with its 0.3 steps, POPE F1): resample
  the sample indices with replacement, recompute the statistic for both methods on the same resample,
  and read a percentile interval and a p-value off the resampled differences.
* :func:`compare_paired` picks one; :func:`compare_metric` picks by metric name.
* :func:`holm` adjusts the p-values of a family of tests for their number (Holm's step-down method), so
  that comparing many methods does not find differences by chance: ``tokenprune compare`` marks a result
  significant only when its adjusted p-value is below 0.05.

>>> from tokenprune.evaluation.significance import compare_paired
>>> a = [1] * 60 + [0] * 40   # method A: 60 % right
>>> b = [1] * 45 + [0] * 55   # method B: 45 % right, the same 45 samples
>>> r = compare_paired(a, b, binary=True)
>>> r.b10, r.b01, round(r.difference, 2), round(r.p_value, 5)
(15, 0, 0.15, 6e-05)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from tokenprune.errors import InputError
from tokenprune.evaluation.metrics import get_metric, mean_statistic

__all__ = [
    "BootstrapResult",
    "McNemarResult",
    "compare_metric",
    "compare_paired",
    "holm",
    "mcnemar_exact",
    "paired_bootstrap",
    "score_interval",
]

Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps an ``(R, n, ...)`` stack of ``R`` samples to the ``(R,)`` values of the statistic (a mean, an F1)."""

# Resampled index matrices are built this many elements at a time (about 32 MB of int64 indices),
# so memory stays bounded for large benchmarks. Results do not depend on it: the generator's stream
# is the same whether the indices are drawn at once or in chunks.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test on paired 0/1 outcomes of methods A and B.

    Attributes:
        n: samples.
        b00, b01, b10, b11: samples where (A, B) were (wrong, wrong), (wrong, right), (right, wrong),
            (right, right).
        accuracy_a, accuracy_b: mean outcome of each method.
        difference: ``accuracy_a - accuracy_b``, that is ``(b10 - b01) / n``.
        ci_low, ci_high: an interval of the difference at ``confidence`` (Agresti and Min's adjusted
            Wald interval for paired proportions; see :func:`mcnemar_exact`).
        confidence: the interval's nominal coverage, e.g. 0.95.
        p_value: two-sided exact p-value; 1.0 when there is no discordant sample.
    """

    test: ClassVar[str] = "mcnemar_exact"

    n: int
    b00: int
    b01: int
    b10: int
    b11: int
    accuracy_a: float
    accuracy_b: float
    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float

    def as_dict(self) -> dict[str, Any]:
        """The fields and ``test``, as JSON-ready Python values."""
        return {"test": self.test, **asdict(self)}


@dataclass(frozen=True)
class BootstrapResult:
    """A paired bootstrap of ``statistic(A) - statistic(B)``.

    Attributes:
        n: samples.
        value_a, value_b: the statistic of each method on all samples.
        difference: ``value_a - value_b``.
        ci_low, ci_high: percentile interval of the difference at ``confidence``.
        confidence: the interval's nominal coverage, e.g. 0.95.
        p_value: two-sided bootstrap p-value (see :func:`paired_bootstrap`); it has a resolution of
            ``2 / n_resamples``, so 0.0 means below that.
        n_resamples: bootstrap resamples.
        seed: the generator's seed; the same inputs and seed give the same result.
        statistic: the statistic's name.
    """

    test: ClassVar[str] = "paired_bootstrap"

    n: int
    value_a: float
    value_b: float
    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    n_resamples: int
    seed: int
    statistic: str

    def as_dict(self) -> dict[str, Any]:
        """The fields and ``test``, as JSON-ready Python values."""
        return {"test": self.test, **asdict(self)}


def mcnemar_exact(a: Sequence[bool | int], b: Sequence[bool | int], *, confidence: float = 0.95) -> McNemarResult:
    """McNemar's exact test: do paired 0/1 outcomes of two methods differ? And by how much?

    With ``b01`` samples only B got right and ``b10`` only A got right, the two-sided p-value is that
    of the exact binomial test of ``min(b01, b10)`` successes in ``b01 + b10`` trials at probability
    1/2 (``scipy.stats.binomtest``): the chance, if neither method were better, of a split at least
    this lopsided. It is 1.0 when no sample is discordant, and symmetric in A and B.

    The interval of the difference ``(b10 - b01) / n`` is Agresti and Min's (2005) adjusted Wald
    interval: add 1/2 to each of the four cells, then ``d +- z sqrt((b10' + b01' - (b10' - b01')^2 / n')
    / n'^2)`` with ``d = (b10' - b01') / n'`` and ``n' = n + 2``, clipped to [-1, 1]. Unlike the plain Wald
    interval it does not collapse to a point when no sample is discordant, and its coverage stays near
    the nominal level for small samples. Swapping A and B mirrors it.

    Args:
        a, b: per-sample outcomes of methods A and B on the same samples, in the same order: bools,
            or numbers equal to 0 or 1.
        confidence: coverage of the interval, in ``(0, 1)``.

    Raises:
        InputError: different lengths, no samples, a value other than 0/1, or a bad ``confidence``.

    Example:
        >>> r = mcnemar_exact([1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 1])
        >>> r.b10, r.b01, r.p_value  # 4 discordant, all for A: 2 * (1/2)**4
        (4, 0, 0.125)
        >>> mcnemar_exact([True, False], [True, False]).p_value
        1.0
    """
    xa, xb = _binary(a, "a"), _binary(b, "b")
    _check_same_length(xa, xb)
    n = len(xa)
    b01 = int(np.count_nonzero(~xa & xb))
    b10 = int(np.count_nonzero(xa & ~xb))
    b11 = int(np.count_nonzero(xa & xb))
    discordant = b01 + b10
    if discordant == 0:
        p_value = 1.0
    else:
        from scipy.stats import binomtest

        # The two-sided test at 1/2 is symmetric; testing the smaller count makes that exact in floats.
        p_value = min(1.0, float(binomtest(min(b01, b10), discordant, 0.5).pvalue))
    _, confidence, _ = _check_bootstrap(1, confidence, 0)
    low, high = _paired_difference_interval(b10, b01, n, confidence)
    return McNemarResult(
        n=n,
        b00=n - b01 - b10 - b11,
        b01=b01,
        b10=b10,
        b11=b11,
        accuracy_a=(b10 + b11) / n,
        accuracy_b=(b01 + b11) / n,
        difference=(b10 - b01) / n,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        p_value=p_value,
    )


def _paired_difference_interval(b10: int, b01: int, n: int, confidence: float) -> tuple[float, float]:
    """Agresti and Min's adjusted Wald interval of ``(b10 - b01) / n`` (see :func:`mcnemar_exact`)."""
    from scipy.stats import norm

    z = float(norm.ppf((1 + confidence) / 2))
    up, down, total = b10 + 0.5, b01 + 0.5, n + 2.0
    centre = (up - down) / total
    half = z * math.sqrt(max(0.0, up + down - (up - down) ** 2 / total)) / total
    return max(-1.0, centre - half), min(1.0, centre + half)


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    statistic: Statistic = mean_statistic,
) -> BootstrapResult:
    """Paired bootstrap of the difference ``statistic(a) - statistic(b)``.

    Each resample draws ``n`` sample indices with replacement (a seeded ``numpy`` Generator); both
    methods are evaluated on the *same* indices, keeping the pairing. With the ``R`` resampled
    differences ``d*`` and the observed difference ``d``:

    * the interval is the percentile interval: the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
      quantiles of ``d*`` (numpy's default linear interpolation);
    * the p-value is twice the share of ``d*`` on the other side of 0 from ``d`` (``d* <= 0`` when
      ``d > 0``, ``d* >= 0`` when ``d < 0``; ties at 0 count against the effect), capped at 1, and 1.0
      when ``d == 0``. It is the smallest ``1 - confidence`` whose percentile interval reaches 0, so
      ``p < 0.05`` matches a 95 % interval excluding 0. A p-value of 0.0 means below ``2 / R``.

    Swapping ``a`` and ``b`` negates the difference and mirrors the interval, with the same p-value.
    Like any bootstrap it needs enough samples to see the spread: with a few dozen samples, or
    outcomes that never disagree, prefer :func:`mcnemar_exact` for 0/1 outcomes.

    Args:
        a, b: per-sample values of methods A and B on the same samples, in the same order: ``(n,)``
            scores, or ``(n, ...)`` arrays for a statistic that needs more than a score per sample
            (``(n, 2)`` POPE outcomes for :func:`~tokenprune.evaluation.metrics.pope_f1_statistic`).
        n_resamples: bootstrap resamples ``R``.
        confidence: coverage of the interval, in ``(0, 1)``.
        seed: seeds ``numpy.random.default_rng``.
        statistic: maps an ``(R, n, ...)`` stack of resampled values to ``(R,)`` statistics;
            vectorised, so ``R`` resamples cost a few numpy calls. The default is the mean.

    Raises:
        InputError: different shapes, fewer than 2 samples, non-finite or non-numeric values, bad
            ``n_resamples``/``confidence``/``seed``, or a statistic returning the wrong shape.

    Example:
        >>> a = [1.0, 0.6, 0.9, 1.0, 0.3, 1.0, 0.6, 1.0]
        >>> r = paired_bootstrap(a, [0.0] * 8, n_resamples=2000)
        >>> r.difference, r.p_value, r.ci_low > 0
        (0.8, 0.0, True)
        >>> paired_bootstrap(a, a).p_value
        1.0

        POPE F1, resampling (prediction, label) rows:

        >>> from tokenprune.evaluation.metrics import pope_f1_statistic, pope_outcomes
        >>> labels = [True, False] * 50
        >>> good = pope_outcomes(labels, labels)
        >>> worse = pope_outcomes([True] * 100, labels)
        >>> r = paired_bootstrap(good, worse, statistic=pope_f1_statistic)
        >>> round(r.value_a, 3), round(r.value_b, 3), r.p_value
        (1.0, 0.667, 0.0)
    """
    xa, xb = _values(a, "a"), _values(b, "b")
    if xa.shape != xb.shape:
        raise InputError(f"a and b must have the same shape (paired samples); got {xa.shape} and {xb.shape}")
    n = xa.shape[0]
    if n < 2:
        raise InputError(f"a paired bootstrap needs at least 2 samples; got {n}")
    n_resamples, confidence, seed = _check_bootstrap(n_resamples, confidence, seed)

    value_a = float(_evaluate(statistic, xa[None])[0])
    value_b = float(_evaluate(statistic, xb[None])[0])
    observed = value_a - value_b
    differences = _resample(
        lambda index: _evaluate(statistic, xa[index]) - _evaluate(statistic, xb[index]), n, n_resamples, seed
    )

    low, high = np.quantile(differences, [(1 - confidence) / 2, (1 + confidence) / 2])
    if observed > 0:
        p_value = min(1.0, 2 * np.count_nonzero(differences <= 0) / n_resamples)
    elif observed < 0:
        p_value = min(1.0, 2 * np.count_nonzero(differences >= 0) / n_resamples)
    else:
        p_value = 1.0
    return BootstrapResult(
        n=n,
        value_a=value_a,
        value_b=value_b,
        difference=observed,
        ci_low=float(low),
        ci_high=float(high),
        confidence=float(confidence),
        p_value=float(p_value),
        n_resamples=n_resamples,
        seed=seed,
        statistic=getattr(statistic, "__name__", type(statistic).__name__),
    )


def score_interval(
    metric: str,
    values: Any,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float] | None:
    """A ``confidence`` interval of one method's score on a benchmark: how far the score could move on
    another draw of as many samples.

    * Binary metrics (0/1 outcomes): the Wilson score interval of the proportion (``scipy.stats.binomtest``),
      which keeps its coverage near 0 and 1 where the normal approximation does not.
    * Other metrics: the percentile interval of the metric's statistic over ``n_resamples`` bootstrap
      resamples of the samples (POPE F1 recomputed on each), seeded by ``seed``.

    Returns:
        ``(low, high)``; None for a bootstrap of fewer than 2 samples.

    Raises:
        InputError: an unknown metric, values the metric rejects (none at all, for one), or bad
            ``confidence``/``n_resamples``/``seed``.

    Example:
        >>> low, high = score_interval("exact_match", [1.0] * 60 + [0.0] * 40)
        >>> round(low, 3), round(high, 3)
        (0.502, 0.691)
    """
    spec = get_metric(metric)
    x = spec.prepare(values)
    n_resamples, confidence, seed = _check_bootstrap(n_resamples, confidence, seed)
    n = x.shape[0]
    if spec.binary:
        from scipy.stats import binomtest

        interval = binomtest(int(np.count_nonzero(x)), n).proportion_ci(confidence_level=confidence, method="wilson")
        return float(interval.low), float(interval.high)
    if n < 2:
        return None
    values_star = _resample(lambda index: _evaluate(spec.statistic, x[index]), n, n_resamples, seed)
    low, high = np.quantile(values_star, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def compare_paired(
    a: Sequence[Any] | np.ndarray,
    b: Sequence[Any] | np.ndarray,
    *,
    binary: bool,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    statistic: Statistic | None = None,
) -> McNemarResult | BootstrapResult:
    """The paired test that fits: McNemar's exact test when ``binary``, else a paired bootstrap.

    Args:
        a, b: per-sample results of methods A and B on the same samples.
        binary: outcomes are 0/1 (:attr:`MetricSpec.binary <tokenprune.evaluation.metrics.MetricSpec>`).
        n_resamples, confidence, seed, statistic: passed to :func:`paired_bootstrap` (not binary only;
            ``statistic`` defaults to the mean).

    Raises:
        InputError: ``binary`` is not a bool, a ``statistic`` with ``binary=True``, or bad input for the test.

    Example:
        >>> compare_paired([1, 0, 1], [1, 0, 1], binary=True).test
        'mcnemar_exact'
        >>> compare_paired([0.3, 0.6, 1.0], [0.3, 0.6, 0.9], binary=False).test
        'paired_bootstrap'
    """
    if not isinstance(binary, (bool, np.bool_)):
        raise InputError(f"binary must be True (0/1 outcomes: McNemar) or False (bootstrap); got {binary!r}")
    if binary:
        if statistic is not None:
            raise InputError(
                "statistic applies to the bootstrap (binary=False); McNemar's test compares the mean of 0/1 outcomes"
            )
        return mcnemar_exact(a, b)
    return paired_bootstrap(
        a,
        b,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        statistic=mean_statistic if statistic is None else statistic,
    )


def compare_metric(
    metric: str,
    a: Any,
    b: Any,
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> McNemarResult | BootstrapResult:
    """:func:`compare_paired` for a metric of :data:`~tokenprune.evaluation.metrics.METRICS`, by name.

    The per-sample results are checked as :func:`~tokenprune.evaluation.metrics.aggregate` checks them;
    binary metrics get McNemar's test, the others a bootstrap of the metric's own statistic (POPE F1
    is recomputed on each resample).

    Example:
        >>> compare_metric("exact_match", [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]).test
        'mcnemar_exact'
        >>> pairs_a = [(True, True), (False, False), (True, True), (False, False)]
        >>> pairs_b = [(True, True), (True, False), (None, True), (False, False)]
        >>> r = compare_metric("pope_f1", pairs_a, pairs_b, n_resamples=1000)
        >>> r.test, r.statistic, r.value_a, r.value_b
        ('paired_bootstrap', 'pope_f1_statistic', 1.0, 0.5)
    """
    spec = get_metric(metric)
    xa, xb = spec.prepare(a), spec.prepare(b)
    if spec.binary:
        return mcnemar_exact(xa, xb)
    return paired_bootstrap(xa, xb, n_resamples=n_resamples, confidence=confidence, seed=seed, statistic=spec.statistic)


# --- input checks -----------------------------------------------------------------------------


def _binary(values: Any, name: str) -> np.ndarray:
    array = _numeric(values, name)
    if array.ndim != 1:
        raise InputError(f"{name} must be a 1-D sequence of 0/1 outcomes; got shape {array.shape}")
    bad = np.flatnonzero((array != 0) & (array != 1))
    if bad.size:
        raise InputError(
            f"{name} must hold 0/1 outcomes (bools, or numbers equal to 0 or 1); got {array[bad[0]].item()!r} "
            f"at index {bad[0]}. For scores such as VQA accuracy use paired_bootstrap (binary=False)."
        )
    return array.astype(bool)


def _values(values: Any, name: str) -> np.ndarray:
    array = _numeric(values, name)
    if array.ndim == 0:
        raise InputError(f"{name} must be a sequence of per-sample values; got a scalar {values!r}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))[0]
        raise InputError(f"{name} must hold finite values; got {array[bad].tolist()!r} at index {bad}")
    return array.astype(np.float64) if array.ndim == 1 else array


def _numeric(values: Any, name: str) -> np.ndarray:
    if isinstance(values, (str, bytes)):
        raise InputError(f"{name} must be a sequence of numbers; got the string {values!r:.80}")
    try:
        array = np.asarray(values)
    except ValueError as exc:  # ragged nesting
        raise InputError(f"{name} must be a sequence of numbers of one shape; {exc}") from exc
    if array.dtype.kind not in "biuf":
        raise InputError(
            f"{name} must be a sequence of numbers or bools; got dtype {array.dtype} "
            f"(first values {list(np.ravel(array)[:3])!r})"
        )
    return array


def _check_same_length(xa: np.ndarray, xb: np.ndarray) -> None:
    if len(xa) != len(xb):
        raise InputError(f"a and b must pair the same samples; got {len(xa)} and {len(xb)} outcomes")
    if len(xa) == 0:
        raise InputError("a and b hold no samples; expected at least one paired outcome")


def _check_bootstrap(n_resamples: Any, confidence: Any, seed: Any) -> tuple[int, float, int]:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, numbers.Integral) or n_resamples < 1:
        raise InputError(f"n_resamples must be an int >= 1, such as 10000; got {n_resamples!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
        raise InputError(f"confidence must be a number in (0, 1), such as 0.95; got {confidence!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"seed must be an int >= 0; got {seed!r}")
    return int(n_resamples), float(confidence), int(seed)


def _resample(evaluate: Callable[[np.ndarray], np.ndarray], n: int, n_resamples: int, seed: int) -> np.ndarray:
    """``evaluate(index)`` on ``n_resamples`` draws of ``n`` sample indices with replacement, ``(n_resamples,)``.

    ``index`` is ``(r, n)``: ``r`` resamples at a time, so that an index matrix holds about
    ``_CHUNK_ELEMENTS`` entries. The generator's stream is the same whatever the chunking.
    """
    rng = np.random.default_rng(seed)
    out = np.empty(n_resamples)
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        out[start:stop] = evaluate(rng.integers(0, n, size=(stop - start, n)))
    return out


def _evaluate(statistic: Statistic, stack: np.ndarray) -> np.ndarray:
    values = np.asarray(statistic(stack), dtype=np.float64)
    if values.shape != (stack.shape[0],):
        name = getattr(statistic, "__name__", type(statistic).__name__)
        raise InputError(
            f"statistic {name!r} must map an (R, n, ...) array to shape (R,); got shape {values.shape} "
            f"for input shape {stack.shape}. Reduce over axis 1, e.g. lambda x: x.mean(axis=1)."
        )
    return values


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's (1979) step-down adjustment of a family of ``m`` p-values (None entries are skipped).

    With the p-values sorted, ``p_(1) <= ... <= p_(m)``, the adjusted value of ``p_(i)`` is
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``. Rejecting every hypothesis whose adjusted p-value is at
    most ``alpha`` is Holm's procedure: the chance of any false rejection in the family stays at most
    ``alpha`` whatever the dependence between the tests. It rejects every hypothesis Bonferroni's
    ``m p <= alpha`` rejects, and possibly more. Equal p-values get equal adjusted values; the order of
    the input is kept.

    Raises:
        InputError: a p-value that is not a number in [0, 1].

    Example:
        >>> holm([0.01, 0.04, 0.03, None, 0.5])
        [0.04, 0.09, 0.09, None, 0.5]
    """
    values: list[tuple[float, int]] = []
    for index, p in enumerate(p_values):
        if p is None:
            continue
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
            raise InputError(f"p-values must be numbers in [0, 1] or None; got {p!r} at position {index}")
        values.append((float(p), index))
    values.sort()
    m = len(values)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(values):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted
