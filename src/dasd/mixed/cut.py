"""Where a truncated student rollout is cut (spec §7.4).

A rollout of ``L`` tokens (``L >= 2``) keeps ``token_ids[:c]`` with ``c ~ Uniform{⌈L/2⌉, …, L−1}``. The
cut then moves back until the prefix ends on a complete character (a byte-level BPE token may carry only
part of a multi-byte character) and, optionally, further back to the nearest sentence or line boundary
(§5.1 segmentation) so the teacher resumes cleanly, as long as the cut stays beyond half of the rollout.

Character positions come from ``byte_level_token_starts``: the prefix ``token_ids[:c]`` ends where the next
token with text starts. A boundary is a sentence span's start, its end, or any position in the whitespace
run right after its end (whitespace is often a token of its own, or the start of the next token, " The").
``lead`` is response text the generation prompt already wrote (``"<think>\\n"`` for templates that open
the think block); it is part of ``prefix_text`` but never counted as a cut.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from dasd.das.align import byte_level_token_starts
from dasd.das.segment import segment, whitespace_mask
from dasd.text.harmony import token_items


@dataclass(frozen=True)
class Cut:
    """A cut rollout: ``prefix_text`` = ``lead`` + the text of ``token_ids[:index]``."""

    length: int  # L, tokens of the rollout
    raw: int  # the uniform draw
    index: int  # the final cut, 1 <= index <= raw
    snapped: bool  # the prefix ends on a sentence/line boundary found by the snap
    prefix_text: str  # a prefix of full_text
    full_text: str  # lead + the text of all token_ids


def cut_bounds(length: int) -> tuple[int, int]:
    """``(⌈L/2⌉, L−1)``: the inclusive range of the uniform cut draw."""
    if length < 2:
        raise ValueError(f"a rollout needs at least 2 tokens to be cut, got {length}")
    return math.ceil(length / 2), length - 1


def draw_cut(length: int, rng: random.Random) -> int:
    """A cut ``c ~ Uniform{⌈L/2⌉, …, L−1}`` from ``rng``."""
    return rng.randint(*cut_bounds(length))


def _next_text_token(has_text: np.ndarray) -> np.ndarray:
    """int64 (L + 1,): for each cut c, the first token k >= c that has text (L if none)."""
    n = len(has_text)
    idx = np.where(has_text, np.arange(n, dtype=np.int64), n)
    return np.append(np.minimum.accumulate(idx[::-1])[::-1], n)


def cut_positions(token_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase
                  ) -> tuple[str, np.ndarray, np.ndarray]:
    """The rollout's text, ``char_end`` (int64, L + 1: where the text of ``token_ids[:c]`` ends) and
    ``clean`` (bool, L + 1: the cut before token c splits no character)."""
    ids = list(token_ids)
    text, starts = byte_level_token_starts(ids, tokenizer)
    items = token_items(ids, tokenizer)
    first = np.array([data[0] if control is None and data else -1 for control, data, _ in items],
                     dtype=np.int64).reshape(-1)
    has_text = starts >= 0
    nxt = _next_text_token(has_text)
    char_end = np.append(starts, len(text))[nxt]
    begins = np.append((first & 0xC0) != 0x80, True)  # the first byte is no continuation byte
    return text, char_end, begins[nxt]


def boundary_mask(text: str, spans: np.ndarray) -> np.ndarray:
    """bool (len(text) + 1,): True at a sentence start, a sentence end and the whitespace run after an end."""
    n = len(text)
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    space = whitespace_mask(text)
    idx = np.arange(n, dtype=np.int64)
    next_solid = np.append(np.minimum.accumulate(np.where(space, n, idx)[::-1])[::-1], n)
    delta = np.zeros(n + 2, dtype=np.int64)
    np.add.at(delta, spans[:, 1], 1)
    np.add.at(delta, next_solid[spans[:, 1]] + 1, -1)
    mask = np.cumsum(delta[: n + 1]) > 0
    mask[spans[:, 0]] = True
    return mask


def choose_cut(token_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase, rng: random.Random, *,
               snap_to_sentence: bool = True, lead: str = "", min_chars: int = 3) -> Cut:
    """Draw a cut of a rollout, move it back to a clean character boundary and, with ``snap_to_sentence``,
    to the nearest preceding sentence/line boundary that is still at or beyond ``⌈L/2⌉`` tokens (the cut
    stays unsnapped where there is none, e.g. a long run of text with no sentence end). ValueError if ``L < 2`` or no
    clean cut keeps at least one token."""
    length = len(token_ids)
    raw = draw_cut(length, rng)
    text, char_end, clean = cut_positions(token_ids, tokenizer)
    full = lead + text
    ok = clean.copy()
    ok[0] = False
    ok[raw + 1:] = False
    candidates = np.flatnonzero(ok)
    if not len(candidates):
        raise ValueError(f"no cut in [1, {raw}] of a {length}-token rollout ends on a complete character")
    index, snapped = int(candidates[-1]), False
    if snap_to_sentence:
        at = boundary_mask(full, segment(full, min_chars))[len(lead) + char_end[candidates]]
        at &= char_end[candidates] > 0  # keep at least one generated character
        at &= candidates >= cut_bounds(length)[0]  # the cut stays beyond half of the rollout (spec §7.4)
        if at.any():
            index, snapped = int(candidates[at][-1]), True
    prefix = full[: len(lead) + int(char_end[index])]
    assert full.startswith(prefix)
    return Cut(length=length, raw=raw, index=index, snapped=snapped, prefix_text=prefix, full_text=full)
