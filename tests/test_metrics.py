"""Benchmark metrics: hand-computed cases, and independent reference implementations."""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenprune.errors import InputError
from tokenprune.evaluation.metrics import (
    CONTRACTIONS,
    METRICS,
    NUMBER_WORDS,
    aggregate,
    exact_match,
    get_metric,
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

# --- an independent reference for the normalisation -------------------------------------------


def reference_normalize(text: str) -> str:
    """The official VQA steps written out as plainly as possible: one mark at a time, one word at a time."""
    text = text.lower().replace("\n", " ").replace("\t", " ").strip()
    text = " ".join(text.split())
    original = text
    has_digit_comma = any(
        original[i].isdigit() and original[i + 1] == "," and original[i + 2].isdigit() for i in range(len(original) - 2)
    )
    for mark in [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?"]:
        if mark + " " in original or " " + mark in original or has_digit_comma:
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    mark = "!"
    text = text.replace(mark, "" if (mark + " " in original or " " + mark in original or has_digit_comma) else " ")
    kept = []
    for i, char in enumerate(text):
        if char == "." and not (i + 1 < len(text) and text[i + 1].isdigit()):
            continue
        kept.append(char)
    out = []
    for word in "".join(kept).split():
        if word in NUMBER_WORDS:
            word = NUMBER_WORDS[word]
        if word in ("a", "an", "the"):
            continue
        out.append(CONTRACTIONS.get(word, word))
    return " ".join(out)


# --- normalize_answer -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # case and whitespace
        ("  Hello\tWorld\n ", "hello world"),
        ("RED", "red"),
        ("", ""),
        # articles: whole words only
        ("The cat", "cat"),
        ("a dog", "dog"),
        ("An apple", "apple"),
        ("theater", "theater"),
        ("the", ""),
        # number words (up to ten, and "none")
        ("two", "2"),
        ("Ten apples", "10 apples"),
        ("none", "0"),
        ("eleven", "eleven"),
        ("someone", "someone"),
        # contractions
        ("dont", "don't"),
        ("Isnt it", "isn't it"),
        ("its", "its"),
        ("im", "im"),
        ("don't", "don't"),
        # punctuation inside numbers
        ("1,000", "1000"),
        ("3.5", "3.5"),
        ("3.5.", "3.5"),
        (".5", ".5"),
        ("5.0", "5.0"),
        ("10:30", "10:30"),
        ("50%", "50%"),
        ("$5", "$5"),
        # a digit-comma-digit anywhere deletes every mark instead of spacing it (official behaviour)
        ("1,000 red-white", "1000 redwhite"),
        # otherwise a mark touching a space is deleted, one inside a word becomes a space
        ("red-white", "red white"),
        ("red - white", "red white"),
        ("x,y", "x y"),
        ("hello, world", "hello world"),
        ("yes!", "yes"),
        ("(left)", "left"),
        # periods not followed by a digit go
        ("e.g.", "eg"),
        ("U.S.A.", "usa"),
        ("Two dogs.", "2 dogs"),
        # apostrophes are not punctuation here
        ("man's hat", "man's hat"),
    ],
)
def test_normalize_answer_cases(text, expected):
    assert normalize_answer(text) == expected


_ANSWER_TEXT = st.lists(
    st.sampled_from([*"ab1 2,.-!?'()%:;/\t\n", "The ", "two ", "dont ", "an ", "None ", "3.5", "1,0"]),
    max_size=16,
).map("".join)


@given(_ANSWER_TEXT)
def test_normalize_answer_matches_reference(text):
    assert normalize_answer(text) == reference_normalize(text)


@given(_ANSWER_TEXT)
def test_normalize_answer_is_idempotent(text):
    once = normalize_answer(text)
    assert normalize_answer(once) == once
    assert once == " ".join(once.split())


def test_contraction_map_keys_are_lowercase_apostrophe_free():
    assert all(key == key.lower() and "'" not in key for key in CONTRACTIONS)
    assert all("'" in value for value in CONTRACTIONS.values())


@pytest.mark.parametrize("bad", [None, 3, b"yes", ["yes"]])
def test_normalize_answer_rejects_non_strings(bad):
    with pytest.raises(InputError, match="must be a str; got"):
        normalize_answer(bad)


# --- vqa_accuracy -----------------------------------------------------------------------------


def reference_vqa(prediction: str, answers: list[str]) -> Fraction:
    """Leave-one-out VQA accuracy with exact fractions."""
    pred = normalize_answer(prediction)
    refs = [normalize_answer(a) for a in answers]
    accs = []
    for i in range(len(refs)):
        others = refs[:i] + refs[i + 1 :]
        accs.append(min(Fraction(1), Fraction(sum(o == pred for o in others), 3)))
    return sum(accs) / len(accs)


@pytest.mark.parametrize(
    ("matches", "expected"),
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)],
)
def test_vqa_accuracy_ten_answers_by_hand(matches, expected):
    # m matches of 10: holding out a match leaves m - 1, holding out a non-match leaves m.
    # m = 3: (3 * min(1, 2/3) + 7 * min(1, 3/3)) / 10 = (2 + 7) / 10 = 0.9, whereas min(1, 3/3) = 1.
    answers = ["blue"] * matches + ["green"] * (10 - matches)
    assert vqa_accuracy("blue", answers) == pytest.approx(expected, abs=1e-15)
    assert vqa_accuracy("blue", answers) == pytest.approx(float(reference_vqa("blue", answers)), abs=1e-15)


def test_vqa_accuracy_three_matches_differs_from_naive_formula():
    answers = ["2", "two", "2", "3", "3", "3", "3", "3", "3", "3"]
    naive = min(1.0, sum(normalize_answer(a) == "2" for a in answers) / 3)
    assert naive == 1.0
    assert vqa_accuracy("Two", answers) == 0.9


@given(
    st.lists(st.sampled_from(["blue", "Blue.", "green", "the blue", "2", "two"]), min_size=10, max_size=14),
    st.sampled_from(["blue", "green", "two", "red"]),
)
def test_vqa_accuracy_matches_leave_one_out_reference(answers, prediction):
    assert vqa_accuracy(prediction, answers) == pytest.approx(float(reference_vqa(prediction, answers)), abs=1e-12)


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["2", "3"], 1 / 3),
        (["2", "2"], 2 / 3),
        (["2", "2", "2"], 1.0),
        (["2"] * 9, 1.0),
        (["3"], 0.0),
        (["two"], 1 / 3),
    ],
)
def test_vqa_accuracy_fewer_than_ten_answers_falls_back(answers, expected):
    assert vqa_accuracy("2", answers) == pytest.approx(expected)


def test_vqa_accuracy_normalises_both_sides():
    assert vqa_accuracy("The Dog.", ["dog"] * 10) == 1.0
    assert vqa_accuracy("dont know", ["don't know"] * 10) == 1.0


@pytest.mark.parametrize(
    ("prediction", "answers", "message"),
    [
        ("x", [], "at least one reference answer; got an empty list"),
        ("x", "dog", "must be a list or other sequence; got str"),
        ("x", ["dog", 3], r"answers\[1\] must be a str; got int"),
        (None, ["dog"], "prediction must be a str; got NoneType"),
    ],
)
def test_vqa_accuracy_bad_input(prediction, answers, message):
    with pytest.raises(InputError, match=message):
        vqa_accuracy(prediction, answers)


# --- exact_match ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("bench", "bench", 1.0),
        ("The Bench.", "bench", 1.0),
        ("  left ", "Left", 1.0),
        ("two", "2", 1.0),
        ("benches", "bench", 0.0),
        ("on the left side", "left", 0.0),
    ],
)
def test_exact_match(prediction, answer, expected):
    assert exact_match(prediction, answer) == expected


def test_exact_match_bad_input():
    with pytest.raises(InputError, match="answer must be a str"):
        exact_match("x", ["x"])


# --- multiple_choice --------------------------------------------------------------------------

CHOICES = ["a cat", "a dog", "dark red", "red"]


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        # the whole output is a letter
        ("B", 1),
        ("b", 1),
        ("B.", 1),
        ("B)", 1),
        ("(B)", 1),
        ("[b]", 1),
        (" D ", 3),
        ("a", 0),  # a single letter, even lower case, is that letter
        # a leading letter with text
        ("(B) a dog", 1),
        ("(b) dog", 1),
        ("B. a dog", 1),
        ("C) dark red", 2),
        ("D: red", 3),
        # answer prefixes
        ("Answer: C", 2),
        ("The answer is (D).", 3),
        ("the correct answer is B", 1),
        ("Option A", 0),
        # a letter in brackets anywhere, or "answer is X"
        ("I think (C) is right", 2),
        ("Looking at the picture, the answer is B.", 1),
        # choice text
        ("The dog.", 1),
        ("dog", 1),
        ("A cat", 0),  # not the letter A followed by a space: the text "cat"
        ("It is dark red", 2),  # "red" lies inside the longer matching "dark red"
        ("Answer: the dog", 1),
        # unparseable
        ("E", None),  # only four choices
        ("a cat or a dog", None),
        ("(A) or (B)", 0),  # leading bracketed letter wins
        ("either (A) or maybe (B)", None),
        ("I don't know", None),
        ("", None),
        ("options", None),
    ],
)
def test_parse_choice_variants(prediction, expected):
    assert parse_choice(prediction, CHOICES) == expected


def test_parse_choice_duplicate_choice_texts_are_ambiguous():
    assert parse_choice("yes", ["yes", "no", "Yes."]) is None
    assert parse_choice("B", ["yes", "no", "Yes."]) == 1


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("(C) 42", "C", 1.0),
        ("C", "(C)", 1.0),
        ("c.", 2, 1.0),
        ("42", "42", 1.0),
        ("42", 2, 1.0),
        ("24", 2, 0.0),
        ("B", "C", 0.0),
        ("I cannot tell", 0, 0.0),
        ("", "A", 0.0),
    ],
)
def test_multiple_choice(prediction, answer, expected):
    assert multiple_choice(prediction, ["12", "24", "42"], answer) == expected


@pytest.mark.parametrize(
    ("choices", "answer", "message"),
    [
        ([], "A", "at least one option; got none"),
        (["x", "y"], 2, r"answer index must be in \[0, 1\] for 2 choices; got 2"),
        (["x", "y"], -1, r"answer index must be in \[0, 1\]"),
        (["x", "y"], "C", "names none of the 2 choices: expected a letter A-B"),
        (["x", "y"], "z", "names none of the 2 choices"),
        (["x", "y"], 1.5, "0-based int index, a letter or a choice's text"),
        (["x", "y"], True, "0-based int index"),
        ("xy", "A", "must be a list or other sequence; got str"),
        ([str(i) for i in range(27)], 0, "at most 26 options"),
        (["x", 3], 0, r"choices\[1\] must be a str"),
    ],
)
def test_multiple_choice_bad_input(choices, answer, message):
    with pytest.raises(InputError, match=message):
        multiple_choice("A", choices, answer)


# --- relaxed_accuracy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        # the 5 % boundary, both sides
        ("105", "100", 1.0),
        ("95", "100", 1.0),
        ("105.0001", "100", 0.0),
        ("94.999", "100", 0.0),
        ("21", "20", 1.0),
        ("0.315", "0.3", 1.0),  # exactly 5 %: in binary floats 0.015 / 0.3 > 0.05, in decimals it is equal
        ("0.3150001", "0.3", 0.0),
        ("100", "105", 1.0),  # relative to the answer: 5 / 105 < 5 %
        ("100", "95", 0.0),  # 5 / 95 > 5 %
        # negative numbers: the tolerance is on |answer|
        ("-105", "-100", 1.0),
        ("-95", "-100", 1.0),
        ("-106", "-100", 0.0),
        ("100", "-100", 0.0),
        # percentages: a trailing % divides by 100
        ("45%", "0.45", 1.0),
        ("45 %", "45%", 1.0),
        ("47%", "45%", 1.0),
        ("48%", "45%", 0.0),
        ("45%", "45", 0.0),
        # thousands commas, signs, exponents, trailing period
        ("1,050", "1000", 1.0),
        ("1,234.5", "1234.5", 1.0),
        ("+12", "12", 1.0),
        ("1.2e3", "1200", 1.0),
        ("12.", "12", 1.0),
        # an answer of zero needs zero
        ("0", "0", 1.0),
        ("0.0", "0", 1.0),
        ("-0", "0%", 1.0),
        ("0.001", "0", 0.0),
        # text: exact after normalisation
        ("Yes", "yes", 1.0),
        ("The USA.", "usa", 1.0),
        ("blue", "red", 0.0),
        ("five", "5", 1.0),  # not a number literal, but normalises to "5"
        ("12 apples", "12", 0.0),
        ("inf", "inf", 1.0),
        ("nan", "5", 0.0),
    ],
)
def test_relaxed_accuracy(prediction, answer, expected):
    assert relaxed_accuracy(prediction, answer) == expected


def test_relaxed_accuracy_tolerance_parameter():
    assert relaxed_accuracy("110", "100", max_relative_change=0.1) == 1.0
    assert relaxed_accuracy("101", "100", max_relative_change=0) == 0.0
    assert relaxed_accuracy("100.0", "100", max_relative_change=0) == 1.0
    with pytest.raises(InputError, match=re.escape("max_relative_change must be >= 0, such as 0.05; got -0.1")):
        relaxed_accuracy("1", "1", max_relative_change=-0.1)
    with pytest.raises(InputError, match="max_relative_change must be a number"):
        relaxed_accuracy("1", "1", max_relative_change="5%")


# --- POPE -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("Yes", True),
        ("yes.", True),
        ("YES, there is a dog.", True),
        ("No", False),
        ("no, there isn't", False),
        ("There is no cat. Yes.", False),  # the first of the two words
        ("Well... yes/no", True),
        ("Yesterday", None),
        ("Noon", None),
        ("I am not sure", None),
        ("", None),
    ],
)
def test_yes_no(prediction, expected):
    assert yes_no(prediction) is expected


def reference_pope(predictions, labels):
    """POPE counts with the documented rule written out: an unparseable answer is the wrong answer."""
    tp = fp = tn = fn = 0
    for prediction, label in zip(predictions, labels, strict=True):
        said_yes = (not label) if prediction is None else prediction
        if said_yes and label:
            tp += 1
        elif said_yes:
            fp += 1
        elif label:
            fn += 1
        else:
            tn += 1
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(labels)
    yes_ratio = sum(p is True for p in predictions) / n
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1, "yes_ratio": yes_ratio}


def test_pope_scores_by_hand_with_unparseable():
    # (yes, yes) TP; (yes, no) FP; (no, yes) FN; (no, no) TN; (None, yes) FN; (None, no) FP.
    scores = pope_scores([True, True, False, False, None, None], [True, False, True, False, True, False])
    assert (scores["tp"], scores["fp"], scores["tn"], scores["fn"], scores["unparsed"], scores["n"]) == (
        1,
        2,
        1,
        2,
        2,
        6,
    )
    assert scores["accuracy"] == pytest.approx(2 / 6)
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(1 / 3)
    assert scores["yes_ratio"] == pytest.approx(2 / 6)  # explicit yes answers only


def test_pope_scores_without_unparseable_is_the_standard_confusion_matrix():
    predictions = [True, True, True, False, False, True, False, True]
    labels = [True, True, False, False, True, True, False, False]
    scores = pope_scores(predictions, labels)
    # TP 3, FP 2, TN 2, FN 1
    assert scores["accuracy"] == pytest.approx(5 / 8)
    assert scores["precision"] == pytest.approx(3 / 5)
    assert scores["recall"] == pytest.approx(3 / 4)
    assert scores["f1"] == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))
    assert scores["yes_ratio"] == pytest.approx(5 / 8)


def test_pope_scores_zero_denominators_are_zero():
    scores = pope_scores([False, False], [False, False])
    assert scores["accuracy"] == 1.0
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.0, 0.0, 0.0)
    scores = pope_scores([None, None], [True, True])
    assert (scores["accuracy"], scores["recall"], scores["f1"], scores["yes_ratio"]) == (0.0, 0.0, 0.0, 0.0)


@given(
    st.lists(st.tuples(st.sampled_from([True, False, None]), st.booleans()), min_size=1, max_size=40),
)
def test_pope_scores_match_reference(pairs):
    predictions, labels = [p for p, _ in pairs], [label for _, label in pairs]
    scores, expected = pope_scores(predictions, labels), reference_pope(predictions, labels)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, abs=1e-12), key
    assert float(pope_f1_statistic(pope_outcomes(predictions, labels)[None])[0]) == scores["f1"]
    assert aggregate("pope_f1", pairs) == scores["f1"]


def test_pope_f1_statistic_is_vectorised_over_leading_axes():
    x = pope_outcomes([True, False, None, True], [True, True, False, False])
    stack = np.stack([x, x[[0, 0, 0, 0]], x[[1, 2, 1, 2]]])
    assert pope_f1_statistic(stack).tolist() == pytest.approx([0.4, 1.0, 0.0])


def test_pope_outcomes_encoding_and_numpy_inputs():
    out = pope_outcomes(np.array([True, False]), np.array([False, True]))
    assert out.dtype == np.int8 and out.tolist() == [[1, 0], [0, 1]]
    assert pope_outcomes([1, 0, None], [1, 1, 0]).tolist() == [[1, 1], [0, 1], [-1, 0]]


@pytest.mark.parametrize(
    ("predictions", "labels", "message"),
    [
        ([True], [True, False], "same length; got 1 predictions and 2 labels"),
        ([], [], "at least one"),
        (["yes"], [True], r"predictions\[0\] must be True, False or None; got 'yes'"),
        ([True], [None], r"labels\[0\] must be True or False; got None"),
        ([2], [True], r"predictions\[0\] must be True, False or None; got 2"),
        ("yes", [True], "predictions must be a list"),
    ],
)
def test_pope_bad_input(predictions, labels, message):
    with pytest.raises(InputError, match=message):
        pope_scores(predictions, labels)


# --- the registry and aggregation -------------------------------------------------------------


def test_metric_registry_names_and_binary_flags():
    assert {name: spec.binary for name, spec in METRICS.items()} == {
        "vqa_accuracy": False,
        "exact_match": True,
        "exact_match_any": True,
        "multiple_choice": True,
        "relaxed_accuracy": True,
        "pope_f1": False,
    }
    for name, spec in METRICS.items():
        assert spec.name == name and spec.summary and callable(spec.score)
    assert "score" not in repr(METRICS["exact_match"])


@pytest.mark.parametrize("name", [n for n in METRICS if n != "pope_f1"])
def test_aggregate_is_the_mean_of_scores(name):
    scores = [1.0, 0.0, 1.0, 1.0]
    assert aggregate(name, scores) == 0.75
    assert aggregate(name, np.array(scores)) == 0.75


def test_aggregate_vqa_accepts_fractional_scores():
    assert aggregate("vqa_accuracy", [0.3, 0.6, 0.9, 1.0]) == pytest.approx(0.7)


def test_aggregate_pope_accepts_outcome_arrays_and_pairs():
    predictions, labels = [True, True, None, False], [True, False, True, False]
    pairs = list(zip(predictions, labels, strict=True))
    assert aggregate("pope_f1", pope_outcomes(predictions, labels)) == aggregate("pope_f1", pairs) == 0.5


@pytest.mark.parametrize(
    ("metric", "per_sample", "message"),
    [
        ("exact_macth", [1.0], "unknown metric 'exact_macth'. Did you mean 'exact_match'"),
        ("exact_match", [], "non-empty 1-D sequence of scores; got shape"),
        ("exact_match", [1.0, 0.5], "binary scores: expected 0 or 1; got 0.5 at index 1"),
        ("vqa_accuracy", [0.3, 1.5], r"expected scores in \[0, 1\]; got 1.5 at index 1"),
        ("vqa_accuracy", [0.3, float("nan")], r"expected scores in \[0, 1\]; got nan"),
        ("vqa_accuracy", ["a"], "per-sample scores must be numbers"),
        ("pope_f1", np.zeros((3, 3)), r"expected an \(n, 2\) array from pope_outcomes\(\); got shape \(3, 3\)"),
        ("pope_f1", np.full((2, 2), 5), "expected predictions in"),
        ("pope_f1", [True, False], r"expected \(prediction, label\) pairs"),
    ],
)
def test_aggregate_bad_input(metric, per_sample, message):
    with pytest.raises(InputError, match=message):
        aggregate(metric, per_sample)


def test_get_metric_unknown_lists_available():
    with pytest.raises(InputError, match=re.escape("Available: vqa_accuracy, exact_match")):
        get_metric("bleu")
    assert get_metric("pope_f1").name == "pope_f1"
