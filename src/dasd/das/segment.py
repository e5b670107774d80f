"""Deterministic sentence segmentation of a response's content text (spec §5.1).

The content is everything outside the think tags. Inside each content region:

1. every non-blank line is a unit (a ``\\n`` is a boundary) except inside math: a display block ``\\[ … \\]``
   or ``$$ … $$`` spanning several lines stays one unit;
2. a unit is split after ``.``, ``!`` or ``?`` (plus closing quotes/brackets) when whitespace follows, but
   never inside math (``$…$``, ``$$…$$``, ``\\(…\\)``, ``\\[…\\]``) nor inside a fenced code block, where each
   line (fences included) is one unit;
3. pieces are stripped; a piece shorter than ``min_chars`` joins the previous span of its region (the next
   one if it comes first; it stays alone if it is alone).

Spans are ``[start, end)`` character offsets into the full text. They are sorted and disjoint, have no
leading or trailing whitespace, never touch a think tag, and every non-whitespace character of the content
lies in exactly one span. Inline math and ``\\(…\\)`` close on the same line; an opener without a closer is
literal text. Bump ``SEGMENTATION_VERSION`` whenever the output for some text changes.
"""

from __future__ import annotations

import re

import numpy as np

from dasd.text.think import THINK_TAGS

SEGMENTATION_VERSION = 1

_TAG = re.compile("|".join(map(re.escape, THINK_TAGS)))
_FENCE = re.compile(r"^[^\S\n]*```", re.MULTILINE)
_EVENT = re.compile(r"(?P<fence>^[^\S\n]*```)|(?<!\\)\$\$|(?<!\\)\\\[|(?<!\\)\\\(|(?<!\\)\$", re.MULTILINE)
_CLOSERS = {  # opener -> (closer, may span lines)
    "$$": (re.compile(r"(?<!\\)\$\$"), True),
    "\\[": (re.compile(r"\\\]"), True),
    "\\(": (re.compile(r"\\\)"), False),
    "$": (re.compile(r"(?<!\\)\$"), False),
}
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]}]*(?=\s)")
_WHITESPACE = np.array([c for c in range(0x3001) if chr(c).isspace()], dtype=np.uint32)  # U+3000 is the last


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def whitespace_mask(text: str) -> np.ndarray:
    """Boolean array (len(text),): True where ``text[i].isspace()``."""
    return np.isin(_codepoints(text), _WHITESPACE)


def content_regions(text: str) -> list[tuple[int, int]]:
    """Maximal non-empty ``[start, end)`` ranges of ``text`` outside every occurrence of a think tag."""
    regions, pos = [], 0
    for m in _TAG.finditer(text):
        if m.start() > pos:
            regions.append((pos, m.start()))
        pos = m.end()
    if len(text) > pos:
        regions.append((pos, len(text)))
    return regions


def _eol(text: str, pos: int, hi: int) -> int:
    end = text.find("\n", pos, hi)
    return hi if end < 0 else end


def _protected(text: str, lo: int, hi: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Fenced code ranges and math ranges in region ``[lo, hi)``, each sorted and disjoint."""
    code, math = [], []
    failed: dict[tuple[str, int], int] = {}  # (opener, search limit) -> earliest start at which no closer exists
    pos = lo
    while (m := _EVENT.search(text, pos, hi)) is not None:
        if m.group("fence") is not None:  # code runs to the end of the closing fence's line
            close = _FENCE.search(text, _eol(text, m.end(), hi), hi)
            end = hi if close is None else _eol(text, close.end(), hi)
            code.append((m.start(), end))
            pos = end
            continue
        opener = m.group()
        closer, multiline = _CLOSERS[opener]
        limit = hi if multiline else _eol(text, m.end(), hi)
        found = None
        if failed.get((opener, limit), limit + 1) > m.end():
            found = closer.search(text, m.end(), limit)
            if found is None:
                failed[(opener, limit)] = m.end()
        if found is None:  # no closer: the opener is literal text
            pos = m.end()
            continue
        math.append((m.start(), found.end()))
        pos = found.end()
    return code, math


def _mask(n: int, ranges: list[tuple[int, int]]) -> np.ndarray:
    """Boolean array (n,): True inside any of the disjoint ``[start, end)`` ranges."""
    delta = np.zeros(n + 1, dtype=np.int64)
    if ranges:
        r = np.asarray(ranges, dtype=np.int64)
        np.add.at(delta, r[:, 0], 1)
        np.add.at(delta, r[:, 1], -1)
    return np.cumsum(delta[:n]) > 0


def _merge_short(spans: list[tuple[int, int, int]], min_chars: int) -> list[tuple[int, int]]:
    """Join spans shorter than ``min_chars`` to their neighbour in the same region (previous, else next)."""
    out: list[list[int]] = []
    regions: list[int] = []
    carry: tuple[int, int, int] | None = None  # a short first span of its region, waiting for the next span
    for s, e, r in spans:
        if carry is not None:
            if carry[2] == r:
                s = carry[0]
            else:  # it was alone in its region
                out.append([carry[0], carry[1]])
                regions.append(carry[2])
            carry = None
        if e - s >= min_chars:
            out.append([s, e])
            regions.append(r)
        elif regions and regions[-1] == r:
            out[-1][1] = e
        else:
            carry = (s, e, r)
    if carry is not None:
        out.append([carry[0], carry[1]])
    return [(s, e) for s, e in out]


def segment(text: str, min_chars: int = 3) -> np.ndarray:
    """Sentence spans of ``text``'s content: int64 array (n_sentences, 2) of ``[start, end)`` offsets."""
    regions = content_regions(text)
    if not regions:
        return np.zeros((0, 2), dtype=np.int64)
    n = len(text)
    code, math, ends = [], [], []
    for lo, hi in regions:
        c, m = _protected(text, lo, hi)
        code += c
        math += m
        ends += [(e.start(), e.end()) for e in _SENTENCE_END.finditer(text, lo, hi)]
    in_math = _mask(n, math)
    marks = np.asarray(ends, dtype=np.int64).reshape(-1, 2)  # (position of the mark, cut after it)
    ends_ = marks[~(_mask(n, code) | in_math)[marks[:, 0]], 1]
    codes = _codepoints(text)
    newlines = np.flatnonzero((codes == 10) & ~in_math)
    bounds = np.asarray(regions, dtype=np.int64)
    cuts = np.sort(np.concatenate([bounds.ravel(), newlines, ends_]))
    cuts = cuts[np.append(True, cuts[1:] != cuts[:-1])]
    starts, stops = cuts[:-1], cuts[1:]

    space = np.isin(codes, _WHITESPACE)
    idx = np.arange(n, dtype=np.int64)
    next_solid = np.append(np.minimum.accumulate(np.where(space, n, idx)[::-1])[::-1], n)
    solid_end = np.concatenate([[0], np.maximum.accumulate(np.where(space, 0, idx + 1))])
    region = np.searchsorted(bounds[:, 0], starts, side="right") - 1
    in_region = (region >= 0) & (starts < bounds[np.maximum(region, 0), 1])
    a, b = next_solid[starts], solid_end[stops]
    keep = in_region & (a < stops)
    pieces = list(zip(a[keep].tolist(), b[keep].tolist(), region[keep].tolist(), strict=True))
    merged = _merge_short(pieces, min_chars)
    return np.asarray(merged, dtype=np.int64).reshape(-1, 2)


def sentence_texts(text: str, spans: np.ndarray) -> list[str]:
    """The text of each span."""
    return [text[a:b] for a, b in np.asarray(spans).tolist()]
