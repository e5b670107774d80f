"""Answer grading with math-verify (LaTeX/expression extraction and symbolic equivalence).

A response's answer is read from its final part (after the last ``</think>``), so numbers in the reasoning
never count; math-verify prefers the last ``\\boxed{}`` there. References are plain answers ("13",
"\\frac{1}{2}") or a teacher response (whose final part is parsed the same way).
"""

from __future__ import annotations

import json

THINK_CLOSE = "</think>"
MAX_REFERENCE_CHARS = 2000


def answer_part(response: str) -> str:
    """The text after the last ``</think>`` (the whole response when there is none)."""
    return response.rsplit(THINK_CLOSE, 1)[-1]


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
