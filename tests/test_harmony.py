"""Harmony (gpt-oss) completions → ``<think>`` output: structure flags, and teacher-token spans in the output."""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from dasd.models.student import asset_path, load_tokenizer
from dasd.text.harmony import HARMONY_TOKENS, parse_harmony, parse_harmony_text
from dasd.text.think import THINK_PREFIX as THINK_OPEN
from dasd.text.think import THINK_SEPARATOR as THINK_CLOSE

START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL = HARMONY_TOKENS


def _harmony_tokenizer(extra_vocab: dict[str, int] | None = None):
    """The tiny byte-level BPE tokenizer with the seven harmony control tokens added as special tokens."""
    if extra_vocab:
        spec = json.loads(open(asset_path("tiny_qwen3") + "/tokenizer.json", encoding="utf-8").read())
        spec["model"]["vocab"].update(extra_vocab)
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))
    else:
        tok = load_tokenizer(asset_path("tiny_qwen3"))
    tok.add_tokens(list(HARMONY_TOKENS), special_tokens=True)
    return tok


@pytest.fixture(scope="module")
def tok():
    return _harmony_tokenizer()


def enc(tok, *parts: str) -> list[int]:
    """Token ids of a completion: control-token strings become their ids, other text is BPE-encoded."""
    ids: list[int] = []
    for p in parts:
        ids += [tok.convert_tokens_to_ids(p)] if p in HARMONY_TOKENS else tok.encode(p, add_special_tokens=False)
    return ids


def analysis_msg(text: str) -> tuple[str, ...]:
    return (CHANNEL, "analysis", MESSAGE, text, END)


def final_msg(text: str) -> tuple[str, ...]:
    return (START, "assistant", CHANNEL, "final", MESSAGE, text, RETURN)


def _byte_level(s: str) -> bytes:
    """Independent inverse of GPT-2's byte→unicode alphabet (printable bytes are themselves, others 256+n)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in keep]
    inverse = {chr(b): b for b in keep} | {chr(256 + n): b for n, b in enumerate(others)}
    return bytes(inverse[c] for c in s)


def scaffold_positions(resp) -> set[int]:
    """Output positions that no token produced: the inserted think tags."""
    pos = set(range(len(THINK_OPEN)))
    if resp.has_final:
        close = len(THINK_OPEN) + len(resp.analysis)
        pos |= set(range(close, close + len(THINK_CLOSE)))
    return pos


def check_spans(resp, ids, tok, extra_uncovered: set[int] = frozenset()):
    """Spans are in range, increasing and disjoint; with the scaffolding they cover ``output`` exactly once."""
    assert len(resp.token_spans) == len(ids)
    spans = [s for s in resp.token_spans if s is not None]
    prev = 0
    for start, end in spans:
        assert prev <= start <= end <= len(resp.output)
        prev = end
    covered = [i for start, end in spans for i in range(start, end)]
    assert len(covered) == len(set(covered)), "a character owned by two tokens"
    uncovered = set(range(len(resp.output))) - set(covered)
    assert uncovered == scaffold_positions(resp) | set(extra_uncovered)
    for start, end in spans:  # an empty span (continuation bytes only) sits right after a character it completes
        assert start < end or start - 1 in covered
    control = {tok.convert_tokens_to_ids(t) for t in HARMONY_TOKENS}
    assert all(s is None for i, s in zip(ids, resp.token_spans, strict=True) if i in control)


def check_texts(resp, ids, tok):
    """A token with a span shows its own text there, minus whitespace that strip() removed at an edge."""
    for i, span in zip(ids, resp.token_spans, strict=True):
        text = tok.decode([i])
        if span is None:
            continue
        piece = resp.output[span[0]:span[1]]
        at = text.find(piece)
        assert piece == text or (at >= 0 and not text[:at].strip() and not text[at + len(piece):].strip()), (text, piece)


def check_char_ownership(resp, ids, tok):
    """Multi-byte text: each spanned token holds the first byte of every character in its span, and of no other."""
    for i, span in zip(ids, resp.token_spans, strict=True):
        if span is None:
            continue
        own = _byte_level(tok.convert_ids_to_tokens(i))
        starts = own.lstrip(bytes(range(0x80, 0xC0)))  # bytes from the first character start on
        got = resp.output[span[0]:span[1]].encode()
        assert got.startswith(starts) and all(0x80 <= b < 0xC0 for b in got[len(starts):]), (own, got)


def test_analysis_and_final(tok):
    ids = enc(tok, *analysis_msg("  We add 2 and 3.\n"), *final_msg(" The answer is 5. "))
    resp = parse_harmony(ids, tok)
    assert resp.output == "<think>\nWe add 2 and 3.\n</think>\n\nThe answer is 5."
    assert (resp.analysis, resp.final) == ("We add 2 and 3.", "The answer is 5.")
    assert resp.has_analysis and resp.has_final and not resp.has_tool_call
    assert resp.channels == ["analysis", "final"]
    check_spans(resp, ids, tok)
    check_texts(resp, ids, tok)


def test_prefilled_analysis_channel(tok):
    """The prompt ended with <|channel|>analysis<|message|>: the completion starts with the reasoning."""
    ids = enc(tok, "Reasoning here.", END, *final_msg("Done."))
    resp = parse_harmony(ids, tok)
    assert resp.output == "<think>\nReasoning here.\n</think>\n\nDone."
    assert resp.channels == ["analysis", "final"] and resp.has_final
    check_spans(resp, ids, tok)
    check_texts(resp, ids, tok)


def test_strip_clips_straddling_tokens(tok):
    """Whitespace-only tokens at the edges get None; a token holding both whitespace and text keeps its text."""
    ids = enc(tok, *analysis_msg(" \n world is round \n"), *final_msg("\n\n ok\n"))
    resp = parse_harmony(ids, tok)
    assert resp.analysis == "world is round" and resp.final == "ok"
    first = next(s for s in resp.token_spans if s is not None)
    assert first[0] == len(THINK_OPEN) and resp.output[first[0]:first[1]].startswith("w")
    check_spans(resp, ids, tok)
    check_texts(resp, ids, tok)


def test_strip_removes_split_unicode_whitespace(tok):
    """No-break and ideographic spaces (multi-byte, split over tokens) stripped at the edges leave no spans."""
    ids = enc(tok, *analysis_msg("\u00a0\u3000mid\u3000\u00a0"), *final_msg("\u3000ok\u00a0"))
    assert sum("\ufffd" in tok.decode([i]) for i in ids) >= 4
    resp = parse_harmony(ids, tok)
    assert (resp.analysis, resp.final) == ("mid", "ok")
    assert "".join(resp.output[s[0]:s[1]] for s in resp.token_spans if s is not None) == "midok"
    check_spans(resp, ids, tok)


@pytest.mark.parametrize("text", ["x ≠ y → z", "café, naïve", "emoji 😀 done", "≠→é😀", "∑ − ÷ ×"])
def test_multibyte_characters(tok, text):
    ids = enc(tok, *analysis_msg(f"Check {text}."), *final_msg(f"{text}!"))
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # the BPE does split characters over tokens
    resp = parse_harmony(ids, tok)
    assert resp.output == f"<think>\nCheck {text}.\n</think>\n\n{text}!"
    check_spans(resp, ids, tok)
    check_char_ownership(resp, ids, tok)
    assert any(s is not None and s[0] == s[1] for s in resp.token_spans)  # continuation-only tokens


def test_character_split_over_tokens_gets_one_owner(tok):
    """"é" is two byte tokens: the first gets the character, the second an empty span right after it."""
    ids = enc(tok, *analysis_msg("é"), *final_msg("ok"))
    resp = parse_harmony(ids, tok)
    spans = [s for s in resp.token_spans if s is not None]
    assert resp.analysis == "é" and spans[:2] == [(8, 9), (9, 9)]


def test_token_straddling_two_characters():
    """A token holding a character's last byte and the next character: it owns only the latter."""
    tok = _harmony_tokenizer({"©x": 5000, "Ĵ=": 5001})  # bytes a9 78 / 92 3d (ids past the added tokens)
    é_start, é_end_x, minus_start, minus_end_eq = tok.convert_tokens_to_ids(["Ã", "©x", "âĪ", "Ĵ="])
    body = [é_start, é_end_x, minus_start, minus_end_eq] + enc(tok, "1")
    ids = enc(tok, CHANNEL, "analysis", MESSAGE) + body + enc(tok, END, *final_msg("ok"))
    resp = parse_harmony(ids, tok)
    assert resp.analysis == "éx−=1"
    offset = ids.index(é_start)
    assert [resp.output[s[0]:s[1]] for s in resp.token_spans[offset:offset + 5]] == ["é", "x", "−", "=", "1"]
    check_spans(resp, ids, tok)
    check_char_ownership(resp, ids, tok)


def test_truncated_inside_a_character(tok):
    """Cut off mid-emoji with no final: the partial character is U+FFFD, owned by the token that began it."""
    ids = enc(tok, *analysis_msg("go 😀"))[:-2]  # drop <|end|> and the emoji's last byte
    resp = parse_harmony(ids, tok)
    assert resp.output == "<think>\ngo \ufffd" and not resp.has_final and resp.has_analysis
    check_spans(resp, ids, tok)


def test_random_token_soup_keeps_span_invariants(tok):
    """Arbitrary vocabulary tokens (invalid UTF-8 included) still give disjoint spans covering the output."""
    rng = random.Random(0)
    vocab = list(range(1022))
    for _ in range(50):
        analysis = [rng.choice(vocab) for _ in range(rng.randint(0, 30))]
        final = [rng.choice(vocab) for _ in range(rng.randint(0, 10))]
        ids = enc(tok, CHANNEL, "analysis", MESSAGE) + analysis + enc(tok, END, START, "assistant", CHANNEL,
                                                                      "final", MESSAGE) + final
        check_spans(parse_harmony(ids, tok), ids, tok)


@pytest.mark.parametrize("parts", [
    (*analysis_msg("Look it up."), START, "assistant to=functions.get_weather", CHANNEL, "commentary json",
     MESSAGE, '{"city": "Paris"}', CALL),
    (*analysis_msg("Look it up."), START, "assistant", CHANNEL, "commentary to=functions.get_weather ",
     CONSTRAIN, "json", MESSAGE, '{"city": "Paris"}', CALL),
    (CHANNEL, "analysis to=python", MESSAGE, "print(1 + 1)", CALL),
    (*analysis_msg("Search."), START, "assistant", CHANNEL, "analysis to=browser.search", MESSAGE, '{"q": "x"}'),
    (*analysis_msg("Hmm."), START, "assistant", CHANNEL, "analysis", MESSAGE, "stop here", CALL),
])
def test_tool_calls_are_flagged(tok, parts):
    resp = parse_harmony(enc(tok, *parts), tok)
    assert resp.has_tool_call
    assert "{" not in resp.output and "print" not in resp.output  # the call's payload is not reasoning


def test_commentary_without_recipient_is_not_a_tool_call(tok):
    ids = enc(tok, *analysis_msg("Plan."), START, "assistant", CHANNEL, "commentary", MESSAGE, "Working on it.",
              END, *final_msg("Done."))
    resp = parse_harmony(ids, tok)
    assert not resp.has_tool_call and resp.output == "<think>\nPlan.\n</think>\n\nDone."
    assert resp.channels == ["analysis", "commentary", "final"]
    check_spans(resp, ids, tok)


def test_missing_final(tok):
    """Truncated before the final channel: the output is the reasoning alone, flagged has_final=False."""
    ids = enc(tok, *analysis_msg("Still thinking "), START, "assistant", CHANNEL, "final", MESSAGE)
    resp = parse_harmony(ids, tok)
    assert resp.output == "<think>\nStill thinking" and not resp.has_final and resp.final == ""
    check_spans(resp, ids, tok)
    resp = parse_harmony(enc(tok, *analysis_msg("Only this.")), tok)
    assert resp.output == "<think>\nOnly this." and not resp.has_final


def test_empty_analysis(tok):
    for parts in [(*analysis_msg("  \n"), *final_msg("42")), final_msg("42")]:
        ids = enc(tok, *parts)
        resp = parse_harmony(ids, tok)
        assert resp.output == "<think>\n\n</think>\n\n42" and not resp.has_analysis and resp.has_final
        check_spans(resp, ids, tok)


def test_several_analysis_messages_are_joined(tok):
    ids = enc(tok, *analysis_msg("First step."), START, "assistant", *analysis_msg("Second step."),
              *final_msg("Answer."))
    resp = parse_harmony(ids, tok)
    assert resp.analysis == "First step.\nSecond step."
    assert resp.output == "<think>\nFirst step.\nSecond step.\n</think>\n\nAnswer."
    join = len(THINK_OPEN) + len("First step.")
    check_spans(resp, ids, tok, extra_uncovered={join})
    check_texts(resp, ids, tok)


@pytest.mark.parametrize("parts", [
    (*analysis_msg("  We add 2 and 3 → 5 ≠ 6 😀.\n"), *final_msg(" The answer is 5. ")),
    ("Prefilled reasoning.", END, *final_msg("Done.")),
    (*analysis_msg("a"), START, "assistant", *analysis_msg("b"), *final_msg("c")),
    (*analysis_msg("Look."), START, "assistant to=functions.f", CHANNEL, "commentary json", MESSAGE, "{}", CALL),
    (CHANNEL, "analysis to=python", MESSAGE, "print(1)", CALL),
    analysis_msg("truncated"),
])
def test_text_path_matches_token_path(tok, parts):
    ids = enc(tok, *parts)
    by_tokens = parse_harmony(ids, tok)
    by_text = parse_harmony_text(tok.decode(ids, skip_special_tokens=False))
    assert by_text.token_spans == []
    for name in ("output", "analysis", "final", "has_tool_call", "has_analysis", "has_final", "channels"):
        assert getattr(by_text, name) == getattr(by_tokens, name), name
