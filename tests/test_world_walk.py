"""The walk family of the reasoning world (dasd.world.walk, docs/world.md): long labelled chains whose teacher
solutions are right, whose teacher habit (a short restate line) is rare, and whose student style restates
every step and slips."""

import json
import random
import re
from collections import defaultdict

import pytest

from dasd.text.grading import grade
from dasd.world.generator import check_solution, fact_records, make_records, record_problem, solve
from dasd.world.walk import HIGH, LOW, WalkSettings, walk_params

DIFFS = (1, 8)


def _meta(r: dict) -> dict:
    return json.loads(r["meta"])


def _think(r: dict) -> list[str]:
    return r["output"].split("</think>")[0].removeprefix("<think>\n").splitlines()


def test_moves_grow_with_difficulty_and_values_stay_two_digit():
    s = WalkSettings()
    rng = random.Random(0)
    for d in range(1, 9):
        for _ in range(200):
            p = walk_params(rng, d, s)
            assert len(p["moves"]) == 2 + 2 * d and all(1 <= abs(m) <= 9 for m in p["moves"])
            value = p["start"]
            for m in p["moves"]:
                value += m
                assert LOW <= value <= HIGH
    with pytest.raises(ValueError, match="difficulty 13 gives 28 moves"):
        s.moves(13)
    with pytest.raises(ValueError, match=r"walk.slip=1.5"):
        WalkSettings(slip=1.5)
    with pytest.raises(ValueError, match="unknown settings"):
        WalkSettings.from_dict({"slips": 0.1})


def test_teacher_solutions_are_right_with_rare_restates_and_caught_slips():
    s = WalkSettings(restate=0.15, fix=0.2)
    records = make_records(600, seed=1, families=["walk"], difficulty=DIFFS, walk=s)
    steps = restates = fixes = 0
    by_strategy = defaultdict(int)
    for r in records:
        m = _meta(r)
        by_strategy[m["strategy"]] += 1
        assert check_solution(record_problem(r), r["output"]), r["output"]
        assert grade("exact", r["output"], m["answer"])
        lines = _think(r)
        labels = [ln.split(":")[0] for ln in lines if re.match(r"^[a-z]: ", ln)]
        assert labels == [chr(ord("a") + i) for i in range(len(labels))]  # one labelled line a move
        steps += len(labels)
        restates += sum(ln.startswith("so ") for ln in lines)
        for i, ln in enumerate(lines):
            if ln.startswith("no, "):  # a caught slip: "so X+1" then "no, X", X the step's result
                fixes += 1
                assert lines[i - 1] == f"so {int(ln[4:]) + 1}" and lines[i - 2].endswith(f"= {ln[4:]}")
    assert 0.12 < restates / steps < 0.18 and fixes > 0
    assert 0.15 < by_strategy["check"] / len(records) < 0.25 and set(by_strategy) == {"step", "check"}


def test_weak_style_restates_every_step_and_slips_uncorrected():
    """The student's own style: unlabelled steps, a restate after each, a slip one too high with probability
    ``slip`` that is never undone, so it is right only without a slip: (1 - slip)^moves."""
    s = WalkSettings(slip=0.15)
    records = make_records(3000, seed=2, families=["walk"], difficulty=DIFFS, style="weak", walk=s)
    right = defaultdict(list)
    for r in records:
        lines = _think(r)
        assert not any(re.match(r"^[a-z]+: ", ln) for ln in lines)
        assert [ln.startswith("so ") for ln in lines] == [False, True] * (len(lines) // 2)
        for step, restate in zip(lines[::2], lines[1::2], strict=True):
            result = int(step.rsplit("= ", 1)[1])
            assert int(restate[3:]) in (result, result + 1)
        right[_meta(r)["difficulty"]].append(grade("exact", r["output"], _meta(r)["answer"]))
    for d, values in right.items():
        expected = (1 - s.slip) ** (2 + 2 * d)
        assert abs(sum(values) / len(values) - expected) < 0.08, (d, sum(values) / len(values), expected)
    overall = sum(sum(v) for v in right.values()) / len(records)
    assert overall < 0.3


def test_question_and_answer_share_the_label_token():
    """Each move's line in the question starts with its label as the answer's step line does, so the
    teacher's tokenizer gives the label the same token in both (finding a move is a lookup)."""
    from dasd.world.models import train_tokenizer

    records = make_records(200, seed=3, families=["walk"], difficulty=DIFFS)
    tok = train_tokenizer([r[f] for r in records for f in ("input", "output")], 384, split_digits=True)
    r = records[0]
    q_ids, a_ids = tok(r["input"])["input_ids"], tok(r["output"])["input_ids"]
    newline = tok("\n")["input_ids"]
    after_newline = lambda ids: {ids[i + 1] for i in range(len(ids) - 1) if [ids[i]] == newline}  # noqa: E731
    labels = {tok(c)["input_ids"][0] for c in "abcd"}
    assert labels <= after_newline(q_ids) and labels <= after_newline(a_ids)


def test_walk_records_are_deterministic_and_facts_are_walk_steps():
    a = make_records(50, seed=4, families=["walk"], difficulty=DIFFS)
    assert a == make_records(50, seed=4, families=["walk"], difficulty=DIFFS)
    assert solve(record_problem(a[0]), "step") == solve(record_problem(a[0]), "step")
    facts = fact_records(200, seed=4, families=["walk"], difficulty=DIFFS)
    sums = lookups = 0
    for f in facts:
        answer = _meta(f)["answer"]
        assert grade("exact", f["output"], answer)
        if m := re.fullmatch(r"What is (\d+) ([+-]) (\d)\? Put the final answer in \\boxed\{\}\.", f["input"]):
            a_, op, b_ = m.groups()
            value = int(a_) + int(b_) if op == "+" else int(a_) - int(b_)
            assert answer == str(value) and LOW <= value <= HIGH
            sums += 1
        else:  # a move lookup: the moves, then "What is move c?" answered by the move's own line
            label = re.search(r"What is move ([a-z])\?", f["input"]).group(1)
            line = next(ln for ln in f["input"].splitlines() if ln.startswith(f"{label} "))
            assert _think(f) == [line] and int(line.split()[1]) == int(answer)
            lookups += 1
    assert sums > 50 and lookups > 50


def test_turns_rule_alternates_two_moves_and_stays_in_range():
    """rule=turns (the default world's): two moves, one up and one down, taken in turns; the question states
    them once with the number of steps, so no step needs a lookup; values stay two-digit."""
    s = WalkSettings(rule="turns")
    rng = random.Random(5)
    for d in range(1, 9):
        for _ in range(300):
            p = walk_params(rng, d, s)
            moves = p["moves"]
            assert len(moves) == 2 + 2 * d and moves[0] * moves[1] < 0 and abs(abs(moves[0]) - abs(moves[1])) <= 2
            assert all(m == moves[i % 2] for i, m in enumerate(moves))
            value = p["start"]
            for m in moves:
                value += m
                assert LOW <= value <= HIGH
    r = make_records(1, seed=6, families=["walk"], difficulty=3, walk=s)[0]
    p = record_problem(r)
    a, b = p.params["moves"][:2]
    assert r["input"].startswith(f"Start at {p.params['start']}.\nMoves in turns: {a:+d}, {b:+d}.\nSteps a to h.")
    assert check_solution(p, r["output"]) and not any("What is move" in f["input"] for f in
                                                       fact_records(50, seed=6, families=["walk"], walk=s))
    with pytest.raises(ValueError, match="walk.rule='spiral'"):
        WalkSettings(rule="spiral")
