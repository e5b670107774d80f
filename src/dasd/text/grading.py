"""Answer grading with math-verify (LaTeX/expression extraction and symbolic equivalence).

A response's answer is read from its final part (after the last ``</think>``), so numbers in the reasoning
never count; math-verify prefers the last ``\\boxed{}`` there. References are plain answers ("13",
"\\frac{1}{2}") or a teacher response (whose final part is parsed the same way).

Multiple choice (``choice_letter``) and exact answers (``exact_answer``) are read from the final part too;
their extraction is hand-written (regular expressions and a brace matcher), not math-verify. ``grade``
dispatches on an evaluation item's grader name ("math", "choice", "exact").
"""

from __future__ import annotations

import json
import re

from dasd.text.think import THINK_CLOSE_TAG

MAX_REFERENCE_CHARS = 2000


def answer_part(response: str) -> str:
    """The text after the last ``</think>`` (the whole response when there is none)."""
    return response.rsplit(THINK_CLOSE_TAG, 1)[-1]


def reference_answer(output: str, meta: str | dict | None = None) -> str:
    """The reference of a teacher record: ``meta.answer`` when the record has one, else the final part of its
    response (at most ``MAX_REFERENCE_CHARS`` characters from its end)."""
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta else {}
        except json.JSONDecodeError:
            meta = {}
    answer = meta.get("answer") if isinstance(meta, dict) else None
    if isinstance(answer, str | int | float) and str(answer).strip():
        return str(answer)
    return answer_part(output).strip()[-MAX_REFERENCE_CHARS:]


def math_equal(response: str, reference: str) -> bool:
    """True when the final answer of ``response`` is mathematically equal to ``reference`` (math-verify).
    A response or reference without a parseable answer is not correct."""
    from math_verify import parse, verify  # imported on first use (about 0.3 s)

    gold = parse(answer_part(reference))
    pred = parse(answer_part(response))
    return bool(gold) and bool(pred) and verify(gold, pred)


GRADERS = ("math", "choice", "exact")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")


def boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, in order of their start,
    with balanced braces; a box that is never closed is ignored."""
    contents = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            contents.append(text[m.end():i - 1])
    return contents


def _letter_class(letters: str) -> str:
    return "[" + "".join(re.escape(c) for c in letters) + "]"


def choice_letter(response: str, letters: str = "ABCD") -> str | None:
    """The chosen letter from the final part (after the last </think>): the last \\boxed{X}, else the last
    'Answer: X' / 'answer is X' style mention, else the last standalone letter among `letters` in the final part; None if none.

    Hand-written extraction (regular expressions), not math-verify. A box counts when its content, with
    ``\\text{}``-style wrappers, ``$``/``*`` and parentheses removed, is a letter alone or a letter followed
    by ``)``, ``.``, ``:`` or a space ("A", "(B)", "C) 4 m/s"). Letters are case-sensitive; a standalone
    letter is one with no letter, digit, ``_`` or backslash next to it (so an article "A" in a sentence can
    count in the last fallback).
    """
    final = answer_part(response)
    cls = _letter_class(letters)
    for content in reversed(boxed_contents(final)):
        text = _WRAPPER.sub(r"\1", content).strip().strip("$*").strip()
        m = re.fullmatch(rf"[(\[]?\s*({cls})\s*[)\]]?(?:[\s.:)].*)?", text, re.S)
        if m:
            return m.group(1)
    mentions = re.findall(
        rf"(?i:answer)(?:\s+(?i:is))?\s*[:\uff1a]?[\s*_$]*(?:(?i:option|choice)\s*)?[(\[]?\s*({cls})(?![A-Za-z0-9_])",
        final)
    if mentions:
        return mentions[-1]
    standalone = re.findall(rf"(?<![A-Za-z0-9_\\])({cls})(?![A-Za-z0-9_])", final)
    return standalone[-1] if standalone else None


def exact_answer(response: str) -> str | None:
    """The content of the last non-empty ``\\boxed{...}`` of the final part (balanced braces), else its last
    non-empty line, stripped; None when the final part is blank."""
    final = answer_part(response)
    boxes = [b.strip() for b in boxed_contents(final) if b.strip()]
    if boxes:
        return boxes[-1]
    lines = [line.strip() for line in final.splitlines() if line.strip()]
    return lines[-1] if lines else None


def _normalize(text: str) -> str:
    return " ".join(text.split())


def grade(grader: str, response: str, reference: str) -> bool:
    """Whether ``response`` is correct: "math" -> ``math_equal(response, reference)``; "choice" ->
    ``choice_letter(response) == reference`` (the letter); "exact" -> the ``exact_answer`` of the response
    equals ``reference`` after stripping and collapsing whitespace (case-sensitive)."""
    if grader == "math":
        return math_equal(response, reference)
    if grader == "choice":
        return choice_letter(response) == reference.strip()
    if grader == "exact":
        answer = exact_answer(response)
        return answer is not None and _normalize(answer) == _normalize(reference)
    raise ValueError(f"unknown grader {grader!r}; expected one of {GRADERS}")
