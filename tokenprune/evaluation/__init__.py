"""Evaluation: benchmark metrics and paired significance tests for comparing pruning methods.

* :mod:`~tokenprune.evaluation.metrics`: per-sample scores (VQA accuracy, exact match, multiple choice,
  ChartQA relaxed accuracy, POPE) and their aggregation; :data:`~tokenprune.evaluation.metrics.METRICS`
  says which are 0/1.
* :mod:`~tokenprune.evaluation.significance`: McNemar's exact test and a paired bootstrap.

Importing this package needs numpy only; scipy is imported when McNemar's test runs.

>>> from tokenprune.evaluation import compare_metric
>>> compare_metric("multiple_choice", [1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]).p_value
0.0625
"""

from tokenprune.evaluation.metrics import (
    CONTRACTIONS,
    METRICS,
    NUMBER_WORDS,
    MetricSpec,
    aggregate,
    exact_match,
    exact_match_any,
    get_metric,
    mean_statistic,
    multiple_choice,
    normalize_answer,
    parse_choice,
    pope_f1_statistic,
    pope_outcomes,
    pope_scores,
    relaxed_accuracy,
    vqa_accuracy,
    yes_no,
)
from tokenprune.evaluation.significance import (
    BootstrapResult,
    McNemarResult,
    compare_metric,
    compare_paired,
    holm,
    mcnemar_exact,
    paired_bootstrap,
)

__all__ = [
    "CONTRACTIONS",
    "METRICS",
    "NUMBER_WORDS",
    "BootstrapResult",
    "McNemarResult",
    "MetricSpec",
    "aggregate",
    "compare_metric",
    "compare_paired",
    "exact_match",
    "exact_match_any",
    "get_metric",
    "holm",
    "mcnemar_exact",
    "mean_statistic",
    "multiple_choice",
    "normalize_answer",
    "paired_bootstrap",
    "parse_choice",
    "pope_f1_statistic",
    "pope_outcomes",
    "pope_scores",
    "relaxed_accuracy",
    "vqa_accuracy",
    "yes_no",
]
