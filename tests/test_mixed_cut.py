"""Mixed-policy distillation (spec §7): where a truncated rollout is cut, the teacher's continuation prompt,
and the assembled student-prefix + teacher-continuation response."""

from __future__ import annotations

import copy
import math
import random
from collections import Counter

import pytest

from dasd.das.segment import segment
from dasd.generation.engine import Request, Sample, render_prompt
from dasd.generation.pipeline import TeacherFormat
from dasd.mixed.continuation import assemble, continuation_prompt
from dasd.mixed.cut import choose_cut, cut_bounds, cut_positions, draw_cut
from dasd.models.student import asset_path, load_tokenizer
from dasd.text.harmony import HARMONY_TOKENS
from dasd.text.think import THINK_SEPARATOR as THINK_CLOSE

START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL = HARMONY_TOKENS
LEAD = "<think>\n"
SYSTEM = "You are a helpful assistant."
QUESTION = "What is 2 + 2?"
# several sentences and lines, CJK and emoji characters that the tiny BPE splits over several tokens
ROLLOUT = ("Let me compute 数学 carefully. First 2 + 2 is a sum 😀 of two twos!\nSo we add them: 2 + 2 = 4. "
           "Check: 4 − 2 = 2, fine.\n\nNow 数学 again and ünïcödé text, then more words without any stop "
           "going on and on")
HARMONY_TEMPLATE = ("{% for m in messages %}<|start|>{{ m['role'] }}<|message|>{{ m['content'] }}<|end|>"
                    "{% endfor %}"
                    "{% if add_generation_prompt %}<|start|>assistant{% endif %}")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(asset_path("tiny_qwen3"))


@pytest.fixture(scope="module")
def thinking_tok(tok):
    """The tiny tokenizer with a template whose generation prompt opens the think block (Qwen3 thinking)."""
    t = copy.deepcopy(tok)
    header = "'<|im_start|>assistant\\n'"
    assert header in t.chat_template
    t.chat_template = t.chat_template.replace(header, "'<|im_start|>assistant\\n<think>\\n'")
    return t


@pytest.fixture(scope="module")
def htok():
    """The tiny byte-level BPE with harmony control tokens (special tokens) and a harmony-like template."""
    t = load_tokenizer(asset_path("tiny_qwen3"))
    t.add_tokens(list(HARMONY_TOKENS), special_tokens=True)
    t.chat_template = HARMONY_TEMPLATE
    return t


def enc(tok, *parts: str) -> list[int]:
    """Token ids: control-token strings become their ids, other text is BPE-encoded."""
    ids: list[int] = []
    for p in parts:
        is_control = p in HARMONY_TOKENS
        ids += [tok.convert_tokens_to_ids(p)] if is_control else tok.encode(p, add_special_tokens=False)
    return ids


def sample(ids: list[int], text: str = "", finish_reason: str = "stop") -> Sample:
    return Sample(text=text, token_ids=ids, logprobs=[0.0] * len(ids), finish_reason=finish_reason,
                  prompt_token_ids=[], logprob_mode="raw")


def boundaries(text: str, min_chars: int = 3) -> set[int]:
    """Sentence starts, sentence ends and positions in the whitespace run right after an end."""
    out = set()
    for a, b in segment(text, min_chars).tolist():
        out.add(a)
        while True:
            out.add(b)
            if b >= len(text) or not text[b].isspace():
                break
            b += 1
    return out


# ---------------------------------------------------------------- cut draws


@pytest.mark.parametrize("length", [2, 3, 7, 100])
def test_draw_stays_in_the_second_half(length):
    lo, hi = cut_bounds(length)
    assert (lo, hi) == (math.ceil(length / 2), length - 1)
    rng = random.Random(0)
    draws = {draw_cut(length, rng) for _ in range(5000)}
    assert draws == set(range(lo, hi + 1))  # always inside, every value hit


def test_draw_is_uniform():
    rng = random.Random(123)
    counts = Counter(draw_cut(10, rng) for _ in range(20_000))
    assert sorted(counts) == [5, 6, 7, 8, 9]
    assert all(3600 <= n <= 4400 for n in counts.values()), counts  # expected 4000, sd ≈ 57


@pytest.mark.parametrize("length", [-1, 0, 1])
def test_too_short_rollout_raises(length, tok):
    with pytest.raises(ValueError):
        cut_bounds(length)
    with pytest.raises(ValueError):
        choose_cut(tok.encode("a")[:max(length, 0)], tok, random.Random(0))


def test_seeded_cuts_reproduce(tok):
    ids = tok.encode(ROLLOUT, add_special_tokens=False)
    for seed in range(5):
        assert choose_cut(ids, tok, random.Random(seed)) == choose_cut(ids, tok, random.Random(seed))
    assert [draw_cut(50, random.Random(7)) for _ in range(3)] == [draw_cut(50, random.Random(7))] * 3


# ---------------------------------------------------------------- clean character boundaries


def test_ascii_cut_without_snap_is_the_draw(tok):
    ids = tok.encode("plain ascii words. And more of them here, fine.", add_special_tokens=False)
    for seed in range(50):
        c = choose_cut(ids, tok, random.Random(seed), snap_to_sentence=False)
        assert c.index == c.raw and not c.snapped
        assert c.prefix_text == tok.decode(ids[:c.index]) and c.full_text == tok.decode(ids)


def test_cut_never_splits_a_character(tok):
    """Without snapping the cut is the largest c <= raw whose prefix decodes without a partial character."""
    ids = tok.encode(ROLLOUT, add_special_tokens=False)
    assert any("\ufffd" in tok.decode(ids[:c]) for c in range(len(ids)))  # the BPE does split characters
    moved = 0
    for seed in range(300):
        c = choose_cut(ids, tok, random.Random(seed), snap_to_sentence=False)
        expect = max(k for k in range(1, c.raw + 1) if "\ufffd" not in tok.decode(ids[:k]))
        assert c.index == expect and not c.snapped
        moved += c.index != c.raw
        assert "\ufffd" not in c.prefix_text and c.full_text.startswith(c.prefix_text)
        assert c.prefix_text == tok.decode(ids[:c.index]) and c.full_text == ROLLOUT
    assert moved  # some draws did land inside a character


def test_lead_is_kept_but_never_cut(tok):
    ids = tok.encode(ROLLOUT, add_special_tokens=False)
    for seed in range(50):
        c = choose_cut(ids, tok, random.Random(seed), lead=LEAD, snap_to_sentence=False)
        assert c.full_text == LEAD + ROLLOUT
        assert c.prefix_text == LEAD + tok.decode(ids[:c.index]) and c.index >= 1


def test_no_clean_cut_raises(tok):
    ids = tok.encode("😀", add_special_tokens=False)  # one character, four tokens
    assert len(ids) == 4
    with pytest.raises(ValueError, match="complete character"):
        choose_cut(ids, tok, random.Random(0), snap_to_sentence=False)


def test_tokens_without_text(tok):
    """A special token (no text) ends its prefix where the next token with text starts."""
    special = tok.convert_tokens_to_ids("<|im_start|>")
    a, b = tok.encode("Some text. ", add_special_tokens=False), tok.encode("More.", add_special_tokens=False)
    text, char_end, clean = cut_positions(a + [special] + b, tok)
    assert text == "Some text. More."
    assert char_end[len(a)] == char_end[len(a) + 1] == len("Some text. ")
    assert char_end[-1] == len(text) and clean.all()


# ---------------------------------------------------------------- snapping to sentence / line boundaries


@pytest.mark.parametrize("lead", ["", LEAD])
def test_snap_ends_at_the_nearest_boundary_beyond_half(tok, lead):
    ids = tok.encode(ROLLOUT, add_special_tokens=False)
    full = lead + ROLLOUT
    marks = boundaries(full)
    ends = {k: len(lead) + len(tok.decode(ids[:k])) for k in range(1, len(ids) + 1)}
    clean = {k for k in ends if "\ufffd" not in tok.decode(ids[:k])}
    snapped = 0
    for seed in range(200):
        c = choose_cut(ids, tok, random.Random(seed), lead=lead)
        assert 1 <= c.index <= c.raw and full.startswith(c.prefix_text) and c.full_text == full
        half = -(-len(ids) // 2)  # the snap never moves the cut below ceil(L/2)
        candidates = [k for k in range(half, c.raw + 1)
                      if k in clean and ends[k] in marks and ends[k] > len(lead)]
        assert c.snapped == bool(candidates)
        if candidates:
            snapped += 1
            assert c.index == max(candidates) and len(c.prefix_text) in marks
            spans = segment(full)  # the prefix ends at a sentence start, or a sentence end + whitespace
            assert len(c.prefix_text) in spans[:, 0] or len(c.prefix_text.rstrip()) in spans[:, 1]
        else:
            assert c.index == max(k for k in range(1, c.raw + 1) if k in clean)
    assert snapped


def test_snap_falls_back_without_a_boundary(tok):
    text = ("one long run of words without any sentence end or line break " * 4).strip()
    ids = tok.encode(text, add_special_tokens=False)
    for seed in range(30):
        c = choose_cut(ids, tok, random.Random(seed), lead=LEAD)
        assert not c.snapped and c.index == c.raw


def test_snap_lands_on_sentence_and_line_ends(tok):
    """A cut drawn in the middle of a sentence moves back to the end (or the next start) of the one before."""
    first = "Alpha beta gamma delta.\nSecond line here and it goes on"
    ids = tok.encode(first, add_special_tokens=False)
    seen = set()
    for seed in range(100):
        c = choose_cut(ids, tok, random.Random(seed))
        if c.snapped:
            seen.add(c.prefix_text)
    assert seen and seen <= {"Alpha beta gamma delta.", "Alpha beta gamma delta.\n"}


# ---------------------------------------------------------------- plain continuation


def _render_ids(tok, fmt: TeacherFormat) -> list[int]:
    system = [{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt else []
    return render_prompt(tok, Request(messages=tuple(system + [{"role": "user", "content": QUESTION}])))


def test_plain_prompt_with_thinking_template(thinking_tok):
    tok, fmt = thinking_tok, TeacherFormat(system_prompt=SYSTEM)
    prefix = LEAD + "Let me think. 数学 step one."
    p = continuation_prompt(tok, QUESTION, prefix, fmt)
    head = _render_ids(tok, fmt)
    assert tok.decode(head).endswith("<|im_start|>assistant\n<think>\n")
    assert p.token_ids == head + tok.encode("Let me think. 数学 step one.", add_special_tokens=False)
    text = tok.decode(p.token_ids, skip_special_tokens=False)
    assert text.count("<think>") == 1 and text.endswith(prefix)
    assert p.channel == "text" and p.prefix_text == prefix


def test_plain_prompt_keeps_a_prefix_the_prompt_does_not_open(thinking_tok):
    """Only an overlap the prefix really starts with is dropped."""
    fmt = TeacherFormat()
    p = continuation_prompt(thinking_tok, QUESTION, "no think block.", fmt)
    tail = thinking_tok.encode("no think block.", add_special_tokens=False)
    assert p.token_ids == _render_ids(thinking_tok, fmt) + tail


def test_plain_prompt_without_thinking_template(tok):
    fmt = TeacherFormat()
    prefix = LEAD + "Step one."
    p = continuation_prompt(tok, QUESTION, prefix, fmt)
    head = _render_ids(tok, fmt)
    assert p.token_ids == head + tok.encode(prefix, add_special_tokens=False)
    assert tok.decode(p.token_ids, skip_special_tokens=False).count("<think>") == 1


def test_plain_assemble(thinking_tok):
    tok, fmt = thinking_tok, TeacherFormat(system_prompt=SYSTEM)
    prefix = LEAD + "Step one."
    p = continuation_prompt(tok, QUESTION, prefix, fmt)
    cont = " Step two.\n</think>\n\nThe answer is 4."
    a = assemble(p, sample(tok.encode(cont, add_special_tokens=False), cont), tok, fmt)
    assert a.output == prefix + cont and a.boundary == len(prefix) and a.continuation_text == cont
    assert a.finished and a.has_final and not a.has_tool_call
    cut_off = assemble(p, sample([5], " Step", "length"), tok, fmt)
    assert not cut_off.finished and not cut_off.has_final and cut_off.output == prefix + " Step"


@pytest.mark.parametrize("seed", range(10))
def test_plain_round_trip_keeps_the_boundary(thinking_tok, seed):
    """Student prefix from a real cut + teacher text: the boundary survives re-tokenization."""
    tok, fmt = thinking_tok, TeacherFormat(system_prompt=SYSTEM)
    ids = tok.encode(ROLLOUT, add_special_tokens=False)
    c = choose_cut(ids, tok, random.Random(seed), lead=LEAD, snap_to_sentence=seed % 2 == 0)
    p = continuation_prompt(tok, QUESTION, c.prefix_text, fmt)
    assert tok.decode(p.token_ids, skip_special_tokens=False).endswith(c.prefix_text)
    cont = "ünï 数学 end.\n</think>\n\n**4** 😀"
    a = assemble(p, sample(tok.encode(cont, add_special_tokens=False), cont), tok, fmt)
    assert a.output[:a.boundary] == c.prefix_text and a.output[a.boundary:] == cont
    student = tok.encode(a.output[:a.boundary], add_special_tokens=False)
    teacher = tok.encode(a.output[a.boundary:], add_special_tokens=False)
    assert tok.decode(student) == c.prefix_text and tok.decode(student + teacher) == a.output


# ---------------------------------------------------------------- harmony continuation


HFMT = TeacherFormat(kind="harmony", system_prompt="Reasoning: high")


def test_harmony_prompt_analysis(htok):
    prefix = LEAD + "First, 数学 step. Then "
    p = continuation_prompt(htok, QUESTION, prefix, HFMT)
    head = _render_ids(htok, HFMT)
    assert htok.decode(head, skip_special_tokens=False).endswith("<|start|>assistant")
    assert p.token_ids == head + enc(htok, CHANNEL, "analysis", MESSAGE, "First, 数学 step. Then ")
    assert p.channel == "analysis" and p.prefix_text == prefix
    assert htok.decode(p.token_ids, skip_special_tokens=False).endswith(
        "<|start|>assistant<|channel|>analysis<|message|>First, 数学 step. Then ")


def test_harmony_prompt_final(htok):
    prefix = LEAD + "Reasoning here.  \n</think>\n\nThe answer"
    p = continuation_prompt(htok, QUESTION, prefix, HFMT)
    tail = enc(htok, CHANNEL, "analysis", MESSAGE, "Reasoning here.", END,
               START, "assistant", CHANNEL, "final", MESSAGE, "The answer")
    assert p.token_ids == _render_ids(htok, HFMT) + tail and p.channel == "final"
    controls = {htok.convert_tokens_to_ids(t) for t in HARMONY_TOKENS}
    assert sum(i in controls for i in tail) == 6  # each control token is one id


def test_harmony_prompt_needs_think_open(htok):
    with pytest.raises(ValueError, match="<think>"):
        continuation_prompt(htok, QUESTION, "no think tag", HFMT)


def test_harmony_assemble_analysis_then_final(htok):
    prefix = LEAD + "First, 数学 step. Then"
    p = continuation_prompt(htok, QUESTION, prefix, HFMT)
    ids = enc(htok, " the rest 😀.\n ", END,
              START, "assistant", CHANNEL, "final", MESSAGE, " The answer is 4. ", RETURN)
    a = assemble(p, sample(ids), htok, HFMT)
    assert a.output == prefix + " the rest 😀." + THINK_CLOSE + "The answer is 4."
    assert a.boundary == len(prefix) and a.continuation_text == a.output[len(prefix):]
    assert a.finished and a.has_final and not a.has_tool_call


def test_harmony_assemble_second_analysis_message(htok):
    prefix = LEAD + "Start"
    p = continuation_prompt(htok, QUESTION, prefix, HFMT)
    ids = enc(htok, "ing.", END, START, "assistant", CHANNEL, "analysis", MESSAGE, " more thought ", END,
              START, "assistant", CHANNEL, "final", MESSAGE, "4", RETURN)
    a = assemble(p, sample(ids), htok, HFMT)
    assert a.output == prefix + "ing.\nmore thought" + THINK_CLOSE + "4" and a.finished


def test_harmony_assemble_tool_call(htok):
    prefix = LEAD + "Let me run code"
    p = continuation_prompt(htok, QUESTION, prefix, HFMT)
    ids = enc(htok, ".", END, START, "assistant", CHANNEL, "analysis to=python", MESSAGE, "print(1)", CALL)
    a = assemble(p, sample(ids), htok, HFMT)
    assert a.has_tool_call and "print(1)" not in a.output and a.output == prefix + "."
    assert not a.finished and not a.has_final


def test_harmony_assemble_cut_off(htok):
    prefix = LEAD + "Thinking"
    p = continuation_prompt(htok, QUESTION, prefix, HFMT)
    a = assemble(p, sample(enc(htok, " still going "), finish_reason="length"), htok, HFMT)
    assert a.output == prefix + " still going" and not a.finished and not a.has_final and not a.has_tool_call


def test_harmony_assemble_final(htok):
    prefix = LEAD + "Reasoning here.\n</think>\n\nThe answer"
    p = continuation_prompt(htok, QUESTION, prefix, HFMT)
    a = assemble(p, sample(enc(htok, " is 4. ", RETURN)), htok, HFMT)
    assert a.output == prefix + " is 4." and a.boundary == len(prefix) and a.finished and a.has_final
    empty = continuation_prompt(htok, QUESTION, LEAD + "Done.\n</think>\n\n", HFMT)
    assert empty.token_ids[-1] == htok.convert_tokens_to_ids(MESSAGE)
    b = assemble(empty, sample(enc(htok, "Four.", RETURN)), htok, HFMT)
    assert b.output == LEAD + "Done.\n</think>\n\nFour." and b.finished


def test_harmony_round_trip_from_a_cut(htok):
    """A cut student rollout goes into the analysis channel; prefix + continuation join exactly."""
    ids = htok.encode(ROLLOUT, add_special_tokens=False)
    for seed in range(10):
        c = choose_cut(ids, htok, random.Random(seed), lead=LEAD)
        p = continuation_prompt(htok, QUESTION, c.prefix_text, HFMT)
        body = enc(htok, CHANNEL, "analysis", MESSAGE, c.prefix_text[len(LEAD):])
        assert p.channel == "analysis" and p.token_ids == _render_ids(htok, HFMT) + body
        cont = enc(htok, "xyz.", END, START, "assistant", CHANNEL, "final", MESSAGE, "4", RETURN)
        a = assemble(p, sample(cont), htok, HFMT)
        assert a.output == c.prefix_text + "xyz." + THINK_CLOSE + "4" and a.boundary == len(c.prefix_text)


def test_unknown_format_raises(tok):
    with pytest.raises(ValueError, match="plain or harmony"):
        continuation_prompt(tok, QUESTION, LEAD + "x", TeacherFormat(kind="other"))
