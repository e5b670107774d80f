"""Evaluation tasks (AIME, GPQA-Diamond, records) read from local files, and the graders."""

from __future__ import annotations

import csv
import json
import re

import pytest

from dasd.eval.tasks import MATH_INSTRUCTION, TASKS, EvalItem, TaskError, load_task
from dasd.text.grading import choice_letter, exact_answer, grade

GPQA_COLUMNS = ["Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                "Incorrect Answer 3", "High-level domain"]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path, columns, rows):
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)
    return path


def gpqa_rows(n=6):
    return [[f"rec{i}", f"Question {i}?\nSecond line.", f"right {i}", f"wrong {i}a", f"wrong {i}b", f"wrong {i}c",
             "Physics"] for i in range(n)]


def option_lines(item):
    return dict(re.findall(r"^([ABCD])\) (.*)$", item.question, re.M))


# ---------------------------------------------------------------- AIME


def test_tasks_listed():
    assert TASKS == ("aime24", "aime25", "gpqa_diamond", "records")


def test_aime_jsonl_json_and_csv_read_the_same(tmp_path):
    """The three formats give the same items: math grader, instruction appended, ids from the id field."""
    rows = [{"id": 60, "problem": "Find $x$.", "answer": "204"}, {"id": 61, "problem": "Find $y$.", "answer": 33}]
    jsonl = write_jsonl(tmp_path / "a.jsonl", [rows[0], "", rows[1]])
    js = tmp_path / "a.json"
    js.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    cs = write_csv(tmp_path / "a.csv", ["ID", "Problem", "Answer"], [[60, "Find $x$.", "204"], [61, "Find $y$.", "33"]])
    results = [load_task("aime24", str(p)) for p in (jsonl, js, cs)]
    for items, report in results:
        assert [i.id for i in items] == ["aime24/60", "aime24/61"]
        assert [i.reference for i in items] == ["204", "33"]
        assert all(i.grader == "math" and isinstance(i, EvalItem) for i in items)
        assert items[0].question == "Find $x$.\n\n" + MATH_INSTRUCTION
        assert MATH_INSTRUCTION == "Please reason step by step, and put your final answer within \\boxed{}."
        assert (report["read"], report["skipped"], report["skips"]) == (2, 0, [])
    assert results[0][0][1].meta["source"] == f"{jsonl}:3"
    assert results[1][0][1].meta["source"] == f"{js}:7 (item 2)"
    assert results[2][0][1].meta["source"] == f"{cs}:row 2 (line 3)"


def test_aime_without_ids_uses_rows_and_question_alias(tmp_path):
    path = write_jsonl(tmp_path / "aime25.jsonl", [{"question": "Q1", "answer": "1"}, {"question": "Q2", "answer": "2"}])
    items, _ = load_task("aime25", str(path))
    assert [i.id for i in items] == ["aime25/row1", "aime25/row2"]


def test_limit_takes_first_items(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"problem": f"Q{i}", "answer": str(i)} for i in range(5)])
    items, report = load_task("aime24", str(path), limit=2)
    assert [i.reference for i in items] == ["0", "1"] and report["read"] == 5 and report["items"] == 2


def test_errors_name_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"problem": "Q", "answer": "1"}, {"problem": "Q2"}])
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: field 'answer | Answer': missing")):
        load_task("aime24", str(path))
    bad_json = write_jsonl(tmp_path / "b.jsonl", [{"problem": "Q", "answer": "1"}, "{not json"])
    with pytest.raises(TaskError, match=re.escape(f"{bad_json}:2: field '<json>'")):
        load_task("aime24", str(bad_json))
    cs = write_csv(tmp_path / "a.csv", ["Problem", "Answer"], [["Q1", "1"], ["multi\nline", "2"], ["Q3", ""]])
    with pytest.raises(ValueError, match=re.escape(f"{cs}:row 3 (line 5): field 'answer | Answer': empty")):
        load_task("aime24", str(cs))
    no_col = write_csv(tmp_path / "c.csv", ["Problem", "Solution"], [["Q", "S"]])
    with pytest.raises(ValueError, match=re.escape(f"{no_col}:1: field 'answer | Answer': missing column")):
        load_task("aime24", str(no_col), on_error="skip")  # a missing column is never skippable


def test_skip_mode_counts_every_skip(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"problem": "Q1", "answer": "1"}, {"problem": "Q2"}, "[1, 2",
                                              {"problem": "Q4", "answer": True}, {"problem": "Q5", "answer": "5"}])
    items, report = load_task("aime24", str(path), on_error="skip")
    assert [i.reference for i in items] == ["1", "5"]
    assert report["read"] == 5 and report["skipped"] == 3
    assert [(s["line"], s["field"]) for s in report["skips"]] == [(2, "answer | Answer"), (3, "<json>"),
                                                                   (4, "answer")]
    assert all(str(path) in s["message"] for s in report["skips"])


def test_empty_file_duplicates_and_all_skipped_raise(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty file"):
        load_task("aime24", str(empty), on_error="skip")
    dup = write_jsonl(tmp_path / "d.jsonl", [{"id": 1, "problem": "Q", "answer": "1"},
                                             {"id": 1, "problem": "Q'", "answer": "2"}])
    with pytest.raises(ValueError, match=re.escape(f"{dup}:2: field 'id': duplicate id 'aime24/1'")):
        load_task("aime24", str(dup), on_error="skip")
    bad = write_jsonl(tmp_path / "b.jsonl", [{"problem": "Q"}])
    with pytest.raises(ValueError, match="all 1 aime24 items were skipped"):
        load_task("aime24", str(bad), on_error="skip")
    with pytest.raises(ValueError, match="unknown task"):
        load_task("aime26", str(bad))
    with pytest.raises(FileNotFoundError):
        load_task("aime24", str(tmp_path / "missing.jsonl"))


# ---------------------------------------------------------------- GPQA


def test_gpqa_official_csv_correct_letter_points_at_correct_answer(tmp_path):
    path = write_csv(tmp_path / "gpqa_diamond.csv", GPQA_COLUMNS, gpqa_rows())
    items, report = load_task("gpqa_diamond", str(path), seed=0)
    assert report["read"] == 6 and len(items) == 6
    for i, item in enumerate(items):
        assert item.id == f"gpqa_diamond/rec{i}" and item.grader == "choice"
        assert item.question.startswith(f"Question {i}?\nSecond line.\n\nA) ")
        opts = option_lines(item)
        assert sorted(opts) == ["A", "B", "C", "D"]
        assert opts[item.reference] == f"right {i}"
        assert item.meta["options"] == [opts[k] for k in "ABCD"]
        assert [f"right {i}", f"wrong {i}a", f"wrong {i}b", f"wrong {i}c"][item.meta["order"][0]] == opts["A"]
        assert "Answer: X" in item.question and "\\boxed{}" in item.question
    assert items[2].meta["source"] == f"{path}:row 3 (line 6)"  # each question spans two lines


def test_gpqa_shuffle_deterministic_per_seed_and_id_not_file_order(tmp_path):
    rows = gpqa_rows(8)
    a = write_csv(tmp_path / "a.csv", GPQA_COLUMNS, rows)
    b = write_csv(tmp_path / "b.csv", GPQA_COLUMNS, list(reversed(rows[2:])))  # other order, fewer questions
    items_a, _ = load_task("gpqa_diamond", str(a), seed=3)
    again, _ = load_task("gpqa_diamond", str(a), seed=3)
    items_b, _ = load_task("gpqa_diamond", str(b), seed=3)
    by_id = {i.id: i for i in items_b}
    assert [i.question for i in items_a] == [i.question for i in again]
    for item in items_a[2:]:
        assert by_id[item.id].question == item.question and by_id[item.id].reference == item.reference
    other, _ = load_task("gpqa_diamond", str(a), seed=4)
    assert any(x.meta["order"] != y.meta["order"] for x, y in zip(items_a, other, strict=True))
    assert len({tuple(i.meta["order"]) for i in items_a}) > 1  # not one order for every question


def test_gpqa_jsonl_and_errors(tmp_path):
    good = {"id": "q1", "question": "Which?", "correct_answer": "yes", "incorrect_answers": ["no", "maybe", "never"]}
    path = write_jsonl(tmp_path / "g.jsonl", [good, {**good, "id": "q2", "incorrect_answers": ["no", "maybe"]}])
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: field 'incorrect_answers'")):
        load_task("gpqa_diamond", str(path))
    items, report = load_task("gpqa_diamond", str(path), on_error="skip")
    assert [i.id for i in items] == ["gpqa_diamond/q1"] and report["skipped"] == 1
    assert option_lines(items[0])[items[0].reference] == "yes"
    rows = gpqa_rows(2)
    rows[1][3] = " "
    cs = write_csv(tmp_path / "g.csv", GPQA_COLUMNS, rows)
    with pytest.raises(ValueError, match=re.escape(f"{cs}:row 2 (line 4): field 'Incorrect Answer 1': empty")):
        load_task("gpqa_diamond", str(cs))


# ---------------------------------------------------------------- records


def test_records_meta_string_or_dict_and_grader(tmp_path):
    rows = [{"uuid": "u1", "input": "What is 6 * 7?", "output": "<think>..</think> 42", "domain": "math",
             "meta": json.dumps({"answer": "42"})},
            {"uuid": "u2", "input": "Say yes.", "output": "", "domain": "toy",
             "meta": {"answer": "yes", "grader": "exact"}}]
    items, _ = load_task("records", str(write_jsonl(tmp_path / "r.jsonl", rows)))
    assert [(i.id, i.grader, i.reference, i.question) for i in items] == [
        ("records/u1", "math", "42", "What is 6 * 7?"), ("records/u2", "exact", "yes", "Say yes.")]


def test_records_without_answer_is_an_error(tmp_path):
    rows = [{"uuid": "u1", "input": "Q", "output": "o", "domain": "math", "meta": json.dumps({"source": "x"})}]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: field 'meta.answer': missing")):
        load_task("records", str(path))


def test_shipped_sample_data_loads(sample_file):
    items, report = load_task("records", str(sample_file))
    assert items and report["skipped"] == 0 and all(i.grader == "math" for i in items)


# ---------------------------------------------------------------- graders


def test_math_grader():
    assert grade("math", "<think>half</think>\n\nThe answer is \\boxed{\\frac{1}{2}}.", "0.5")
    assert not grade("math", "<think>x</think>\n\n\\boxed{\\frac{1}{3}}", "0.5")
    assert not grade("math", "<think>so \\boxed{7}</think>\n\nI am not sure.", "7")  # reasoning does not count


def test_choice_grader():
    assert choice_letter("<think>maybe A</think>\n\nSo \\boxed{B}.") == "B"
    assert choice_letter("<think>\\boxed{A}</think>\n\nAnswer: C") == "C"
    assert choice_letter("The answer is (A). On reflection, the answer is D.") == "D"
    assert choice_letter("Between B and D, I pick C") == "C"
    assert choice_letter("<think>Answer: A</think>\n\nno idea") is None
    assert grade("choice", "**Answer:** \\boxed{\\text{C}}", "C")
    assert not grade("choice", "Answer: B", "C")
    assert not grade("choice", "<think>C</think>\n\nno idea", "C")


def test_exact_grader():
    assert exact_answer("<think>\\boxed{no}</think>\n\nFinal: \\boxed{ red  {x} }") == "red  {x}"
    assert exact_answer("<think>x</think>\n\nfirst\n  blue sky \n\n") == "blue sky"
    assert exact_answer("<think>x</think>\n \n") is None
    assert grade("exact", "<think>x</think>\\boxed{red   {x}}", " red {x} ")
    assert not grade("exact", "\\boxed{Red}", "red")
    with pytest.raises(ValueError, match="unknown grader"):
        grade("fuzzy", "a", "a")
