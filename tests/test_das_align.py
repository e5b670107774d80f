"""Token → sentence alignment (spec §5.2): byte-level decoding, the first-character rule, conservation."""

from __future__ import annotations

import bisect
import random

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from dasd.das.align import (
    AlignmentError,
    aggregate,
    byte_level_token_starts,
    owner_of_chars,
    sentence_probability,
    student_token_starts,
    teacher_token_starts,
)
from dasd.das.segment import segment
from dasd.text.harmony import parse_harmony

TEXT = ("<think>\nLet x ≠ 0. Then 3 × x ÷ x = 3, déjà vu!\n\n  We check: 3.5 × 2 = 7.\n</think>\n\n"
        "The answer is **3** (not 4). Café ≠ cafe.")
MULTIBYTE = ["x ≠ y × z ÷ w", "Café déjà vu, naïve résumé.", "数学 is maths; Ελληνικά ≠ English.", "≠≠≠ ×× é"]


@pytest.fixture(scope="module")
def teacher_tok():
    """A byte-level BPE (vocab 300) trained on ASCII text, so every non-ASCII character splits into bytes."""
    rng = random.Random(0)
    words = "the of and to a in is that we it for as with be on by this are x y sum value step check then".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))).capitalize()
             + rng.choice([".", "?", "!", ": 3.5 = 7/2.", " = 12."]) for _ in range(400)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", clean_up_tokenization_spaces=False)


@pytest.fixture(params=["student", "teacher"])
def any_tok(request, tokenizer, teacher_tok):
    return tokenizer if request.param == "student" else teacher_tok


def _byte_level(s: str) -> bytes:
    """Independent inverse of GPT-2's byte→unicode alphabet (printable bytes are themselves, others 256+n)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in keep]
    inverse = {chr(b): b for b in keep} | {chr(256 + n): b for n, b in enumerate(others)}
    return bytes(inverse[c] for c in s)


def _expected_starts(text: str, ids: list[int], tok) -> list[int]:
    """Oracle: each token's first byte, mapped to the character whose UTF-8 encoding contains that byte."""
    char_byte_start = np.cumsum([0] + [len(c.encode()) for c in text]).tolist()
    starts, offset = [], 0
    for piece in tok.convert_ids_to_tokens(ids):
        starts.append(bisect.bisect_right(char_byte_start, offset) - 1)
        offset += len(_byte_level(piece))
    return starts


@pytest.mark.parametrize("text", MULTIBYTE + [TEXT])
def test_decoded_text_equals_tokenizer_decode(any_tok, text):
    ids = any_tok.encode(text, add_special_tokens=False) + [any_tok.eos_token_id]
    decoded, starts = byte_level_token_starts(ids, any_tok)
    assert decoded == any_tok.decode(ids, skip_special_tokens=True) == text
    assert starts[-1] == -1  # eos contributes no text
    assert starts[:-1].tolist() == _expected_starts(text, ids[:-1], any_tok)


def test_split_character_tokens_take_the_start_of_their_character(teacher_tok):
    text = "a ≠ b × c ÷ d é"
    ids = teacher_tok.encode(text, add_special_tokens=False)
    _, starts = byte_level_token_starts(ids, teacher_tok)
    pieces = [_byte_level(p) for p in teacher_tok.convert_ids_to_tokens(ids)]
    continuation = [k for k, b in enumerate(pieces) if b and all(x & 0xC0 == 0x80 for x in b)]
    assert len(continuation) >= 5  # the small vocabulary splits every multi-byte character
    expected = _expected_starts(text, ids, teacher_tok)
    for k in continuation:
        assert text[starts[k]] in "≠×÷é" and starts[k] == expected[k]
    assert starts.tolist() == expected


def test_decode_path_agrees_with_offset_mapping(tokenizer):
    """For the student tokenizer, decoded byte starts equal the fast tokenizer's offset starts."""
    for text in MULTIBYTE + [TEXT]:
        ids, offset_starts = student_token_starts(tokenizer, text)
        _, decoded_starts = byte_level_token_starts(ids, tokenizer)
        assert decoded_starts.tolist() == offset_starts.tolist()


def test_owner_of_chars_first_character_rule():
    text = "<think>\nabc. def\n</think>\n\n xyz  "
    spans = segment(text)
    assert spans.tolist() == [[8, 12], [13, 16], [28, 31]]
    owner = owner_of_chars(text, spans)
    assert owner.dtype == np.int32 and len(owner) == len(text) + 1
    expected = [-1] * 7 + [0] * 5 + [1] * 4 + [-1] * 9 + [2] * 6 + [-1] * 3
    assert owner.tolist() == expected
    assert owner_of_chars("  ", segment("  ")).tolist() == [-1, -1, -1]


@pytest.mark.parametrize("with_eos", [False, True])
def test_conservation_across_tokenizers(tokenizer, teacher_tok, with_eos):
    """Sentence sums plus unassigned equal the total, for two different tokenizations of the same text."""
    rng = np.random.default_rng(0)
    spans = segment(TEXT)
    owner = owner_of_chars(TEXT, spans)
    teacher_ids = teacher_tok.encode(TEXT, add_special_tokens=False) + ([teacher_tok.eos_token_id] if with_eos else [])
    teacher_starts = teacher_token_starts(TEXT, teacher_ids, teacher_tok)
    student_ids, student_starts = student_token_starts(tokenizer, TEXT)
    assert len(teacher_ids) != len(student_ids)  # the tokenizations really differ
    for starts in (teacher_starts, student_starts):
        logprobs = -rng.exponential(2.0, size=len(starts))
        res = aggregate(starts, logprobs, owner, len(spans))
        assert res.sum_logprob.dtype == np.float64 and res.num_tokens.dtype == np.int64
        assert res.sum_logprob.sum() + res.unassigned_logprob == pytest.approx(res.total_logprob, abs=1e-9)
        assert res.total_logprob == pytest.approx(logprobs.sum(), abs=1e-9)
        assert res.num_tokens.sum() + res.unassigned_tokens == len(logprobs)
        assert np.all(res.num_tokens > 0)  # every sentence gets tokens under both tokenizers here
        assert res.unassigned_tokens > 0  # the think tags (and eos)
        assert not np.any(np.isnan(res.probability))


def test_think_tag_tokens_are_unassigned(any_tok):
    text = "<think>\nStep one.\n</think>\n\nAnswer."
    spans = segment(text)
    ids, starts = student_token_starts(any_tok, text)
    tag_chars = set(range(0, 7)) | set(range(18, 26))
    assert text[18:26] == "</think>"
    in_tag = np.array([s in tag_chars for s in starts.tolist()])
    assert in_tag.sum() >= 2
    logprobs = np.where(in_tag, -100.0, -1.0)
    res = aggregate(starts, logprobs, owner_of_chars(text, spans), len(spans))
    # tag tokens go nowhere; the "\n" before "</think>" (after the region's last sentence) also goes nowhere
    assert res.unassigned_tokens == in_tag.sum() + 1
    assert res.unassigned_logprob == pytest.approx(-100.0 * in_tag.sum() - 1.0)
    assert res.sum_logprob.min() > -100


def test_whitespace_tokens_attach_to_the_following_sentence(tokenizer):
    text = "First sentence.\n\n\nSecond one.   "
    spans = segment(text)
    ids, starts = student_token_starts(tokenizer, text)
    owner = owner_of_chars(text, spans)
    toks = tokenizer.convert_ids_to_tokens(ids)
    newline_tokens = [k for k, t in enumerate(toks) if set(t) == {"Ċ"}]
    assert newline_tokens and all(owner[starts[k]] == 1 for k in newline_tokens)
    trailing = [k for k, s in enumerate(starts.tolist()) if s >= len(text.rstrip())]
    assert trailing and all(owner[starts[k]] == -1 for k in trailing)  # nothing follows: unassigned
    res = aggregate(starts, np.full(len(ids), -1.0), owner, len(spans))
    assert res.num_tokens[1] == sum(1 for s in starts.tolist() if 15 <= s < len(text.rstrip()))


def test_teacher_decoding_must_reproduce_the_output(teacher_tok):
    ids = teacher_tok.encode(TEXT, add_special_tokens=False)
    assert teacher_token_starts(TEXT, ids, teacher_tok).shape == (len(ids),)
    with pytest.raises(AlignmentError, match=r"character 50\b"):
        teacher_token_starts(TEXT[:50] + "?" + TEXT[51:], ids, teacher_tok)
    with pytest.raises(AlignmentError, match="differ"):
        teacher_token_starts(TEXT + " extra", ids, teacher_tok)


def test_token_spans_give_the_same_starts_as_decoding(teacher_tok):
    """Harmony token_spans (a pre-filled analysis completion) reproduce the decode path's starts."""
    text = "We check x ≠ y. Then é × 3 ÷ 2 holds! Done."
    ids = teacher_tok.encode(text, add_special_tokens=False)
    resp = parse_harmony(ids, teacher_tok)
    assert resp.output == "<think>\n" + text
    from_spans = teacher_token_starts(resp.output, ids, None, token_spans=[list(s) if s else None
                                                                          for s in resp.token_spans])
    _, decoded = byte_level_token_starts(ids, teacher_tok)
    assert any(s is not None and s[0] == s[1] for s in resp.token_spans)  # continuation tokens were present
    assert from_spans.tolist() == (decoded + len("<think>\n")).tolist()
    with pytest.raises(AlignmentError, match="token_spans"):
        teacher_token_starts(resp.output, ids[:-1], None, token_spans=resp.token_spans)


def test_aggregate_validates_lengths():
    owner = owner_of_chars("Hello there.", segment("Hello there."))
    with pytest.raises(AlignmentError, match=r"\(3,\).*\(2,\)"):
        aggregate(np.array([0, 1, 2]), np.array([-1.0, -2.0]), owner, 1)
    with pytest.raises(AlignmentError, match="past the text"):
        aggregate(np.array([0, 99]), np.array([-1.0, -2.0]), owner, 1)


def test_special_tokens_in_student_text_are_unassigned(tokenizer):
    text = "Answer.<|im_end|>"
    ids, starts = student_token_starts(tokenizer, text)
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") and starts[-1] == -1
    assert starts[0] == 0


def test_sentence_probability_is_the_geometric_mean():
    starts = np.array([0, 0, 1, 5, -1])
    logprobs = np.log([0.5, 0.2, 0.9, 0.4, 0.3])
    owner = np.array([0, 0, 0, 2, 2, 2, -1])  # sentence 1 gets no tokens
    res = aggregate(starts, logprobs, owner, 3)
    assert res.num_tokens.tolist() == [3, 0, 1] and res.unassigned_tokens == 1
    prob = sentence_probability(res.sum_logprob, res.num_tokens)
    assert prob[0] == pytest.approx((0.5 * 0.2 * 0.9) ** (1 / 3))
    assert np.isnan(prob[1])
    assert prob[2] == pytest.approx(0.4)
    assert np.array_equal(prob, res.probability, equal_nan=True)
