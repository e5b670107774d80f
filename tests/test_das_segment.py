"""Sentence segmentation (spec §5.1): spans tile the content text, never touch think tags, follow the rules."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from dasd.das.segment import THINK_TAGS, content_regions, segment, sentence_texts, whitespace_mask

TAG = re.compile("<think>|</think>")


def assert_tiles(text: str, spans: np.ndarray) -> None:
    """Spans are sorted, disjoint, stripped, tag-free, and cover every non-whitespace content character once."""
    n = len(text)
    assert spans.dtype == np.int64 and spans.ndim == 2 and spans.shape[1] == 2
    starts, ends = spans[:, 0], spans[:, 1]
    assert np.all(starts < ends), "empty span"
    assert np.all(ends[:-1] <= starts[1:]), "spans overlap or are out of order"
    assert np.all(starts >= 0) and np.all(ends <= n)
    for a, b in spans.tolist():
        assert not text[a].isspace() and not text[b - 1].isspace(), f"unstripped span {text[a:b]!r}"
    tag = np.zeros(n, dtype=bool)
    for m in TAG.finditer(text):
        tag[m.start():m.end()] = True
    delta = np.zeros(n + 1, dtype=np.int64)
    np.add.at(delta, starts, 1)
    np.add.at(delta, ends, -1)
    cover = np.cumsum(delta[:n])
    solid = np.array([not c.isspace() for c in text], dtype=bool)
    assert not np.any(cover[tag]), "a span covers part of a think tag"
    assert np.all(cover[solid & ~tag] == 1), "a content character is in no span"


TEXTS = [
    "",
    "   \n\t \n",
    "<think></think>",
    "<think>\n\n</think>\n\n",
    "<think>\nabc\n</think>\n\nxyz",
    "No tags at all. Just two sentences!",
    "<think>\nLet x = 3.5. Then 2x = 7.0, i.e. seven. Check: e.g. x=3.5 works?\nYes!\n</think>\n\n**Answer:** 7.",
    "We have $a. b$ and $$c. d$$ and \\(e. f\\) and \\[g. h\\]. Next sentence here.",
    "Display:\n\\[\n  x = 1. Then\n\n  y = 2.\n\\]\nAfter it. More.\n$$\na. b\n$$ tail. end",
    "```python\nx = 1. y = 2\n\nif x: print('a. b')\n```\nOutside. Code done.\n  ```\nunclosed. fence\n",
    "Unicode: Größe ≠ 5. Ça va? Oui! 数学。 Ελληνικά. ×÷é.\u00a0Tab\tsep.\u3000Wide space.",
    'He said "Stop." Then (he left.) Quote’s end.” Fine.',
    "Stray $ dollar. And \\( open paren. And \\[ open bracket.\nAnd $$ open display. Fine.",
    "<think>Hi.<think>Nested.</think></think>Out. A.\n\n\n",
    "a.\nb.\nc.\nd. e. f. g.",
    "Escaped \\$5. Price \\$6. End.",
    "\r\nWindows line.\r\nSecond.\r\n",
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("min_chars", [1, 3, 10])
def test_spans_tile_the_content(text, min_chars):
    assert_tiles(text, segment(text, min_chars=min_chars))


def test_content_regions_exclude_tags():
    text = "<think>\nabc\n</think>\n\nxyz"
    assert content_regions(text) == [(7, 12), (20, 25)]
    assert content_regions("plain") == [(0, 5)]
    assert content_regions("<think></think>") == []
    assert content_regions("") == []
    assert all(text[a:b].find(t) < 0 for a, b in content_regions(text) for t in THINK_TAGS)


@pytest.mark.parametrize(("text", "expected"), [
    ("<think>\nFirst step. Second step!\nThird? Yes.\n</think>\n\nThe answer is 4.",
     ["First step.", "Second step!", "Third?", "Yes.", "The answer is 4."]),
    ("Pi is 3.14 roughly. Use e.g. this one.", ["Pi is 3.14 roughly.", "Use e.g.", "this one."]),
    ("We have $a. b$ and \\(c. d\\) too. Next one.", ["We have $a. b$ and \\(c. d\\) too.", "Next one."]),
    ("Thus we get\n\\[\nx = 1. Then\n\n y = 2.\n\\]\nDone here.",
     ["Thus we get", "\\[\nx = 1. Then\n\n y = 2.\n\\]", "Done here."]),
    ("Sum:\n$$\na = 1.\n\nb = 2.\n$$ so done. Ok then.", ["Sum:", "$$\na = 1.\n\nb = 2.\n$$ so done.", "Ok then."]),
    ("Code:\n```python\nx = 1. y = 2\n\nprint(x)\n```\nAfter. Done.",
     ["Code:", "```python", "x = 1. y = 2", "print(x)", "```", "After.", "Done."]),
    ('He said "Stop." Then (he left.) And so.', ['He said "Stop."', "Then (he left.)", "And so."]),
    ("Größe ≠ 5. Ça va? Oui!", ["Größe ≠ 5.", "Ça va?", "Oui!"]),
    ("It costs $5. Really cheap.", ["It costs $5.", "Really cheap."]),  # a lone $ is literal
    ("Wait...   what?! Fine.", ["Wait...", "what?!", "Fine."]),
])
def test_hand_written_cases(text, expected):
    spans = segment(text)
    assert sentence_texts(text, spans) == expected
    assert_tiles(text, spans)


def test_exact_offsets():
    text = "<think>\nabc. de fg\n</think>\n\n  xyz."
    assert segment(text).tolist() == [[8, 12], [13, 18], [31, 35]]


def test_short_spans_merge_into_neighbours_within_a_region():
    # "A." is first in its region: it joins the next span; "x" joins the previous one.
    text = "A. B. Some sentence here. x"
    assert sentence_texts(text, segment(text)) == ["A. B.", "Some sentence here. x"]
    # a short span alone in its region stays, and merging never crosses a think tag
    text = "<think>\nok\n</think>\n\nFine answer."
    assert sentence_texts(text, segment(text)) == ["ok", "Fine answer."]
    text = "Hi.<think>Yo.</think>Ok."
    assert sentence_texts(text, segment(text)) == ["Hi.", "Yo.", "Ok."]
    assert sentence_texts(text, segment(text, min_chars=10)) == ["Hi.", "Yo.", "Ok."]
    # with a larger threshold more spans merge; min_chars=1 keeps every piece
    text = "One. Two. Three. Four."
    assert sentence_texts(text, segment(text, min_chars=1)) == ["One.", "Two.", "Three.", "Four."]
    assert sentence_texts(text, segment(text, min_chars=5)) == ["One. Two.", "Three.", "Four."]
    assert sentence_texts(text, segment(text, min_chars=100)) == [text]


def _random_text(rng: random.Random) -> str:
    pieces = ["word", "Word", "x", "3.5", "e.g.", ".", "!", "?", "?!", '"', "’", ")", "]", " ", " ", "  ", "\t",
              "\n", "\n", "\n\n", "$", "$$", "\\(", "\\)", "\\[", "\\]", "\\$", "```", "\n```\n", "<think>",
              "</think>", "<think>\n", "\n</think>\n\n", "≠", "é", "数学", "\u00a0", "\u3000", "\r\n", "<", ">"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 80)))


def test_random_texts_tile():
    rng = random.Random(1234)
    for _ in range(400):
        text = _random_text(rng)
        for min_chars in (1, 3, 8):
            spans = segment(text, min_chars=min_chars)
            assert_tiles(text, spans)
            assert np.array_equal(spans, segment(text, min_chars=min_chars))  # deterministic


def test_merging_only_joins_pieces():
    """Every span with min_chars=3 is a union of consecutive min_chars=1 spans."""
    rng = random.Random(7)
    for _ in range(200):
        text = _random_text(rng)
        fine, coarse = segment(text, min_chars=1), segment(text, min_chars=3)
        assert set(coarse[:, 0]) <= set(fine[:, 0]) and set(coarse[:, 1]) <= set(fine[:, 1])


def test_whitespace_mask_matches_isspace():
    text = "a b\tc\nd\u00a0e\u2028f\u3000g\u200bh\x1ci数"
    assert whitespace_mask(text).tolist() == [c.isspace() for c in text]


def test_long_text_segments():
    """A 250K-character response (with pathological unclosed openers) segments without blow-up."""
    rng = random.Random(0)
    block = ("Let us compute $x_1 = 3.5$ and check. Then \\[\n a = b. c\n\\] holds!\n"
             "```\ncode. line\n```\nWait \\( unclosed. And $$ unclosed display. Fine?\n\n")
    body = "".join(block if rng.random() < 0.5 else "Step. " * rng.randint(1, 20) + "\n" for _ in range(4000))
    text = ("<think>\n" + body + "\n</think>\n\n" + body)[:250_000]
    spans = segment(text)
    assert len(spans) > 10_000
    assert_tiles(text, spans)
    assert_tiles("\\[ a. " * 20_000, segment("\\[ a. " * 20_000))
    assert_tiles("$ a. \n" * 20_000, segment("$ a. \n" * 20_000))
