"""The continue phase of a revision round with a stand-in teacher: each continuation's token budget is bounded by
the room its prefix leaves under cutoff_len, prefixes without room are dropped and counted, and an unfinished
continuation is dropped by the curation ``truncated`` filter under its own reason; and a whole round with
stand-in engines, whose records and phase reuse do not depend on ``batch_size``."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dasd.data.filters import FilterInput, TruncatedConfig, TruncatedFilter
from dasd.data.template import ChatTemplater
from dasd.generation.engine import Sample
from dasd.mixed import revise
from dasd.mixed import round as round_mod
from dasd.mixed.revise import continuation_budget, run_continue
from dasd.mixed.spec import RoundSpec
from dasd.models.student import asset_path, load_tokenizer
from dasd.utils.io import write_jsonl

SYSTEM = "You are a helpful assistant."
SHORT = "<think>\nLet me add. Two and two. That is four."
LONG = ("<think>\nLet me add the numbers one at a time. First two. Then two more. The sum grows. "
        "Now count again to be sure of it. Still four. Fine, done counting here and going on and on")
CONTINUATION = " So it is 4.\n</think>\n\nThe answer is \\boxed{4}."


class StandInTeacher:
    """An engine that records its requests; a continuation ends on its own except for the uuids in ``cut_off``."""

    model_name = "stand-in-teacher"

    def __init__(self, tokenizer, cut_off: set[str], order: list[str]) -> None:
        self.tokenizer, self.cut_off, self.order, self.requests = tokenizer, cut_off, order, []

    def generate(self, requests, sampling):
        out = []
        for r in requests:
            uuid = self.order[len(self.requests)]
            self.requests.append((uuid, r))
            ids = self.tokenizer.encode(CONTINUATION, add_special_tokens=False)
            reason = "length" if uuid in self.cut_off else "stop"
            out.append([Sample(text=CONTINUATION, token_ids=ids, logprobs=[0.0] * len(ids), finish_reason=reason,
                               prompt_token_ids=list(r.prompt_token_ids), logprob_mode="raw")])
        return out

    def close(self) -> None:
        pass


def test_budget_is_the_room_left_under_cutoff_len():
    assert continuation_budget(64, None, 10_000) == 64  # no cutoff: the configured budget
    assert continuation_budget(64, 100, 20) == 64  # room 79
    assert continuation_budget(64, 100, 50) == 49  # room: 100 - 50 - 1 (end-of-turn)
    assert continuation_budget(64, 100, 99) == 0 and continuation_budget(64, 100, 150) < 1  # no room


def test_unfinished_is_the_truncated_filter_under_its_own_name():
    plain = TruncatedFilter(TruncatedConfig(require_final=False), name="continuation_unfinished")
    harmony = TruncatedFilter(TruncatedConfig(require_final=True), name="continuation_unfinished")
    assert plain.name == harmony.name == "continuation_unfinished" and TruncatedFilter().name == "truncated"
    cut_off, no_final = FilterInput("a", "x", finish_reason="length"), FilterInput("b", "x", finish_reason="stop",
                                                                                  has_final=False)
    assert plain.check(cut_off) and harmony.check(cut_off)
    assert plain.check(no_final) is None and harmony.check(no_final)  # harmony: finished = stop + a final answer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(asset_path("tiny_qwen3"))


def _round(tmp_path, tok, cutoff_len: int | None, max_tokens: int = 64):
    """A round folder with 3 short and 3 long truncated rollouts (and one that stopped on its own)."""
    questions, rollouts = [], []
    for i in range(7):
        q = {"uuid": f"q{i}", "input": f"What is 2 + 2? (variant {'x' * i})", "domain": "math", "meta": "{}",
             "response_tokens": 40, "reference": "4"}
        text = LONG if i >= 3 else SHORT
        ids = tok.encode(text, add_special_tokens=False)
        rollouts.append({"uuid": q["uuid"], "teacher_tokens": 40, "cap": len(ids), "lead": "", "length": len(ids),
                         "finish_reason": "stop" if i == 6 else "length", "seed": i, "text": text, "token_ids": ids})
        questions.append(q)
    spec = {"round": 1, "seed": 3, "cap_factor": 1.5, "batch_size": 4, "cutoff_len": cutoff_len,
            "student": {"model": asset_path("tiny_qwen3"), "fingerprint": "dir:test", "engine": "hf",
                        "engine_args": {}, "temperature": 1.0, "top_p": 1.0, "system_prompt": SYSTEM,
                        "end_of_turn": "auto"},
            "teacher": {"model": "stand-in", "format": "plain", "engine": "hf", "engine_args": {},
                        "system_prompt": None, "chat_template_kwargs": {}, "temperature": 1.0, "top_p": 1.0,
                        "max_tokens": max_tokens},
            "cut": {"snap_to_sentence": True, "min_chars": 3}, "filters": None, "require_finished": True,
            "require_correct": False}
    write_jsonl(tmp_path / "questions.jsonl", questions)
    write_jsonl(tmp_path / "rollouts.jsonl", rollouts)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return RoundSpec.from_json(spec), questions


@pytest.mark.parametrize("cutoff", ["none", "tight"])
def test_teacher_budget_and_prefixes_without_room(tmp_path, tok, monkeypatch, cutoff):
    templater = ChatTemplater(tok, system_prompt=SYSTEM)
    prompt_len = {f"q{i}": len(templater.generation_prompt_ids(f"What is 2 + 2? (variant {'x' * i})")[0])
                  for i in range(7)}
    short, long = len(tok.encode(SHORT, add_special_tokens=False)), len(tok.encode(LONG, add_special_tokens=False))
    # tight: every short prefix (cut < `short` tokens) has room, no long one (cut >= ceil(long / 2)) has any
    cutoff_len = None if cutoff == "none" else max(prompt_len.values()) + short + 4
    assert cutoff_len is None or cutoff_len <= min(prompt_len.values()) + -(-long // 2)
    spec, questions = _round(tmp_path, tok, cutoff_len)
    engine = {}

    def build(kind, model, args=None):
        order = [f"q{i}" for i in range(6) if cutoff == "none" or i < 3]
        engine["teacher"] = StandInTeacher(tok, cut_off={"q1"}, order=order)
        return engine["teacher"]

    monkeypatch.setattr(revise, "build_engine", build)
    info = run_continue(spec, tmp_path)
    records = [json.loads(x) for x in (tmp_path / "mixed.jsonl").read_text().splitlines()]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert info["truncated"] == 6  # q6 stopped on its own
    assert info["continued"] + sum(info["skipped"].values()) == 6  # nothing dropped without a count
    assert stats["skipped"] == info["skipped"] and stats["continued"] == info["continued"]
    if cutoff == "none":
        assert info["skipped"]["prefix_too_long"] == 0 and info["continued"] == 6
        assert all(r.max_tokens == 64 for _, r in engine["teacher"].requests)
    else:
        assert info["skipped"]["prefix_too_long"] == 3 and info["continued"] == 3
        assert {x["uuid"] for x in info["skipped_examples"]["prefix_too_long"]} == {"q3", "q4", "q5"}
    # every request's budget is min(max_tokens, cutoff_len - prompt - prefix - 1), in student tokens
    by_uuid = {json.loads(r["meta"])["source_uuid"]: json.loads(r["meta"]) for r in records}
    for uuid, request in engine["teacher"].requests:
        if uuid in by_uuid:
            room = None if cutoff_len is None else cutoff_len - prompt_len[uuid] - by_uuid[uuid]["cut"]["index"] - 1
            assert request.max_tokens == by_uuid[uuid]["continuation_budget"] == (64 if room is None else min(64, room))
            assert request.max_tokens >= 1
    # q1's continuation hit its budget: dropped (and counted) by the truncated filter, as continuation_unfinished
    assert "q1" not in by_uuid and info["filters"]["filters"]["continuation_unfinished"]["dropped"] == 1
    assert info["kept"] == len(records) == info["continued"] - 1


class StandInEngine:
    """Student: every rollout runs out of its budget (LONG); teacher: every continuation ends on its own.
    Records the batches it is sent (each request's seed)."""

    model_name = "stand-in"

    def __init__(self, tokenizer, student: bool, batches: list) -> None:
        self.tokenizer, self.student, self.batches = tokenizer, student, batches

    def generate(self, requests, sampling):
        self.batches.append(("student" if self.student else "teacher", [r.seed for r in requests]))
        text, reason = (LONG, "length") if self.student else (CONTINUATION, "stop")
        out = []
        for r in requests:
            ids = self.tokenizer.encode(text, add_special_tokens=False)[:r.max_tokens]
            out.append([Sample(text=self.tokenizer.decode(ids), token_ids=ids, logprobs=[0.0] * len(ids),
                               finish_reason=reason, prompt_token_ids=list(r.prompt_token_ids),
                               logprob_mode="raw")])
        return out

    def close(self) -> None:
        pass


def test_batch_size_changes_neither_the_round_nor_its_reuse(tmp_path, tok, monkeypatch):
    """``mixed.batch_size`` only sets how many requests go to the engine at once: each request keeps its seed,
    so the round's records (uuids included) are the same at any batch size, and a finished phase is kept when
    only the batch size changes (a resume may change it: the training hash ignores it)."""
    batches = []
    monkeypatch.setattr(revise, "build_engine", lambda kind, model, args=None: StandInEngine(
        tok, student=model == asset_path("tiny_qwen3"), batches=batches))
    monkeypatch.setattr(round_mod, "plot_round", lambda stats, path: None)
    (tmp_path / "setup").mkdir()
    spec, questions = _round(tmp_path / "setup", tok, cutoff_len=None)
    questions = questions[:5]

    def run(folder, batch_size):
        batches.clear()
        round_mod.run_round(folder, questions, dataclasses.replace(spec, batch_size=batch_size), transport="inprocess")
        return (folder / "mixed.jsonl").read_text(), list(batches)

    records4, sent4 = run(tmp_path / "a", 4)
    records2, sent2 = run(tmp_path / "b", 2)
    assert [len(b) for _, b in sent4] == [4, 1, 4, 1] and [len(b) for _, b in sent2] == [2, 2, 1, 2, 2, 1]
    for role in ("student", "teacher"):  # the same requests with the same seeds, in other batches
        assert [s for r, b in sent4 if r == role for s in b] == [s for r, b in sent2 if r == role for s in b]
    assert records4 == records2 and len(records4.splitlines()) == 5
    assert run(tmp_path / "a", 16) == (records4, [])  # both phases kept: no engine is sent anything
    assert json.loads((tmp_path / "a" / "spec.json").read_text())["batch_size"] == 16


def test_round_spec_round_trips_through_json_and_names_bad_keys():
    """spec.json is ``to_json``; ``from_json`` gives the same spec back and the same hash; the hash ignores
    the batch size and follows every other setting; a missing or unknown key is an error that names it."""
    from dasd.mixed.round import build_spec

    settings = {"seed": 7, "cap_factor": 1.5, "batch_size": 4, "require_finished": True, "require_correct": False,
                "student": {"engine": "hf", "engine_args": {}, "temperature": 1.0, "top_p": 1.0},
                "teacher": {"model": "t", "format": "plain", "engine": "hf", "engine_args": {}, "system_prompt": None,
                            "chat_template_kwargs": {}, "temperature": 1.0, "top_p": 1.0, "max_tokens": 64},
                "cut": {"snap_to_sentence": True, "min_chars": 3}}
    spec = build_spec(settings, round_index=2, student_model="s", system_prompt=None, end_of_turn="auto",
                      filters=None, cutoff_len=128).with_questions("ab" * 32)
    data = json.loads(json.dumps(spec.to_json()))
    assert RoundSpec.from_json(data) == spec and RoundSpec.from_json(data).hash() == spec.hash()
    assert dataclasses.replace(spec, batch_size=64).hash() == spec.hash()
    assert dataclasses.replace(spec, seed=8).hash() != spec.hash()
    assert dataclasses.replace(spec, cut=dataclasses.replace(spec.cut, min_chars=4)).hash() != spec.hash()
    assert "questions_sha256" not in dataclasses.replace(spec, questions_sha256=None).to_json()
    with pytest.raises(ValueError, match=r"missing key\(s\) \['teacher.max_tokens'\]"):
        RoundSpec.from_json({**data, "teacher": {k: v for k, v in data["teacher"].items() if k != "max_tokens"}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        RoundSpec.from_json({**data, "colour": "red"})
