"""Response filters (spec §4.3): each filter's bad case, order, thresholds, report and the regex rule's cost."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace

import pytest

from dasd.data.filters import (
    REPETITION_RULES,
    FilterConfig,
    FilterInput,
    LengthConfig,
    LengthFilter,
    RepetitionConfig,
    RepetitionFilter,
    StructureFilter,
    ToolCallFilter,
    TruncatedFilter,
    apply_filters,
    build_filters,
    find_tandem_repeat,
    token_counter,
)
from dasd.data.records import read_records
from dasd.data.template import ChatTemplater


@pytest.fixture(scope="module")
def samples(sample_file) -> list[FilterInput]:
    records, _ = read_records(sample_file)
    return [FilterInput.from_record(r) for r in records]


@pytest.fixture(scope="module")
def counter(tokenizer):
    return token_counter(ChatTemplater(tokenizer))


def _item(output: str, uuid: str = "u", **kw) -> FilterInput:
    return FilterInput(uuid=uuid, output=output, input="What is 1 + 1?", **kw)


def _think(reasoning: str, final: str = "The answer is \\boxed{2}.") -> str:
    return f"<think>\n{reasoning}\n</think>\n\n{final}"


def _words(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join("".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(3, 8))) for _ in range(n))


# ---------------------------------------------------------------------------------------- real data


def test_all_sample_records_pass_default_filters(samples, counter):
    kept, report = apply_filters(samples, build_filters(count=counter))
    assert len(samples) == 300 and len(kept) == 300
    assert report.total == 300 and report.kept == 300 and report.dropped == 0


def test_tiny_cutoff_drops_every_sample_by_length(samples, counter):
    cfg = FilterConfig(length=LengthConfig(cutoff_len=10))
    kept, report = apply_filters(samples, build_filters(cfg, count=counter))
    assert kept == [] and report.stats["length"].dropped == 300
    uuid, detail = report.stats["length"].examples[0]
    assert uuid == samples[0].uuid and "> cutoff_len 10" in detail


def test_length_uses_precomputed_count_and_needs_one(samples):
    f = LengthFilter(LengthConfig(cutoff_len=100))
    assert f.check(replace(samples[0], num_student_tokens=100)) is None
    assert f.check(replace(samples[0], num_student_tokens=101)) is not None
    with pytest.raises(ValueError, match="num_student_tokens"):
        f.check(samples[0])


def test_length_counts_the_templated_sample(samples, counter, tokenizer):
    n = counter(samples[0])
    assert n > len(tokenizer.encode(samples[0].output, add_special_tokens=False))  # prompt + eot included
    assert LengthFilter(LengthConfig(cutoff_len=n), counter).check(samples[0]) is None
    assert LengthFilter(LengthConfig(cutoff_len=n - 1), counter).check(samples[0]) is not None


# ------------------------------------------------------------------------------------ single filters


def test_truncated(samples):
    f = TruncatedFilter()
    clean = samples[0]
    assert f.check(clean) is None
    assert f.check(replace(clean, finish_reason="stop")) is None
    assert f.check(replace(clean, finish_reason="length")) == "finish_reason=length"
    assert "final" in f.check(replace(clean, has_final=False))


@pytest.mark.parametrize("marker", ["<|call|>", "<|start|>assistant to=python<|channel|>analysis",
                                    "<|channel|>commentary to=functions.get_weather json",
                                    "\nto=browser.search {\"q\": 1}", " to=container.exec"])
def test_tool_call_markers_in_text(samples, marker):
    f = ToolCallFilter()
    assert f.check(samples[0]) is None
    bad = replace(samples[0], output=samples[0].output + marker)
    assert f.check(bad) is not None
    assert f.check(replace(bad, has_tool_call=False)) is None  # the flag, when present, decides
    assert f.check(replace(samples[0], has_tool_call=True)) == "has_tool_call flag"


def test_tool_call_ignores_ordinary_text():
    assert ToolCallFilter().check(_item(_think("Set x to=5, then send it to python."))) is None


@pytest.mark.parametrize("output,why", [
    ("Reasoning\n</think>\n\nfinal", "start"),
    ("<think>\nreasoning, no close", "0 </think>"),
    ("<think>\na\n</think>\nb\n</think>\n\nc", "2 </think>"),
    ("<think>\n \n</think>\n\nfinal", "empty reasoning"),
    ("<think>\nreasoning\n</think>\n\n  \n", "empty final"),
])
def test_structure(samples, output, why):
    f = StructureFilter()
    assert f.check(samples[0]) is None
    assert why in f.check(_item(output))


# -------------------------------------------------------------------------------------- repetition

_PARA = "This paragraph explains the same idea in detail, and it is long enough."
_SENT = "We carefully check the sum once more here"
CRAFTED = {
    "regex": _think(_words(40, 1) + " " + "abcdefghij-klmnopqrst-" * 5 + " " + _words(40, 2)),
    "paragraph": _think("\n\n".join([_words(30, 3), _PARA, _words(30, 4), _PARA, _words(30, 5), _PARA, "End."])),
    "sentence": _think(" ".join(f"{_words(12, i)}. {_SENT}." for i in range(5))),
    "ngram": _think(" ".join(f"{_words(40, 7)} {_words(1, i)}" for i in range(6))),
    "tail": _think(_words(150, 8) + "\n" + "\n".join(f"Step {i % 7}: wait" for i in range(300)),
                   final="x"),
}


def test_crafted_texts_pass_structure():
    for text in CRAFTED.values():
        assert StructureFilter().check(_item(text)) is None


@pytest.mark.parametrize("rule", REPETITION_RULES)
def test_each_repetition_rule_fires_alone(rule):
    text = CRAFTED[rule]
    fired = {r for r in REPETITION_RULES
             if RepetitionFilter(RepetitionConfig(rules=[r])).check(_item(text)) is not None}
    assert rule in fired
    if rule != "tail":  # a compressible tail is also a repeated unit / sentence, by nature
        assert fired == {rule}
    detail = RepetitionFilter().check(_item(text))
    assert detail is not None and detail.split(":")[0] in fired


def test_repetition_rules_pass_samples(samples):
    f = RepetitionFilter()
    assert all(f.check(x) is None for x in samples)


def test_thresholds_change_the_outcome():
    text = _item(CRAFTED["ngram"])
    assert RepetitionFilter().check(text).startswith("ngram:")
    assert RepetitionFilter(RepetitionConfig(ngram_max_dup_fraction=0.9)).check(text) is None
    assert RepetitionFilter(RepetitionConfig(ngram_n=30)).check(text) is None
    para = _item(CRAFTED["paragraph"])
    assert RepetitionFilter(RepetitionConfig(paragraph_min_count=4)).check(para) is None
    reg = _item(CRAFTED["regex"])
    assert RepetitionFilter(RepetitionConfig(rules=["regex"], regex_min_repeats=6)).check(reg) is None
    assert RepetitionFilter(RepetitionConfig(rules=["regex"], regex_min_unit=23)).check(reg) is None
    assert RepetitionFilter(RepetitionConfig(rules=["tail"], tail_max_ratio=0.01)).check(_item(CRAFTED["tail"])) is None
    with pytest.raises(ValueError, match="unknown repetition rules"):
        RepetitionFilter(RepetitionConfig(rules=["regex", "bogus"]))


def test_tandem_repeat_matches_the_spec_regex():
    pattern = re.compile(r"(.{20,}?)\1{4,}", re.DOTALL)
    rng = random.Random(0)
    for _ in range(1500):
        alpha = rng.choice(["a", "ab", "abc", "ab \n"])
        unit = "".join(rng.choice(alpha) for _ in range(rng.randint(1, 40)))
        text = "".join(rng.choice(alpha) for _ in range(rng.randint(0, 30))) + unit * rng.randint(1, 7)
        if rng.random() < 0.5:
            i = rng.randrange(len(text))
            text = text[:i] + "Z" + text[i + 1:]
        text += "".join(rng.choice(alpha) for _ in range(rng.randint(0, 30)))
        hit = find_tandem_repeat(text)
        assert (hit is not None) == (pattern.search(text) is not None), text
        if hit:
            start, p = hit
            assert text[start:start + 5 * p] == text[start:start + p] * 5 and p >= 20


def test_tandem_repeat_runs_on_200k_char_texts():
    """No timing assert: the implementation has no backtracking; this only shows it completes."""
    rng = random.Random(1)
    random_text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz \n.") for _ in range(200_000))
    assert find_tandem_repeat(random_text) is None
    assert find_tandem_repeat("The same sentence again and again. " * 6000) == (0, 35)
    groups = []  # adversarial: every unit repeated 4 times (one short of the threshold), then a break
    while sum(map(len, groups)) < 200_000:
        u = "".join(rng.choice("ab") for _ in range(rng.randint(20, 60)))
        groups.append(u * 4 + rng.choice("XYZ"))
    near = "".join(groups)
    assert find_tandem_repeat(near) is None
    assert find_tandem_repeat(near, min_repeats=4) is not None
    assert find_tandem_repeat(random_text, max_unit=25) is None


# ------------------------------------------------------------------------------------ order, report


def test_order_decides_which_filter_counts():
    both = _item("no think tags" + " <|call|>", uuid="both")  # fails tool_call and structure
    default = FilterConfig()
    _, rep = apply_filters([both], build_filters(default))
    assert rep.stats["tool_call"].dropped == 1 and rep.stats["structure"].dropped == 0
    swapped = FilterConfig(order=["truncated", "structure", "tool_call", "length", "repetition"])
    _, rep = apply_filters([both], build_filters(swapped))
    assert rep.stats["structure"].dropped == 1 and rep.stats["tool_call"].dropped == 0
    assert rep.stats["tool_call"].checked == 0


def test_disabled_filters_and_bad_order():
    cfg = FilterConfig.from_dict({"tool_call": {"enabled": False}, "length": {"enabled": False}})
    assert [f.name for f in build_filters(cfg)] == ["truncated", "structure", "repetition"]
    with pytest.raises(ValueError, match="unknown or repeated"):
        build_filters(FilterConfig(order=["truncated", "nope"]))
    with pytest.raises(TypeError):
        FilterConfig.from_dict({"bogus": 1})
    assert FilterConfig.from_dict(FilterConfig().to_dict()) == FilterConfig()


def test_report_counts_add_up_and_examples_are_capped(samples):
    bad = [replace(s, uuid=f"trunc-{i}", finish_reason="length") for i, s in enumerate(samples[:7])]
    bad += [_item(CRAFTED[r], uuid=f"rep-{r}") for r in REPETITION_RULES]
    bad += [_item("no tags", uuid="struct")]
    items = list(samples[7:50]) + bad
    kept, rep = apply_filters(items, build_filters(FilterConfig(length=LengthConfig(enabled=False))),
                              max_examples=3)
    assert rep.total == len(items) == rep.kept + rep.dropped
    assert rep.kept == len(kept) == 43
    assert rep.stats["truncated"].dropped == 7 and len(rep.stats["truncated"].examples) == 3
    assert rep.stats["structure"].dropped == 1 and rep.stats["repetition"].dropped == 5
    assert sum(rep.stats["repetition"].subrules.values()) == 5
    assert rep.stats["truncated"].checked == len(items)
    summary = json.loads(json.dumps(rep.summary()))
    assert summary["total"] == summary["kept"] + sum(f["dropped"] for f in summary["filters"].values())
    assert summary["filters"]["repetition"]["subrules"] == dict(rep.stats["repetition"].subrules)
    rows = rep.table_rows()
    assert len(rows) == 3 + 1 + 3 and all(len(r) == 3 for r in rows)
    assert rows[0][:2] == ["truncated", "trunc-0"]


def test_from_row_reads_generate_fields():
    row = {"uuid": "x", "input": "q", "output": _think("r"), "domain": "math", "meta": "{}",
           "finish_reason": "length", "has_tool_call": False, "has_analysis": True, "has_final": True,
           "token_ids": [1, 2]}
    x = FilterInput.from_row(row)
    assert (x.finish_reason, x.has_tool_call, x.has_final, x.input) == ("length", False, True, "q")
    assert TruncatedFilter().check(x) == "finish_reason=length"
