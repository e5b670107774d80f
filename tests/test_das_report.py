"""DAS observability: plots write PNGs, summary numbers on a hand-made pool, HTML view of examples."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest

from dasd.das import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_details(n_questions: int = 40, k: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """A filtered pool of k candidates per question; DAS picks the max Teacher count, RS a random one."""
    rng = np.random.default_rng(seed)
    n = n_questions * k
    num_tokens = rng.integers(200, 4000, n)
    n_teacher = rng.poisson(num_tokens / 400)
    n_student = rng.poisson(num_tokens / 2000)
    n_shared = rng.poisson(num_tokens / 50)
    n_unlabeled = rng.integers(0, 3, n)
    question = np.repeat([f"q{i}" for i in range(n_questions)], k)
    das = np.zeros(n, dtype=bool)
    rnd = np.zeros(n, dtype=bool)
    for q in range(n_questions):
        rows = np.arange(q * k, (q + 1) * k)
        das[rows[np.lexsort((n_student[rows], -n_teacher[rows]))[0]]] = True
        rnd[rng.choice(rows)] = True
    return {"uuid": np.array([f"u{i}" for i in range(n)]), "question": question,
            "n_teacher": n_teacher, "n_student": n_student, "n_shared": n_shared, "n_unlabeled": n_unlabeled,
            "num_tokens": num_tokens, "p_teacher": rng.beta(8, 2, n), "p_student": rng.beta(5, 3, n),
            "das": das, "random": rnd}


def tiny_details() -> dict[str, np.ndarray]:
    """Three questions (q0: 2 candidates, q1: 2, q2: 1).
    q0: DAS row 0, RS row 1 (DAS has more Teacher sentences); q1: both pick row 3 (agreement);
    q2: both pick row 4 (agreement, tie)."""
    return {"uuid": np.array(["a", "b", "c", "d", "e"]), "question": np.array(["q0", "q0", "q1", "q1", "q2"]),
            "n_teacher": np.array([5, 2, 1, 3, 4]), "n_student": np.array([1, 0, 0, 2, 1]),
            "n_shared": np.array([10, 8, 6, 7, 9]), "n_unlabeled": np.array([0, 1, 0, 0, 2]),
            "num_tokens": np.array([1000, 500, 300, 600, 800]),
            "p_teacher": np.array([0.9, 0.8, 0.7, 0.6, 0.5]), "p_student": np.array([0.5, 0.4, 0.3, 0.2, 0.1]),
            "das": np.array([True, False, False, True, True]),
            "random": np.array([False, True, False, True, True])}


@pytest.mark.parametrize("name", ["sentence_types", "teacher_counts", "lengths", "response_probability"])
def test_plots_write_png(tmp_path, name):
    details = synthetic_details()
    fn = getattr(report, f"plot_{name}")
    path = tmp_path / "sub" / f"{name}.png"
    out = fn(details, path, 0.1) if name == "sentence_types" else fn(details, path)
    assert out == path
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_plots_survive_empty_selection_and_nan(tmp_path):
    details = synthetic_details(n_questions=3)
    details["das"] = np.zeros_like(details["das"])
    details["p_teacher"] = details["p_teacher"].copy()
    details["p_teacher"][0] = np.nan
    out = report.write_report(details, tmp_path, beta=0.1)
    for key in ("sentence_types", "teacher_counts", "lengths", "response_probability"):
        assert out[key].read_bytes().startswith(PNG_MAGIC)
    s = json.loads(out["summary"].read_text())
    assert s["groups"]["das"]["responses"] == 0 and s["groups"]["das"]["length_mean"] is None
    assert s["length_ratio_das_over_random"] is None and s["agreement_fraction"] is None


def test_summary_tiny_case():
    s = report.summary(tiny_details())
    json.dumps(s, allow_nan=False)  # JSON-able, no NaN
    assert s["candidates"] == 5 and s["questions"] == 3
    assert s["selected"] == {"das": 3, "random": 3}
    assert s["groups"]["all"]["sentences"] == {"teacher": 15, "shared": 40, "student": 4, "unlabeled": 3}
    assert s["groups"]["das"]["sentences"] == {"teacher": 12, "shared": 26, "student": 4, "unlabeled": 2}
    assert s["groups"]["random"]["sentences"] == {"teacher": 9, "shared": 24, "student": 3, "unlabeled": 3}
    assert s["groups"]["das"]["sentence_share"]["teacher"] == pytest.approx(12 / 44)
    assert s["groups"]["das"]["teacher_mean"] == pytest.approx(4.0)
    assert s["groups"]["das"]["teacher_median"] == pytest.approx(4.0)
    assert s["groups"]["random"]["teacher_mean"] == pytest.approx(3.0)
    assert s["groups"]["all"]["teacher_median"] == pytest.approx(3.0)
    assert s["groups"]["das"]["length_mean"] == pytest.approx(800.0)
    assert s["groups"]["random"]["length_mean"] == pytest.approx(1900 / 3)
    assert s["length_ratio_das_over_random"] == pytest.approx(2400 / 1900)
    assert s["groups"]["das"]["p_teacher_mean"] == pytest.approx(2.0 / 3)
    assert s["groups"]["random"]["p_student_mean"] == pytest.approx(0.7 / 3)
    assert s["questions_with_both"] == 3
    assert s["agreement"] == 2 and s["agreement_fraction"] == pytest.approx(2 / 3)
    assert s["das_more_teacher_fraction"] == pytest.approx(1 / 3)
    assert s["das_fewer_teacher_fraction"] == 0.0
    assert s["das_tie_teacher_fraction"] == pytest.approx(2 / 3)


def test_summary_synthetic_das_never_fewer_teacher():
    s = report.summary(synthetic_details())
    assert s["selected"] == {"das": 40, "random": 40} and s["questions"] == 40
    assert s["das_fewer_teacher_fraction"] == 0.0  # DAS picks the argmax
    assert s["groups"]["das"]["teacher_mean"] >= s["groups"]["random"]["teacher_mean"]
    assert s["agreement"] + round(s["das_more_teacher_fraction"] * 40) >= 10


def test_summary_rejects_bad_details():
    details = tiny_details()
    del details["p_student"]
    with pytest.raises(ValueError, match="p_student"):
        report.summary(details)
    details = tiny_details()
    details["num_tokens"] = details["num_tokens"][:4]
    with pytest.raises(ValueError, match="one length"):
        report.summary(details)


OUTPUT = ("<think>\nA & B < C. <script>alert('x')</script> is fine.\n\nSo  1 < 2.\n</think>\n\n"
          "The answer is \\boxed{3} & done.")


def make_example(**overrides) -> dict:
    out = OUTPUT
    texts = ["A & B < C.", "<script>alert('x')</script> is fine.", "So  1 < 2.", "The answer is \\boxed{3} & done."]
    spans = []
    for t in texts:
        a = out.index(t)
        spans.append([a, a + len(t)])
    ex = {"uuid": "u-1", "question": "What is 1 + 2? <b>bold</b>", "output": out, "spans": spans,
          "labels": ["teacher", "student", "shared", "unlabeled"],
          "p_teacher": [0.9, 0.2, 0.5, None], "p_student": [0.6, 0.5, 0.48, 0.7],
          "sampler": "das", "n_teacher": 1, "n_student": 1}
    ex.update(overrides)
    return ex


def output_div(fragment: str) -> str:
    m = re.search(r'<div class="das-output"[^>]*>(.*)</div></div>$', fragment, flags=re.S)
    assert m, fragment
    return m.group(1)


def test_example_html_spans_escape_and_text():
    ex = make_example()
    frag = report.example_html(ex)
    assert "<script>" not in frag and "<think>" not in frag and "<b>bold</b>" not in frag
    assert "&lt;script&gt;" in frag and "&lt;think&gt;" in frag and "&amp; B" in frag
    spans = re.findall(r'<span class="sent sent-(\w+)"[^>]*title="([^"]*)"', frag)
    assert [label for label, _ in spans] == ex["labels"]
    assert spans[0][1] == "teacher: p_T=0.900 p_S=0.600 Δ=+0.300"
    assert spans[1][1] == "student: p_T=0.200 p_S=0.500 Δ=-0.300"
    assert spans[3][1] == "unlabeled: p_T=n/a p_S=0.700 Δ=n/a"
    body = output_div(frag)
    assert body.count("<span") == len(ex["spans"])
    assert html.unescape(re.sub(r"<[^>]+>", "", body)) == ex["output"]
    # each span's text is exactly its [start, end) slice
    inner = re.findall(r'<span class="sent[^"]*"[^>]*>(.*?)</span>', body, flags=re.S)
    assert [html.unescape(t) for t in inner] == [ex["output"][a:b] for a, b in ex["spans"]]
    assert "white-space: pre-wrap" in frag


def test_example_html_no_spans_and_missing_probabilities():
    frag = report.example_html(make_example(spans=[], labels=[], p_teacher=None, p_student=None))
    assert html.unescape(re.sub(r"<[^>]+>", "", output_div(frag))) == OUTPUT
    assert "<span" not in output_div(frag)


@pytest.mark.parametrize("bad", [
    {"spans": [[0, 20], [10, 30]], "labels": ["teacher", "shared"], "p_teacher": [0.1, 0.2], "p_student": [0.1, 0.2]},
    {"spans": [[10, 20], [0, 5]], "labels": ["teacher", "shared"], "p_teacher": [0.1, 0.2], "p_student": [0.1, 0.2]},
    {"spans": [[0, len(OUTPUT) + 1]], "labels": ["teacher"], "p_teacher": [0.1], "p_student": [0.1]},
    {"spans": [[-1, 4]], "labels": ["teacher"], "p_teacher": [0.1], "p_student": [0.1]},
    {"spans": [[4, 4]], "labels": ["teacher"], "p_teacher": [0.1], "p_student": [0.1]},
    {"labels": ["teacher", "student", "shared"]},
    {"labels": ["teacher", "student", "shared", "boosted"]},
    {"p_teacher": [0.1, 0.2]},
])
def test_example_html_rejects_bad_examples(bad):
    with pytest.raises(ValueError):
        report.example_html(make_example(**bad))


def test_render_examples_html(tmp_path):
    examples = [make_example(), make_example(uuid="u-2", sampler="random", labels=["shared"] * 4)]
    path = report.render_examples_html(examples, tmp_path / "x" / "examples.html", beta=0.1)
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and 'charset="utf-8"' in page
    assert "<script" not in page and "<think>" not in page
    assert "beta = 0.1" in page and "Teacher: 1" in page and "Shared: 5" in page and "Student: 1" in page
    assert "das: 1" in page and "random: 1" in page
    assert page.count('class="das-example') == 2
    assert "u-1" in page and "u-2" in page
    assert page.count('<span class="sent sent-') == 8 + 4  # 8 sentences + 4 legend swatches
    with pytest.raises(ValueError):
        report.render_examples_html([make_example(), make_example(labels=["x"] * 4)], tmp_path / "bad.html", 0.1)
    assert not (tmp_path / "bad.html").exists()
