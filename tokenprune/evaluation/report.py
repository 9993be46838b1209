"""The summary of a comparison: scores, % of unpruned, costs and paired significance, as JSON-ready data.

:func:`summarize` turns a :class:`~tokenprune.evaluation.runner.Comparison` into the document
``tokenprune compare --json`` writes::

    {
      "metadata": {"model", "model_fingerprint", "model_class", "benchmarks": {name: {"source", "metric", "n"}},
                   "methods", "keeps", "seed", "batch_size", "max_new_tokens", "device", "dtype", "world_size",
                   "output", "tokenprune", "torch", "transformers", "python", "platform", "threads",
                   "git_commit", "date", "computed", "reused", "significance": {...}, "skipped": {label: why}},
      "results": [{"method", "label", "params", "positions", "keep", "benchmark", "metric", "score", "score_ci",
                   "relative", "selection_ms", "prefill_ms", "peak_mem_mb", "visual_before", "visual_after",
                   "prefill_gflops", "n",
                   "p_value_vs_none", "p_holm_vs_none", "test_vs_none", "vs_none", "families"}, ...],
      "pairwise": [{"benchmark", "keep", "method_a", "label_a", "params_a", "method_b", "label_b", "params_b",
                    "test", "difference", "difference_ci", "p_value", "p_holm", "detail"}, ...]
    }

One ``results`` row per configuration and benchmark, the reference (``method`` ``"none"``, ``keep`` 1.0)
first. ``score`` is the benchmark's metric on all its samples (POPE: F1; a fraction in [0, 1]), and
``score_ci`` its 95 % interval ``[low, high]`` (:func:`~tokenprune.evaluation.significance.score_interval`:
Wilson for 0/1 metrics, a seeded bootstrap otherwise; None with too few samples);
``relative`` is ``score / score of none`` (None when that is 0), ``selection_ms`` and ``prefill_ms``
are means over samples of the timings of the ``generate`` call that processed each sample (a batch;
the reference selects nothing, 0.0), ``peak_mem_mb`` the largest peak of those calls (None on CPU),
``visual_before``/``visual_after`` the mean visual tokens per sample, ``prefill_gflops`` the mean FLOPs of
the language model's prefill per sample (:mod:`tokenprune.evaluation.flops`; None when a record lacks them:
a language model of unknown shape, or records written before tokenprune recorded them). ``vs_none`` is the paired test
against the reference on the same samples (``as_dict()`` of
:class:`~tokenprune.evaluation.significance.McNemarResult` for 0/1 metrics,
:class:`~tokenprune.evaluation.significance.BootstrapResult` otherwise; ``difference`` is this row
minus the reference), and ``p_value_vs_none``/``test_vs_none`` repeat its p-value and test name; all
three are None for the reference row. ``families`` (benchmarks whose samples carry a question family,
such as ``scenes``) maps each family to ``{"score", "score_ci", "relative", "n", "p_value_vs_none",
"p_holm_vs_none"}``;
it is absent otherwise. ``positions`` is how the language model positioned the kept tokens (``"contiguous"``,
``"original"``), as run: the model's default where the spec set none; None for the reference row.
``metadata.skipped`` names the methods a pattern chose (``all``) that the model could not run, with why.
``pairwise`` holds one paired test per benchmark for every two methods at the same keep ratio
(``difference`` = A - B, ``difference_ci`` its 95 % interval: Agresti and Min's for 0/1 metrics, the
bootstrap's percentile interval otherwise; ``detail`` the test's ``as_dict()``).

A comparison of many methods runs many tests, and some will fall below 0.05 by chance alone. Each
``p_holm*`` is its ``p_value*`` adjusted by Holm's step-down method
(:func:`~tokenprune.evaluation.significance.holm`) within its family of tests: all rows against ``none``
(every benchmark, method and keep); each benchmark's question families against ``none``; all pairs of
methods. ``tokenprune compare`` shows the adjusted values.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenprune.evaluation.metrics import aggregate
from tokenprune.evaluation.significance import compare_metric, holm, score_interval

if TYPE_CHECKING:
    from tokenprune.evaluation.runner import BenchmarkRun, Comparison

__all__ = ["DEFAULT_RESAMPLES", "outcomes", "summarize"]

DEFAULT_RESAMPLES = 10_000
"""Bootstrap resamples of the paired tests of non-binary metrics (POPE F1, VQA accuracy)."""


def outcomes(metric: str, records: Sequence[dict[str, Any]]) -> np.ndarray:
    """The per-sample input of ``metric`` from records: scores, or POPE's ``(n, 2)`` outcomes.

    Example:
        >>> outcomes("pope_f1", [{"score": 1.0, "pope": [1, 1]}, {"score": 0.0, "pope": [-1, 0]}]).tolist()
        [[1, 1], [-1, 0]]
    """
    if metric == "pope_f1":
        return np.asarray([r["pope"] for r in records], dtype=np.int8).reshape(-1, 2)
    return np.asarray([r["score"] for r in records], dtype=np.float64)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _mean_of_all(values: Sequence[float | None]) -> float | None:
    """The mean, or None when a value is missing (a mean over some samples would pass for one over all)."""
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def _peak(values: Sequence[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else float(max(values))  # type: ignore[type-var]


def _relative(score: float, reference: float) -> float | None:
    return score / reference if reference > 0 else None


def _interval(metric: str, values: np.ndarray, *, n_resamples: int, seed: int) -> list[float] | None:
    """The score's 95 % interval as ``[low, high]`` (:func:`~tokenprune.evaluation.significance.score_interval`)."""
    interval = score_interval(metric, values, n_resamples=n_resamples, seed=seed)
    return None if interval is None else list(interval)


def _test(metric: str, a: np.ndarray, b: np.ndarray, *, n_resamples: int, seed: int) -> dict[str, Any] | None:
    """The paired test of ``a`` against ``b`` as a dict, or None when there are too few samples."""
    if len(a) < 2:
        return None
    return compare_metric(metric, a, b, n_resamples=n_resamples, seed=seed).as_dict()


def _families(
    run: BenchmarkRun, values: np.ndarray, reference: np.ndarray, *, is_reference: bool, n_resamples: int, seed: int
) -> dict[str, dict[str, Any]]:
    families = [s.extra.get("family") for s in run.samples]
    out = {}
    for family in run.families:
        index = np.asarray([f == family for f in families])
        score, base = aggregate(run.metric, values[index]), aggregate(run.metric, reference[index])
        test = None
        if not is_reference:
            test = _test(run.metric, values[index], reference[index], n_resamples=n_resamples, seed=seed)
        out[family] = {
            "score": score,
            "score_ci": _interval(run.metric, values[index], n_resamples=n_resamples, seed=seed),
            "relative": _relative(score, base),
            "n": int(index.sum()),
            "p_value_vs_none": None if test is None else test["p_value"],
        }
    return out


def _adjust(entries: Sequence[dict[str, Any]], raw: str, adjusted: str) -> None:
    """Write ``entries[i][adjusted]``: the Holm adjustment of their ``raw`` p-values, taken as one family."""
    for entry, value in zip(entries, holm([entry[raw] for entry in entries]), strict=True):
        entry[adjusted] = value


def _positions(records: Sequence[dict[str, Any]]) -> str | None:
    """The positions mode the records ran with; None for the reference, or records written before it was kept."""
    modes = {record.get("positions") for record in records}
    return modes.pop() if len(modes) == 1 else None


def summarize(comparison: Comparison, *, n_resamples: int = DEFAULT_RESAMPLES) -> dict[str, Any]:
    """``{"metadata", "results", "pairwise"}`` of a comparison (schema in the module docstring).

    Bootstrap tests are seeded with the comparison's seed, so the same records give the same document.
    """
    seed = int(comparison.metadata.get("seed", 0))
    reference_config = comparison.configs[0]
    results: list[dict[str, Any]] = []
    values: dict[tuple[str, str], np.ndarray] = {}
    for run in comparison.benchmarks:
        reference = outcomes(run.metric, comparison.records_for(reference_config, run))
        base = aggregate(run.metric, reference)
        for config in comparison.configs:
            records = comparison.records_for(config, run)
            mine = outcomes(run.metric, records)
            values[config.id, run.name] = mine
            score = aggregate(run.metric, mine)
            is_reference = config is reference_config
            test = None if is_reference else _test(run.metric, mine, reference, n_resamples=n_resamples, seed=seed)
            row = {
                "method": config.method.name,
                "label": config.label,
                "params": config.method.json_params(),
                "positions": _positions(records),
                "keep": config.keep,
                "benchmark": run.name,
                "metric": run.metric,
                "score": score,
                "score_ci": _interval(run.metric, mine, n_resamples=n_resamples, seed=seed),
                "relative": _relative(score, base),
                "selection_ms": _mean([r["selection_ms"] for r in records]),
                "prefill_ms": _mean([r["prefill_ms"] for r in records]),
                "peak_mem_mb": _peak([r["peak_mem_mb"] for r in records]),
                "visual_before": _mean([r["visual_before"] for r in records]),
                "visual_after": _mean([r["visual_after"] for r in records]),
                "prefill_gflops": _mean_of_all([r.get("prefill_gflops") for r in records]),
                "n": len(records),
                "p_value_vs_none": None if test is None else test["p_value"],
                "test_vs_none": None if test is None else test["test"],
                "vs_none": test,
            }
            if run.families:
                row["families"] = _families(
                    run, mine, reference, is_reference=is_reference, n_resamples=n_resamples, seed=seed
                )
            results.append(row)

    pairwise = []
    methods = comparison.configs[1:]
    keeps = list(dict.fromkeys(config.keep for config in methods))
    for run in comparison.benchmarks:
        same_keep = [[config for config in methods if config.keep == keep] for keep in keeps]
        for a, b in itertools.chain.from_iterable(itertools.combinations(group, 2) for group in same_keep):
            test = _test(run.metric, values[a.id, run.name], values[b.id, run.name], n_resamples=n_resamples, seed=seed)
            pairwise.append(
                {
                    "benchmark": run.name,
                    "keep": a.keep,
                    "method_a": a.method.name,
                    "label_a": a.label,
                    "params_a": a.method.json_params(),
                    "method_b": b.method.name,
                    "label_b": b.label,
                    "params_b": b.method.json_params(),
                    "test": None if test is None else test["test"],
                    "difference": None if test is None else test["difference"],
                    "difference_ci": None if test is None else [test["ci_low"], test["ci_high"]],
                    "p_value": None if test is None else test["p_value"],
                    "detail": test,
                }
            )
    _adjust(results, "p_value_vs_none", "p_holm_vs_none")
    for run in comparison.benchmarks:
        rows = [row for row in results if row["benchmark"] == run.name]
        families = [entry for row in rows for entry in row.get("families", {}).values()]
        _adjust(families, "p_value_vs_none", "p_holm_vs_none")
    _adjust(pairwise, "p_value", "p_holm")
    metadata = {
        **comparison.metadata,
        "computed": comparison.computed,
        "reused": comparison.reused,
        "significance": {
            "binary_metrics": "mcnemar_exact (two-sided exact binomial test on the discordant pairs, scipy)",
            "other_metrics": f"paired_bootstrap ({n_resamples} resamples, seed {seed}, 95% percentile interval)",
            "multiple_comparisons": "holm (step-down) within each family of tests: every row against none; each "
            "benchmark's question families against none; every pair of methods at the same keep",
        },
    }
    return {"metadata": metadata, "results": results, "pairwise": pairwise}
