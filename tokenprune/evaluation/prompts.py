r"""The user text of each benchmark's question, as lmms-eval builds it (``doc_to_text``).

The model family's chat template (system prompt, role tags, image tokens) is applied elsewhere, by the
integration that runs the model; this module produces only the text of the user turn.

``{q}`` is the question, ``{opts}`` the lettered options ``"A. x\nB. y"``, ``SHORT`` is
"Answer the question using a single word or phrase." and ``MC`` is
"Answer with the option's letter from the given choices directly."; sources are under
``lmms_eval/tasks/`` in lmms-eval.

======== ======================================== ==============================================================
bench    user text                                lmms-eval source (``default`` prompt kwargs)
======== ======================================== ==============================================================
POPE     ``{q.strip()}\n{SHORT}``                 ``pope/pope.yaml`` (post_prompt), ``pope/utils.py``
GQA      ``{q}\n{SHORT}``                         ``gqa/gqa.yaml`` (post_prompt), ``gqa/utils.py``
TextVQA  ``{q.capitalize()}\n{SHORT}`` [1]_       ``textvqa/_default_template_textvqa_yaml`` (``ocr: false``),
                                                  ``textvqa/utils.py``
ChartQA  ``{q}\n{SHORT}``                         ``chartqa/chartqa.yaml`` (post_prompt), ``chartqa/utils.py``
AI2D     ``{q}\n{opts}\n{MC}``                    ``ai2d/ai2d.yaml`` (``prompt_format: mcq``), ``ai2d/utils.py``
MMMU     choice: ``{q}\n{opts}\n\n{MC}``          ``mmmu/mmmu_val.yaml`` (multiple_choice_prompt, open_ended_prompt),
         open: ``{q}\n\n{SHORT}``                 ``mmmu/utils.py`` (``construct_prompt``)
scenes   ``{q}`` as generated [2]_                none: tokenprune's generated benchmark (:mod:`tokenprune.scenes`)
======== ======================================== ==============================================================

.. [1] ``str.capitalize`` also lower-cases the rest of the question, as lmms-eval does.
.. [2] the generator writes multiple-choice questions with their options and instruction; the shipped model
   was trained on these texts as they are.

Families. lmms-eval picks prompt kwargs by model name, with ``default`` as the fall-back; the only
non-default entries in these yamls are for Qwen-VL (v1: ``qwen_vl``, e.g. ``" Answer:"``) and PLM, not for
LLaVA-1.5 or Qwen2.5-VL, so ``family="llava"`` and ``family="qwen2_5_vl"`` give the same text today. The
argument exists so that a family-specific prompt can be added in one place (:data:`FAMILIES`).

Images. lmms-eval's LLaVA wrapper prepends one ``<image>`` token per image, then a newline, to this text; its
Qwen2.5-VL wrapper puts the images before the text in the user message. Whoever applies the chat template
should do the same; the text never contains an image token, except MMMU's own placeholders: MMMU questions and
options refer to their images as ``<image 1>`` ... ``<image 7>``. lmms-eval keeps those placeholders literally
in the text (``interleaved_format`` is off by default), and passes the images they name, sorted by number and
without repeats, before the text; so does :mod:`tokenprune.evaluation.datasets` (``Sample.images`` is in that
order), and the text keeps ``<image N>`` as written.

>>> mc_prompt("Which is red?", ["apple", "sky"], "\n" + MC_POST_PROMPT)
"Which is red?\nA. apple\nB. sky\nAnswer with the option's letter from the given choices directly."
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tokenprune.errors import InputError

if TYPE_CHECKING:
    from tokenprune.evaluation.datasets import Sample

__all__ = [
    "FAMILIES",
    "MC_POST_PROMPT",
    "SHORT_ANSWER_PROMPT",
    "build_prompt",
    "check_family",
    "format_options",
    "mc_prompt",
    "mmmu_prompt",
    "short_answer_prompt",
]

#: lmms-eval's ``post_prompt`` for short answers (POPE, GQA, TextVQA, ChartQA; MMMU open questions).
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
#: lmms-eval's prompt for multiple-choice questions (AI2D ``post_prompt``, MMMU ``multiple_choice_prompt``).
MC_POST_PROMPT = "Answer with the option's letter from the given choices directly."
#: Model families :func:`build_prompt` accepts.
FAMILIES = ("llava", "qwen2_5_vl")


def check_family(family: str) -> str:
    """``family`` if it is one of :data:`FAMILIES`, else :class:`InputError` naming them."""
    if family not in FAMILIES:
        raise InputError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return family


def format_options(choices: Sequence[str]) -> str:
    """``"A. first\\nB. second"``: the options, one per line, lettered from A (at most 26).

    >>> format_options(["cat", "dog"])
    'A. cat\\nB. dog'
    """
    if not 0 < len(choices) <= 26:
        raise InputError(f"a multiple-choice question needs 1 to 26 options; got {len(choices)}")
    return "\n".join(f"{letter}. {choice}" for letter, choice in zip(string.ascii_uppercase, choices, strict=False))


def short_answer_prompt(question: str) -> str:
    """``question``, a newline, and :data:`SHORT_ANSWER_PROMPT` (GQA, ChartQA; POPE/TextVQA transform first)."""
    return f"{question}\n{SHORT_ANSWER_PROMPT}"


def mc_prompt(question: str, choices: Sequence[str], post: str) -> str:
    """``question``, a newline, the lettered options, then ``post`` (which carries its own leading newlines)."""
    return f"{question}\n{format_options(choices)}{post}"


def mmmu_prompt(question: str, choices: Sequence[str]) -> str:
    """MMMU: lettered options and a blank line before the instruction; an open question has no options.

    >>> mmmu_prompt("What is <image 1>?", [])
    'What is <image 1>?\\n\\nAnswer the question using a single word or phrase.'
    """
    if choices:
        return mc_prompt(question, choices, "\n\n" + MC_POST_PROMPT)
    return f"{question}\n\n{SHORT_ANSWER_PROMPT}"


def build_prompt(sample: Sample, family: str = "llava") -> str:
    """The user text lmms-eval would give ``family`` for ``sample`` (see the table in the module docstring).

    Args:
        sample: a :class:`~tokenprune.evaluation.datasets.Sample`; only ``benchmark``, ``question`` and
            ``choices`` are read (MMMU: no choices means an open question).
        family: one of :data:`FAMILIES`.

    Raises:
        InputError: an unknown family or benchmark, or a multiple-choice benchmark without choices.
    """
    check_family(family)
    question, choices = sample.question, sample.choices
    if sample.benchmark == "pope":
        return short_answer_prompt(question.strip())
    if sample.benchmark in ("gqa", "chartqa"):
        return short_answer_prompt(question)
    if sample.benchmark == "textvqa":
        return short_answer_prompt(question.capitalize())
    if sample.benchmark == "ai2d":
        return mc_prompt(question, choices, "\n" + MC_POST_PROMPT)
    if sample.benchmark == "mmmu":
        return mmmu_prompt(question, choices)
    if sample.benchmark == "scenes":
        return question
    raise InputError(
        f"no prompt convention for benchmark {sample.benchmark!r}; expected one of ai2d, chartqa, gqa, mmmu, pope, "
        "scenes, textvqa"
    )
