"""Benchmark metrics: a score per sample, and the aggregate a paper reports.

Each metric follows the definition of the benchmark's official evaluation script, as lmms-eval runs it;
where those scripts are ambiguous or random, the choice made here is stated in the function's docstring.

==================== =================== ======================================== ======
metric               benchmarks          per-sample score                         binary
==================== =================== ======================================== ======
``vqa_accuracy``     VQAv2, TextVQA      leave-one-out accuracy against 10 humans no
``exact_match``      GQA                 normalised answer equals the reference   yes
``exact_match_any``  scenes (generated)  equals any of the references             yes
``multiple_choice``  MMMU, AI2D          parsed choice equals the answer          yes
``relaxed_accuracy`` ChartQA             within 5 % (numbers) or exact (text)     yes
``pope_f1``          POPE                a (prediction, label) pair; F1 over all  no
==================== =================== ======================================== ======

"binary" tells :mod:`tokenprune.evaluation.significance` which paired test fits: McNemar's exact test
for 0/1 outcomes, a paired bootstrap otherwise (POPE F1 is not a mean of per-sample scores, so it is
bootstrapped by resampling samples and recomputing F1).

>>> from tokenprune.evaluation.metrics import aggregate, vqa_accuracy
>>> scores = [vqa_accuracy("Two", ["2"] * 10), vqa_accuracy("dog", ["cat"] * 9 + ["dog"])]
>>> scores
[1.0, 0.3]
>>> aggregate("vqa_accuracy", scores)
0.65
"""

from __future__ import annotations

import difflib
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from tokenprune.errors import InputError

__all__ = [
    "CONTRACTIONS",
    "METRICS",
    "NUMBER_WORDS",
    "MetricSpec",
    "aggregate",
    "exact_match",
    "exact_match_any",
    "get_metric",
    "mean_statistic",
    "multiple_choice",
    "normalize_answer",
    "parse_choice",
    "pope_f1_statistic",
    "pope_outcomes",
    "pope_scores",
    "relaxed_accuracy",
    "vqa_accuracy",
    "yes_no",
]

# --- answer normalisation (VQA / TextVQA official evaluation) ----------------------------------

#: Marks that the official VQA script removes or turns into a space (``.`` is handled separately;
#: ``'``, ``:``, ``%``, ``$``, ``#``, ``&``, ``*`` are kept, as there).
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")

NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
"""Number words the official VQA script turns into digits (note ``"none" -> "0"``); larger numbers are not mapped."""

_ARTICLES = frozenset({"a", "an", "the"})

CONTRACTIONS: dict[str, str] = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldnt": "couldn't",
    "couldve": "could've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "isnt": "isn't",
    "itd": "it'd",
    "itll": "it'll",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "shant": "shan't",
    "shouldnt": "shouldn't",
    "shouldve": "should've",
    "thats": "that's",
    "thered": "there'd",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "werent": "weren't",
    "weve": "we've",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldnt": "wouldn't",
    "wouldve": "would've",
    "yall": "y'all",
    "youd": "you'd",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
"""Apostrophe-less contractions restored to their standard spelling.

The single contractions of the official VQA script's map. Left out: its double contractions
(``couldn't've`` and the like, which no VQA answer uses) and its capitalised keys (``Im``, ``Ive``, ``Id've``),
which never match there because words are lowercased first. Words that are also ordinary words
(``id``, ``ill``, ``its``, ``lets``, ``shed``, ``well``, ``were``) are not mapped, as there.
"""


def normalize_answer(text: str) -> str:
    """Normalise an answer as the official VQA v2 / TextVQA evaluation does.

    In order:

    1. lowercase, and collapse every run of whitespace (newlines, tabs) to one space;
    2. punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is *deleted* when it touches a
       space or when the text holds a digit-comma-digit (so ``"1,000" -> "1000"``), and is otherwise
       *replaced by a space* (``"red-white" -> "red white"``); then every period not followed by a digit is
       deleted (``"3.5"`` stays, ``"etc." -> "etc"``). Other marks (``' : % $ #``) are kept;
    3. number words to digits (:data:`NUMBER_WORDS`, ``"two" -> "2"``), articles ``a``/``an``/``the``
       removed, apostrophe-less contractions restored (:data:`CONTRACTIONS`, ``"dont" -> "don't"``).

    Sources: ``processPunctuation`` and ``processDigitArticle`` of ``vqaEval.py`` in GT-Vision-Lab/VQA
    (also lmms-eval's ``EvalAIAnswerProcessor``). Two deliberate differences from lmms-eval's processor,
    which first deletes every ``,`` and ``?`` and splits ``'s`` into ``" 's"``: here commas and question
    marks follow rule 2 like the other marks, and ``'s`` is left alone, so that ``"thats"`` and ``"that's"``
    normalise alike. Both touch only rare answers. Unlike ``vqaEval.py``, which normalises an answer
    only when the ten references disagree, normalisation here is always applied, as lmms-eval does.

    Args:
        text: a model's answer or a reference answer.

    Returns:
        The normalised answer; normalising it again changes nothing.

    Raises:
        InputError: ``text`` is not a str.

    Example:
        >>> normalize_answer("  The  Two dogs!")
        '2 dogs'
        >>> normalize_answer("1,000"), normalize_answer("3.5 m."), normalize_answer("red-white")
        ('1000', '3.5 m', 'red white')
        >>> normalize_answer("I dont know"), normalize_answer("None")
        ("i don't know", '0')
    """
    text = " ".join(_check_str(text, "text").lower().split())
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    table = {}
    for mark in _PUNCTUATION:
        if mark in text:
            delete = delete_all or f"{mark} " in text or f" {mark}" in text
            table[ord(mark)] = "" if delete else " "
    text = _PERIOD_NOT_BEFORE_DIGIT.sub("", text.translate(table))
    words = []
    for word in text.split():
        word = NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


# --- open-ended answers -----------------------------------------------------------------------


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy (VQAv2, TextVQA, VizWiz): agreement with the human answers, normalised.

    With 10 (or more) reference answers, the official formula: for each reference ``i``, the accuracy
    against the *other* answers is ``min(1, #matches among them / 3)``, and the score is the mean over
    ``i``. With ``m`` matches among 10 answers this gives 0, 0.3, 0.6, 0.9 for ``m`` = 0..3 and 1 from
    ``m = 4``. With fewer than 10 answers (a subset, or a benchmark with fewer annotators), leaving
    one out would understate agreement, so the score falls back to ``min(1, m / 3)`` over all of them.

    Args:
        prediction: the model's answer.
        answers: the reference answers (10 in VQAv2 and TextVQA); duplicates count.

    Returns:
        The accuracy, in ``[0, 1]``.

    Raises:
        InputError: ``answers`` is empty or a bare str, or an answer is not a str.

    Example:
        >>> refs = ["two", "2", "2", "3", "3", "3", "3", "3", "3", "3"]
        >>> vqa_accuracy("2", refs)  # 3 matches: 3 subsets hold 2 of them, 7 hold all 3
        0.9
        >>> vqa_accuracy("2", ["2", "3"])  # fewer than 10 answers: min(1, 1/3)
        0.3333333333333333
    """
    predicted = normalize_answer(_check_str(prediction, "prediction"))
    references = [normalize_answer(answer) for answer in _check_str_list(answers, "answers")]
    matches = sum(reference == predicted for reference in references)
    n = len(references)
    if n < 10:
        return min(3, matches) / 3
    # Holding out one of the m matching answers leaves m - 1 matches; holding out any other leaves m.
    total_thirds = matches * min(3, matches - 1) + (n - matches) * min(3, matches)
    return total_thirds / (3 * n)


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when the prediction equals the answer after :func:`normalize_answer`, else 0.0 (GQA).

    Example:
        >>> exact_match("The Bench.", "bench"), exact_match("benches", "bench")
        (1.0, 0.0)
    """
    predicted = normalize_answer(_check_str(prediction, "prediction"))
    return float(predicted == normalize_answer(_check_str(answer, "answer")))


def exact_match_any(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the prediction matches any of the reference answers, else 0.0 (the generated scenes benchmark).

    A reference matches when both normalise (:func:`normalize_answer`) to the same non-empty text, or when
    both are equal after lower-casing, trimming whitespace and dropping one trailing period. The second
    rule is what lets a one-letter answer match: ``normalize_answer`` deletes the article ``"a"``, so
    ``"A"`` normalises to the empty string, and an empty prediction must not match it.

    Example:
        >>> exact_match_any("Two", ["2", "two"]), exact_match_any("A.", ["A", "6"]), exact_match_any("", ["A"])
        (1.0, 1.0, 0.0)
        >>> exact_match_any("the blue hexagon", ["blue hexagon", "hexagon"]), exact_match_any("B", ["A", "6"])
        (1.0, 0.0)
    """
    prediction = _check_str(prediction, "prediction")
    references = _check_str_list(answers, "answers")
    predicted, plain = normalize_answer(prediction), _plain(prediction)
    for reference in references:
        normalised = normalize_answer(reference)
        if (normalised and normalised == predicted) or (plain and _plain(reference) == plain):
            return 1.0
    return 0.0


def _plain(text: str) -> str:
    text = " ".join(text.lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")


def _parse_number(text: str) -> Decimal | None:
    """A decimal number written as ``text`` (thousands commas and a trailing ``%`` allowed), else None."""
    text = text.strip()
    percent = text.endswith("%")
    if percent:
        text = text[:-1].rstrip()
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    if not _NUMBER.fullmatch(text):
        return None
    value = Decimal(text)
    return value / 100 if percent else value


def relaxed_accuracy(prediction: str, answer: str, *, max_relative_change: float = 0.05) -> float:
    """ChartQA's relaxed accuracy: numbers within 5 % of the answer, anything else exactly.

    When both strings are numbers, the prediction is correct if ``|p - a| <= 0.05 * |a|``, computed in
    exact decimal arithmetic, so an error of exactly 5 % counts as correct. An answer of 0 needs a
    prediction equal to 0 (``"0.0"`` is). Numbers may carry a sign, a decimal part, an exponent,
    thousands commas (``"1,234.5"``; a comma anywhere else makes the string text) and a trailing ``%``,
    which divides by 100 (``"45%"`` equals ``"0.45"``, not ``"45"``, as in the ChartQA/Pix2Struct and
    lmms-eval code). Otherwise the two strings must match after :func:`normalize_answer`.

    Source: Masry et al. 2022 (ChartQA), sec. 5.1, and ``relaxed_correctness`` in lmms-eval, which
    compares text with ``lower()`` only and does not accept thousands commas.

    Args:
        prediction: the model's answer.
        answer: the reference answer.
        max_relative_change: the tolerance, 0.05 in ChartQA.

    Returns:
        1.0 or 0.0.

    Raises:
        InputError: a non-str argument, or a negative tolerance.

    Example:
        >>> relaxed_accuracy("105", "100"), relaxed_accuracy("105.1", "100")
        (1.0, 0.0)
        >>> relaxed_accuracy("1,020", "1000"), relaxed_accuracy("45%", "0.45"), relaxed_accuracy("Yes", "yes")
        (1.0, 1.0, 1.0)
    """
    prediction = _check_str(prediction, "prediction")
    answer = _check_str(answer, "answer")
    if isinstance(max_relative_change, bool) or not isinstance(max_relative_change, numbers.Real):
        raise InputError(f"max_relative_change must be a number >= 0, such as 0.05; got {max_relative_change!r}")
    if not max_relative_change >= 0:
        raise InputError(f"max_relative_change must be >= 0, such as 0.05; got {max_relative_change!r}")
    predicted, target = _parse_number(prediction), _parse_number(answer)
    if predicted is not None and target is not None:
        if target == 0:
            return float(predicted == 0)
        tolerance = Decimal(str(max_relative_change))
        return float(abs(predicted - target) <= tolerance * abs(target))
    return float(normalize_answer(prediction) == normalize_answer(answer))


# --- multiple choice --------------------------------------------------------------------------

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ANSWER_PREFIX = re.compile(
    r"(?:the\s+)?(?:correct\s+|best\s+|final\s+)?(?:answer|option|choice)\b(?:\s+is)?\s*[:\-]?\s*", re.IGNORECASE
)
_ONLY_LETTER = re.compile(r"[\(\[]?\s*([A-Za-z])\s*[\)\]]?\s*[.:]?")
_BRACKETED_LETTER = re.compile(r"[\(\[]\s*([A-Za-z])\s*[\)\]]")
_LEADING_LETTER = re.compile(r"([A-Z])[.):]\s")
_ANSWER_IS_LETTER = re.compile(r"answer(?:\s+is|\s*:)\s*[\(\[]?([A-Z])(?![A-Za-z])", re.IGNORECASE)


def _letter_index(letter: str, n_choices: int) -> int | None:
    index = _LETTERS.find(letter.upper())
    return index if 0 <= index < n_choices else None


def parse_choice(prediction: str, choices: Sequence[str]) -> int | None:
    """The index of the choice a model's output names, or None when it names none unambiguously.

    Rules, in order (choice ``i`` has letter ``"ABC..."[i]``; a letter beyond the last choice is ignored):

    1. surrounding whitespace and a leading ``"Answer:"``, ``"The answer is"``, ``"Option"`` (any case) are
       dropped;
    2. the whole output is one letter, bare or in brackets, optionally followed by ``.`` or ``:``, in
       either case: ``"B"``, ``"b"``, ``"(B)"``, ``"[b]"``, ``"B."``, ``"B)"``;
    3. the output starts with ``"(X)"`` or ``"[X]"`` (either case), or with an upper-case ``"X."``,
       ``"X)"``, ``"X:"`` followed by a space: ``"(B) a cat"``, ``"B. a cat"``. A bare ``"A cat"`` is not a
       letter (``a`` is also the article), so rule 5 reads it;
    4. exactly one distinct letter appears in brackets anywhere, or the output says ``"answer is X"``
       / ``"answer: X"`` (upper-case ``X``): ``"I think (C) is right"``;
    5. the text of a choice: the output equals one choice after :func:`normalize_answer`, or contains the
       normalised text of exactly one choice as whole words (a choice whose text lies inside a longer
       matching choice does not count: ``"dark red"`` names ``"dark red"``, not ``"red"``).

    Anything else is None. The MMMU script also takes a letter surrounded by spaces anywhere, keeps the
    last of several, and guesses at random when nothing parses; here a guess would make scores depend on
    a seed, so an unparseable output is simply wrong.

    Example:
        >>> choices = ["a cat", "a dog", "dark red", "red"]
        >>> [parse_choice(s, choices) for s in ["B", "(b) dog", "C. dark red", "Answer: D", "The dog."]]
        [1, 1, 2, 3, 1]
        >>> parse_choice("It is dark red", choices), parse_choice("a cat or a dog", choices), parse_choice("E", choices)
        (2, None, None)
    """
    original = _check_str(prediction, "prediction").strip()
    choices = _check_choices(choices)
    n = len(choices)
    prefix = _ANSWER_PREFIX.match(original)
    text = original[prefix.end() :] if prefix and prefix.end() < len(original) else original
    for match in (_ONLY_LETTER.fullmatch(text), _BRACKETED_LETTER.match(text), _LEADING_LETTER.match(text)):
        if match and (index := _letter_index(match.group(1), n)) is not None:
            return index
    bracketed = {_letter_index(m.group(1), n) for m in _BRACKETED_LETTER.finditer(text)} - {None}
    if len(bracketed) == 1:
        return bracketed.pop()
    match = _ANSWER_IS_LETTER.search(original)
    if match and (index := _letter_index(match.group(1), n)) is not None:
        return index
    # Rule 5 reads the whole output: a choice's own text may begin with "answer" or "option".
    normalised = normalize_answer(original)
    texts = [normalize_answer(choice) for choice in choices]
    equal = [i for i, choice in enumerate(texts) if choice == normalised]
    if equal:
        return equal[0] if len(equal) == 1 else None
    found = [i for i, choice in enumerate(texts) if choice and _contains_words(normalised, choice)]
    maximal = [i for i in found if not any(texts[j] != texts[i] and _contains_words(texts[j], texts[i]) for j in found)]
    return maximal[0] if len(maximal) == 1 else None


def _contains_words(text: str, part: str) -> bool:
    """``part`` occurs in ``text`` as whole words (both normalised: words separated by single spaces)."""
    return f" {part} " in f" {text} "


def multiple_choice(prediction: str, choices: Sequence[str], answer: str | int) -> float:
    """1.0 when the choice parsed from ``prediction`` (:func:`parse_choice`) is the answer, else 0.0 (MMMU, AI2D).

    Args:
        prediction: the model's output.
        choices: the options' texts, in letter order (at most 26).
        answer: the correct choice, as a 0-based index, a letter (``"B"``, ``"(B)"``), or the text of a choice.

    Raises:
        InputError: no choices, an index out of range, or an answer that names no choice.

    Example:
        >>> multiple_choice("(C) 42", ["12", "24", "42"], "C"), multiple_choice("24", ["12", "24", "42"], 2)
        (1.0, 0.0)
        >>> multiple_choice("I cannot tell", ["12", "24", "42"], 0)  # unparseable: wrong, not an error
        0.0
    """
    choices = _check_choices(choices)
    target = _answer_index(answer, choices)
    return float(parse_choice(prediction, choices) == target)


def _answer_index(answer: str | int, choices: list[str]) -> int:
    n = len(choices)
    if isinstance(answer, numbers.Integral) and not isinstance(answer, bool):
        if not 0 <= int(answer) < n:
            raise InputError(f"answer index must be in [0, {n - 1}] for {n} choices; got {answer}")
        return int(answer)
    if not isinstance(answer, str):
        raise InputError(f"answer must be a 0-based int index, a letter or a choice's text; got {answer!r}")
    letter = _ONLY_LETTER.fullmatch(answer.strip())
    if letter and (index := _letter_index(letter.group(1), n)) is not None:
        return index
    normalised = normalize_answer(answer)
    for index, choice in enumerate(choices):
        if normalize_answer(choice) == normalised:
            return index
    raise InputError(
        f"answer {answer!r} names none of the {n} choices: expected a letter A-{_LETTERS[n - 1]}, "
        f"an index in [0, {n - 1}] or one of {choices!r}"
    )


# --- POPE -------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z]+")


def yes_no(prediction: str) -> bool | None:
    """POPE: True for yes, False for no, by the first word ``yes`` or ``no`` in the output; else None.

    Words are runs of letters, in any case, so ``"Yes, there is."`` is True, ``"No."`` is False,
    ``"There is no dog; yes."`` is False, and ``"yesterday"`` or ``"not sure"`` are None.
    (LLaVA's ``eval_pope.py`` instead reads any output without ``no``/``not`` as yes; here such an
    output is unparseable, and :func:`pope_scores` counts it as wrong.)

    Example:
        >>> yes_no("Yes, there is a dog."), yes_no("NO"), yes_no("I am not sure")
        (True, False, None)
    """
    for word in _WORD.findall(_check_str(prediction, "prediction").lower()):
        if word == "yes":
            return True
        if word == "no":
            return False
    return None


def _check_flag(value: Any, what: str, *, allow_none: bool) -> bool | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    expected = "True, False or None" if allow_none else "True or False"
    raise InputError(f"{what} must be {expected}; got {value!r}")


def pope_outcomes(predictions: Sequence[bool | None], labels: Sequence[bool]) -> np.ndarray:
    """POPE per-sample outcomes as an ``(n, 2)`` int8 array: ``[prediction, label]`` per row.

    The prediction column is 1 (yes), 0 (no) or -1 (unparseable, ``None``); the label column is 1 or 0.
    This is the per-sample input of the ``pope_f1`` metric: :func:`pope_f1_statistic` and
    :func:`aggregate` read it, and a paired bootstrap resamples its rows.

    Raises:
        InputError: empty or of different lengths, or a value that is not a bool (``None`` for predictions).

    Example:
        >>> pope_outcomes([True, None, False], [True, False, False]).tolist()
        [[1, 1], [-1, 0], [0, 0]]
    """
    predictions = _check_sequence(predictions, "predictions")
    labels = _check_sequence(labels, "labels")
    if len(predictions) != len(labels):
        raise InputError(
            f"predictions and labels must have the same length; got {len(predictions)} predictions "
            f"and {len(labels)} labels"
        )
    if not predictions:
        raise InputError("POPE needs at least one (prediction, label) pair; got none")
    rows = []
    for i, (prediction, label) in enumerate(zip(predictions, labels, strict=True)):
        parsed = _check_flag(prediction, f"predictions[{i}]", allow_none=True)
        rows.append((-1 if parsed is None else int(parsed), int(_check_flag(label, f"labels[{i}]", allow_none=False))))
    return np.asarray(rows, dtype=np.int8)


def _pope_counts(outcomes: np.ndarray) -> dict[str, np.ndarray]:
    """Confusion counts over the sample axis (-2) of ``(..., n, 2)`` outcomes; unparseable = wrong."""
    predicted, label = outcomes[..., 0], outcomes[..., 1] == 1
    # An unparseable answer is scored as the wrong answer: a false negative when the label is yes,
    # a false positive when it is no.
    said_yes = np.where(predicted < 0, ~label, predicted == 1)
    return {
        "tp": np.count_nonzero(said_yes & label, axis=-1),
        "fp": np.count_nonzero(said_yes & ~label, axis=-1),
        "tn": np.count_nonzero(~said_yes & ~label, axis=-1),
        "fn": np.count_nonzero(~said_yes & label, axis=-1),
        "yes": np.count_nonzero(predicted == 1, axis=-1),
        "unparsed": np.count_nonzero(predicted < 0, axis=-1),
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast_shapes(num.shape, den.shape)), where=den > 0)


def pope_f1_statistic(outcomes: np.ndarray) -> np.ndarray:
    """POPE F1 of ``(..., n, 2)`` outcomes (:func:`pope_outcomes`), one value per leading index.

    ``F1 = 2 TP / (2 TP + FP + FN)`` (equal to ``2 P R / (P + R)``), 0 when there is no true positive;
    an unparseable prediction counts as wrong (see :func:`pope_scores`). Vectorised for the bootstrap:
    an ``(R, n, 2)`` stack of resamples gives ``R`` values.

    Example:
        >>> x = pope_outcomes([True, True, False, None], [True, False, True, True])
        >>> pope_f1_statistic(x[None]).tolist()  # TP 1, FP 1, FN 2
        [0.4]
    """
    c = _pope_counts(np.asarray(outcomes))
    return _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])


def pope_scores(predictions: Sequence[bool | None], labels: Sequence[bool]) -> dict[str, float | int]:
    """POPE's five numbers from parsed predictions (:func:`yes_no`) and labels (True = object present).

    An unparseable prediction (``None``) is scored as the wrong answer for every metric: a false
    negative when the label is yes, a false positive when it is no, so no metric improves when a
    model fails to answer. ``yes_ratio`` is the share of explicit yes answers (``None`` is not a
    yes), a measure of yes-bias. A precision, recall or F1 with a zero denominator is 0.0, as in
    lmms-eval (whose ``yes_ratio`` counts yes *labels*, and whose precision and recall skip unparseable
    answers; LLaVA's ``eval_pope.py`` counts yes *predictions*, as here).

    Returns:
        ``accuracy``, ``precision``, ``recall``, ``f1``, ``yes_ratio`` (floats) and the counts ``tp``,
        ``fp``, ``tn``, ``fn``, ``unparsed``, ``n`` (ints).

    Raises:
        InputError: see :func:`pope_outcomes`.

    Example:
        >>> s = pope_scores([True, True, False, None, False], [True, False, False, True, False])
        >>> {k: s[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio", "unparsed")}
        {'accuracy': 0.6, 'precision': 0.5, 'recall': 0.5, 'f1': 0.5, 'yes_ratio': 0.4, 'unparsed': 1}
    """
    outcomes = pope_outcomes(predictions, labels)
    c = {key: int(value) for key, value in _pope_counts(outcomes).items()}
    n = len(outcomes)
    return {
        "accuracy": (c["tp"] + c["tn"]) / n,
        "precision": float(_ratio(c["tp"], c["tp"] + c["fp"])),
        "recall": float(_ratio(c["tp"], c["tp"] + c["fn"])),
        "f1": float(pope_f1_statistic(outcomes)),
        "yes_ratio": c["yes"] / n,
        **{key: c[key] for key in ("tp", "fp", "tn", "fn", "unparsed")},
        "n": n,
    }


# --- aggregation and the registry -------------------------------------------------------------


def mean_statistic(scores: np.ndarray) -> np.ndarray:
    """The mean over the sample axis (1) of an ``(R, n)`` array: one value per row.

    Example:
        >>> mean_statistic(np.array([[1.0, 0.0], [1.0, 1.0]])).tolist()
        [0.5, 1.0]
    """
    return np.asarray(scores, dtype=np.float64).mean(axis=1)


def _prepare_scores(per_sample: Any, name: str, binary: bool) -> np.ndarray:
    try:
        scores = np.asarray(per_sample, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"metric {name!r}: per-sample scores must be numbers; got {per_sample!r:.200}") from exc
    if scores.ndim != 1 or scores.size == 0:
        raise InputError(f"metric {name!r}: expected a non-empty 1-D sequence of scores; got shape {scores.shape}")
    if binary:
        bad = np.flatnonzero((scores != 0) & (scores != 1))
        if bad.size:
            raise InputError(
                f"metric {name!r} has binary scores: expected 0 or 1; got {float(scores[bad[0]])!r} at index {bad[0]}"
            )
    else:
        bad = np.flatnonzero(~((scores >= 0) & (scores <= 1)))
        if bad.size:
            raise InputError(
                f"metric {name!r}: expected scores in [0, 1]; got {float(scores[bad[0]])!r} at index {bad[0]}"
            )
    return scores


def _prepare_pope(per_sample: Any) -> np.ndarray:
    if isinstance(per_sample, np.ndarray) and per_sample.dtype != object:
        if per_sample.ndim != 2 or per_sample.shape[1] != 2 or per_sample.shape[0] == 0:
            raise InputError(
                f"metric 'pope_f1': expected an (n, 2) array from pope_outcomes(); got shape {per_sample.shape}"
            )
        predicted, label = per_sample[:, 0], per_sample[:, 1]
        if not (np.isin(predicted, (-1, 0, 1)).all() and np.isin(label, (0, 1)).all()):
            raise InputError(
                "metric 'pope_f1': expected predictions in {-1, 0, 1} (column 0) and labels in {0, 1} (column 1)"
            )
        return per_sample.astype(np.int8)
    pairs = _check_sequence(per_sample, "per_sample")
    if any(not isinstance(pair, (tuple, list)) or len(pair) != 2 for pair in pairs):
        raise InputError(
            "metric 'pope_f1': expected (prediction, label) pairs or the (n, 2) array from pope_outcomes()"
        )
    return pope_outcomes([p for p, _ in pairs], [label for _, label in pairs])


@dataclass(frozen=True)
class MetricSpec:
    """What the comparison needs to know about a metric.

    Attributes:
        name: the key in :data:`METRICS`.
        binary: per-sample scores are 0/1, so paired outcomes suit McNemar's exact test; otherwise
            a paired bootstrap of ``statistic`` is used.
        summary: one line for listings.
        score: the per-sample function (``pope_f1``: :func:`yes_no`, whose results go to :func:`pope_outcomes`).
        statistic: ``(R, n, ...) -> (R,)``, the aggregate of each of ``R`` stacked samples.
        prepare: turns per-sample results into the array ``statistic`` reads, checking them.
    """

    name: str
    binary: bool
    summary: str
    score: Callable[..., Any] = field(repr=False)
    statistic: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    prepare: Callable[[Any], np.ndarray] = field(repr=False)


def _score_metric(name: str, binary: bool, summary: str, score: Callable[..., Any]) -> MetricSpec:
    return MetricSpec(name, binary, summary, score, mean_statistic, lambda x: _prepare_scores(x, name, binary))


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        _score_metric("vqa_accuracy", False, "VQAv2/TextVQA accuracy against 10 human answers", vqa_accuracy),
        _score_metric("exact_match", True, "GQA: normalised answer equals the reference", exact_match),
        _score_metric("exact_match_any", True, "scenes: equals any of the references", exact_match_any),
        _score_metric("multiple_choice", True, "MMMU/AI2D: the parsed choice is the answer", multiple_choice),
        _score_metric("relaxed_accuracy", True, "ChartQA: numbers within 5 %, text exact", relaxed_accuracy),
        MetricSpec(
            "pope_f1", False, "POPE: F1 of yes answers; unparseable is wrong", yes_no, pope_f1_statistic, _prepare_pope
        ),
    )
}
"""The metrics by name. ``binary`` picks the paired test in :mod:`tokenprune.evaluation.significance`."""


def get_metric(name: str) -> MetricSpec:
    """The :class:`MetricSpec` of ``name``; an unknown name raises :class:`InputError` with suggestions.

    Example:
        >>> get_metric("exact_match").binary, get_metric("pope_f1").binary
        (True, False)
    """
    spec = METRICS.get(name) if isinstance(name, str) else None
    if spec is None:
        close = difflib.get_close_matches(str(name), list(METRICS), n=3, cutoff=0.6)
        hint = f"Did you mean {', '.join(map(repr, close))}? " if close else ""
        raise InputError(f"unknown metric {name!r}. {hint}Available: {', '.join(METRICS)}")
    return spec


def aggregate(metric: str, per_sample: Any) -> float:
    """The benchmark-level value of ``metric`` from its per-sample results.

    The mean of the per-sample scores, except ``pope_f1``, which is F1 over all samples: pass it
    :func:`pope_outcomes` or a sequence of ``(prediction, label)`` pairs.

    Raises:
        InputError: an unknown metric, no samples, or scores that are not 0/1 for a binary metric
            or outside ``[0, 1]`` for the others.

    Example:
        >>> aggregate("exact_match", [1.0, 0.0, 1.0, 1.0])
        0.75
        >>> aggregate("pope_f1", [(True, True), (True, False), (None, True), (False, False)])
        0.5
    """
    spec = get_metric(metric)
    values = spec.prepare(per_sample)
    return float(spec.statistic(values[None])[0])


# --- input checks -----------------------------------------------------------------------------


def _check_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{what} must be a str; got {type(value).__name__} {value!r:.80}")
    return value


def _check_sequence(value: Any, what: str) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise InputError(f"{what} must be a list or other sequence; got {type(value).__name__} {value!r:.80}")
    return list(value)


def _check_str_list(value: Any, what: str) -> list[str]:
    items = _check_sequence(value, what)
    if not items:
        raise InputError(f"{what} must hold at least one reference answer; got an empty {type(value).__name__}")
    for i, item in enumerate(items):
        _check_str(item, f"{what}[{i}]")
    return items


def _check_choices(choices: Any) -> list[str]:
    items = _check_sequence(choices, "choices")
    if not items:
        raise InputError("choices must hold at least one option; got none")
    if len(items) > len(_LETTERS):
        raise InputError(f"choices can have at most {len(_LETTERS)} options (letters A-Z); got {len(items)}")
    for i, item in enumerate(items):
        _check_str(item, f"choices[{i}]")
    return items
