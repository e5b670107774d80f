"""The CPU-scale reasoning world (dasd.world): problems, strategies, weak style, splits, records."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from dasd.data.records import read_records
from dasd.eval.tasks import load_task
from dasd.text.grading import grade
from dasd.world.generator import (
    DEFAULT_WEIGHTS,
    FAMILIES,
    STRATEGIES,
    check_solution,
    generate_problem,
    is_heldout,
    make_records,
    record_problem,
    solve,
    step_lines,
    write_jsonl,
)


def _problems(n: int, seed: int = 0, difficulties=range(1, 7)):
    rng = random.Random(seed)
    return [generate_problem(rng, rng.choice(FAMILIES), rng.choice(list(difficulties))) for _ in range(n)]


def test_every_teacher_strategy_is_correct_and_checkable():
    for p in _problems(300):
        texts = set()
        for s in STRATEGIES[p.family]:
            response = solve(p, s)
            assert check_solution(p, response), (p, s, response)
            assert grade("exact", response, str(p.answer))
            assert response.startswith("<think>\n") and response.endswith(f"\\boxed{{{p.answer}}}")
            texts.add(response)
        assert len(texts) == len(STRATEGIES[p.family])  # the strategies differ in text, agree on the answer


def test_check_solution_rejects_wrong_steps_and_answers():
    p = generate_problem(random.Random(1), "seqsum", 3)
    good = solve(p, "running")
    first = step_lines(good)[0]
    lhs, rhs = first.rsplit("= ", 1)
    assert not check_solution(p, good.replace(first, f"{lhs}= {int(rhs) + 1}", 1))
    assert not check_solution(p, good.replace(f"\\boxed{{{p.answer}}}", f"\\boxed{{{p.answer + 1}}}"))
    c = generate_problem(random.Random(2), "count", 2)
    bad = solve(c, "list").replace(" is over ", " is under ")
    assert not check_solution(c, bad)


def test_strategy_frequencies_match_weights():
    records = make_records(3000, seed=3, style="teacher")
    counts = defaultdict(Counter)
    for r in records:
        m = json.loads(r["meta"])
        counts[m["family"]][m["strategy"]] += 1
    for family, weights in DEFAULT_WEIGHTS.items():
        if family not in FAMILIES:  # walk: not a default family (tests/test_world_walk.py)
            continue
        total = sum(counts[family].values())
        for s, w in weights.items():
            assert abs(counts[family][s] / total - w) < 0.03, (family, s, counts[family])
    # configurable
    custom = make_records(600, seed=3, families=["chain"], strategy_weights={"chain": {"rewrite": 1.0}})
    assert {json.loads(r["meta"])["strategy"] for r in custom} == {"rewrite"}


def test_difficulty_increases_step_lines():
    means = []
    for d in (1, 3, 5):
        records = make_records(300, seed=4, difficulty=d)
        means.append(sum(r["output"].count("\n") for r in records) / len(records))
    assert means[0] < means[1] < means[2], means
    for family in FAMILIES:
        easy = [generate_problem(random.Random(i), family, 1) for i in range(20)]
        hard = [generate_problem(random.Random(i), family, 5) for i in range(20)]
        for s in STRATEGIES[family]:
            lo = sum(solve(p, s).count("\n") for p in easy)
            hi = sum(solve(p, s).count("\n") for p in hard)
            assert hi >= lo, (family, s)


def test_weak_style_is_terse_and_mostly_wrong():
    records = make_records(3000, seed=5, style="weak")
    by_d = defaultdict(list)
    for r in records:
        m = json.loads(r["meta"])
        assert m["strategy"] == "weak" and "=" not in r["output"]
        by_d[m["difficulty"]].append(grade("exact", r["output"], m["answer"]))
    acc = {d: sum(v) / len(v) for d, v in by_d.items()}
    overall = sum(sum(v) for v in by_d.values()) / len(records)
    # measured (seed 5): d1 ~0.85, d2 ~0.25, d3 ~0.10, d4-5 0.0, overall ~0.24
    assert overall <= 0.40 and acc[1] >= 0.75 and acc[4] == acc[5] == 0.0, acc
    # deterministic given the rng, and the same without one
    p = generate_problem(random.Random(0), "chain", 3)
    assert solve(p, style="weak", rng=random.Random(7)) == solve(p, style="weak", rng=random.Random(7))
    assert solve(p, style="weak") == solve(p, style="weak")
    assert len(solve(p, style="weak")) < len(solve(p, "single"))


def test_splits_disjoint_deterministic_and_seeded():
    train = make_records(1500, seed=0, split="train")
    held = make_records(300, seed=0, split="heldout")
    assert make_records(1500, seed=0, split="train") == train
    assert make_records(300, seed=0, split="heldout") == held
    q_train = {r["input"] for r in train}
    q_held = [r["input"] for r in held]
    assert not q_train & set(q_held)
    assert len(set(q_held)) == len(q_held)  # held-out problems are distinct
    for r in held:
        assert is_heldout(record_problem(r))
    other = make_records(300, seed=1, split="heldout")
    assert {r["input"] for r in other} != set(q_held)
    assert len({r["uuid"] for r in train}) == len(train)


def test_records_load(tmp_path):
    held = make_records(200, seed=0, split="heldout")
    weak = make_records(50, seed=0, style="weak")
    write_jsonl(held, tmp_path / "heldout.jsonl")
    write_jsonl(weak, tmp_path / "weak.jsonl")
    records, report = read_records(tmp_path / "heldout.jsonl")
    assert report.kept == 200 and not report.skipped
    assert all(isinstance(getattr(r, f), str) for r in records for f in ("uuid", "input", "output", "domain", "meta"))
    read_records(tmp_path / "weak.jsonl")
    items, _ = load_task("records", tmp_path / "heldout.jsonl")
    assert len(items) == 200 and all(i.grader == "exact" for i in items)
    by_input = {r["input"]: r for r in held}
    for item in items:
        r = by_input[item.question]
        assert grade(item.grader, r["output"], item.reference)
        assert check_solution(record_problem(r), r["output"])


def test_bad_arguments():
    with pytest.raises(ValueError):
        generate_problem(random.Random(0), "nope", 1)
    with pytest.raises(ValueError):
        generate_problem(random.Random(0), "chain", 0)
    with pytest.raises(ValueError):
        solve(generate_problem(random.Random(0), "chain", 1), "running")
    with pytest.raises(ValueError):
        make_records(5, seed=0, strategy_weights={"chain": {"bogus": 1.0}})


def test_facts_are_true_one_step_equations_of_the_worlds_solutions():
    from dasd.text.grading import exact_answer
    from dasd.world.generator import _eval, fact_records

    records = fact_records(300, seed=3, difficulty=(1, 2))
    assert len(records) == 300 and len({r["uuid"] for r in records}) == 300
    for r in records:
        (line,) = step_lines(r["output"])
        lhs, rhs = line.split("=")
        assert _eval(lhs) == int(rhs) == int(exact_answer(r["output"])) == int(json.loads(r["meta"])["answer"])
        assert r["input"].startswith(f"What is {lhs.strip()}?")
    assert fact_records(20, seed=3, difficulty=(1, 2)) == records[:20]


def test_weak_correct_sets_the_weak_styles_accuracy():
    from dasd.text.grading import exact_answer

    def right(weak_correct):
        recs = make_records(1500, seed=4, difficulty=(1, 2), style="weak", weak_correct=weak_correct)
        return {d: sum(exact_answer(r["output"]) == json.loads(r["meta"])["answer"] for r in recs
                       if json.loads(r["meta"])["difficulty"] == d) /
                sum(json.loads(r["meta"])["difficulty"] == d for r in recs) for d in (1, 2)}

    default, low = right(None), right({1: 0.3})
    assert default[1] > 0.75 and 0.2 < low[1] < 0.4 and low[2] == 0.0


def test_teacher_and_student_tokenizers_differ_on_numbers(tmp_path):
    from transformers import AutoTokenizer

    from dasd.world.models import init_model, train_tokenizer

    texts = [r[f] for r in make_records(400, seed=0, difficulty=(1, 2)) for f in ("input", "output")]
    teacher = train_tokenizer(texts, 384, split_digits=True)
    student = train_tokenizer(texts, 640, split_digits=False)
    line = "38 + 22 = 60"
    t_pieces = teacher.convert_ids_to_tokens(teacher(line)["input_ids"])
    s_pieces = student.convert_ids_to_tokens(student(line)["input_ids"])
    assert all(len(p.lstrip("Ġ")) <= 1 for p in t_pieces)  # every digit its own token
    assert t_pieces != s_pieces and len(s_pieces) < len(t_pieces)
    for tok in (teacher, student):  # lossless, think tags single tokens, ChatML template
        assert tok.decode(tok(texts[1])["input_ids"]) == texts[1]
        assert len(tok("<think>")["input_ids"]) == 1
        chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
        assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    model = init_model(student, {"hidden_size": 64, "num_hidden_layers": 2}, seed=0)
    model.save_pretrained(tmp_path)
    student.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).get_vocab() == student.get_vocab()
    assert model.get_input_embeddings().num_embeddings == len(student)


def test_world_key_covers_every_setting_but_the_cache_root_and_the_measurement():
    from omegaconf import OmegaConf

    from dasd.recipes.world import model_key, world_dir, world_key, world_settings

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "world" / "default.yaml")
    key = world_key(cfg)
    assert world_key(OmegaConf.merge(cfg, {"root": "/elsewhere"})) == key
    assert world_key(OmegaConf.merge(cfg, {"teacher": {"epochs": 1}})) != key
    assert world_key(OmegaConf.merge(cfg, {"seed": 1})) != key
    assert world_key(OmegaConf.merge(cfg, {"eval": {"k": 16}})) == key  # re-measured, not rebuilt
    assert world_key(OmegaConf.merge(cfg, {"data": {"n_heldout": 60}})) != key
    assert world_dir(OmegaConf.merge(cfg, {"root": "/w"}), "/out") == Path("/w") / key
    assert world_dir(OmegaConf.merge(cfg, {"root": "rel"}), "/out").is_absolute()

    # trained models are cached by what their own training depends on
    def keys(change):
        s = world_settings(OmegaConf.merge(cfg, change))
        return model_key(s, "teacher"), model_key(s, "student")

    teacher, student = keys({})
    assert keys({"student": {"epochs": 9}}) == (teacher, keys({"student": {"epochs": 9}})[1])
    assert keys({"student": {"epochs": 9}})[1] != student
    assert keys({"data": {"n_student_facts": 5}})[0] == teacher
    assert keys({"weak_correct": {1: 0.9}})[0] == teacher
    assert keys({"teacher": {"weaker_epoch": 3}}) == (teacher, student)  # teacher_b: another checkpoint
    assert keys({"eval": {"k": 16}, "data": {"n_heldout": 60, "n_questions": 100}}) == (teacher, student)
    assert keys({"teacher": {"lr": 1e-3}}) == (keys({"teacher": {"lr": 1e-3}})[0], student)
    assert keys({"teacher": {"lr": 1e-3}})[0] != teacher
    t2, s2 = keys({"system_prompt": "Be brief."})
    assert t2 != teacher and s2 != student
    t3, s3 = keys({"seed": 5})
    assert t3 != teacher and s3 != student


def test_build_refuses_a_weaker_epoch_outside_the_run(tmp_path):
    from omegaconf import OmegaConf

    from dasd.recipes.world import build_world

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "world" / "default.yaml")
    for bad in (0, 8, 9):
        with pytest.raises(ValueError, match="weaker_epoch"):
            build_world(OmegaConf.merge(cfg, {"teacher": {"weaker_epoch": bad}}), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_hydra_quoting_of_child_overrides():
    """What a child process is given is read back exactly by Hydra: commas, spaces, quotes, and backslashes
    anywhere (a prompt asking for \\boxed{}, a path ending in one, one before a quote)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dasd.utils.child import hydra_literal

    parser = OverridesParser.create()
    for value in ("You are Qwen, created by Alibaba Cloud.", "it's ${x} a\\b", "/a b/c",
                  "Put the answer in \\boxed{}.", "C:\\runs\\", "x\\'y", "x\\\\"):
        (ov,) = parser.parse_overrides([f"data.system_prompt={hydra_literal(value)}"])
        assert ov.value() == value
    assert hydra_literal(None) == "null"
