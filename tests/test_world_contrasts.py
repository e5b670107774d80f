"""Paired contrasts of the ablation report (dasd.ablation.contrasts): the hierarchical bootstrap over questions and
seeds finds a known effect and not a null one, seed disagreement and question heterogeneity widen the interval
as a crossed design says, the MDE shrinks with more questions, verdicts, determinism, and the per-question
results and world-analysis files fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dasd.ablation.contrasts import (
    MDE_Z,
    check_bootstrap,
    load_analysis,
    load_questions,
    paired_contrast,
    read_questions,
    result_questions,
    results_path,
    verdict,
)


def binomial_rows(p_SQ: np.ndarray, k: int, rng: np.random.Generator) -> dict:
    """seed -> {question id -> accuracy}: k samples per (seed, question) with success probability p."""
    acc = rng.binomial(k, np.clip(p_SQ, 0, 1)) / k
    return {s + 1: {f"q{q}": float(acc[s, q]) for q in range(acc.shape[1])} for s in range(acc.shape[0])}


def from_array(x_SQ: np.ndarray) -> dict:
    return {s + 1: {f"q{q}": float(v) for q, v in enumerate(row)} for s, row in enumerate(x_SQ)}


@pytest.fixture
def question_p() -> np.ndarray:
    """1000 held-out questions' success probabilities for the student, the same in every seed."""
    return np.random.default_rng(1).uniform(0.1, 0.8, size=1000)


def test_known_effect_is_found(question_p):
    """b = a + 5 points on average (1000 questions x 5 seeds, k = 4): diff ~ 5, the CI holds 5, not 0."""
    rng = np.random.default_rng(2)
    p = np.tile(question_p, (5, 1))
    a, b = binomial_rows(p, 4, rng), binomial_rows(p + 0.05, 4, rng)
    c = paired_contrast(a, b)
    assert c["diff"] == pytest.approx(5.0, abs=1.2)
    assert 0 < c["ci_low"] < 5 < c["ci_high"] and c["ci_high"] - c["ci_low"] < 4
    assert (c["n_seeds"], c["n_questions"], c["seeds"]) == (5, 1000, [1, 2, 3, 4, 5])
    assert c["dropped_cells"] == {"a": 0, "b": 0} and len(c["per_seed_diff"]) == 5
    # the point estimate is the mean over seeds of the mean over questions of (b - a), in points
    diff = np.mean([np.mean([b[s][q] - a[s][q] for q in a[s]]) for s in a]) * 100
    assert c["diff"] == pytest.approx(diff, abs=1e-9)
    assert verdict(c["ci_low"], c["ci_high"], +1) == "reproduced"


def test_no_effect_interval_holds_zero(question_p):
    rng = np.random.default_rng(3)
    p = np.tile(question_p, (5, 1))
    c = paired_contrast(binomial_rows(p, 4, rng), binomial_rows(p, 4, rng))
    assert c["ci_low"] < 0 < c["ci_high"] and abs(c["diff"]) < 1.5
    assert verdict(c["ci_low"], c["ci_high"], +1) == "inconclusive"


def test_seed_disagreement_widens_the_interval():
    """The same mean effect (+5): seeds that agree give a narrow CI, seeds that disagree (+25 ... -15) a wide
    one, as wide as the seeds' spread says (se ~ population sd of the seed effects / sqrt(5))."""
    rng = np.random.default_rng(4)
    a = rng.uniform(0.2, 0.6, size=(5, 1000))
    noise = rng.normal(0, 0.02, size=(5, 1000))
    agree = paired_contrast(from_array(a), from_array(a + 0.05 + noise))
    offsets = np.array([0.25, -0.15, 0.15, -0.05, 0.05])  # mean 0.05
    disagree = paired_contrast(from_array(a), from_array(a + offsets[:, None] + noise))
    assert agree["diff"] == pytest.approx(5.0, abs=0.2) and disagree["diff"] == pytest.approx(5.0, abs=0.2)
    assert agree["ci_high"] - agree["ci_low"] < 0.5
    assert disagree["ci_high"] - disagree["ci_low"] > 10 * (agree["ci_high"] - agree["ci_low"])
    assert disagree["se"] == pytest.approx(100 * offsets.std() / np.sqrt(5), rel=0.1)
    assert disagree["ci_low"] < 0 < disagree["ci_high"]  # five seeds that disagree this much: no verdict


def test_questions_are_crossed_with_seeds():
    """A per-question effect that repeats in every seed (e_q, no seed noise): resampling the same questions
    for every seed gives se = sd(e) / sqrt(Q), not sd(e) / sqrt(Q x S) as independent draws per seed would."""
    rng = np.random.default_rng(5)
    effect = rng.choice([-0.2, 0.3], size=400)
    a = np.full((5, 400), 0.4)
    c = paired_contrast(from_array(a), from_array(a + effect))
    assert c["se"] == pytest.approx(100 * effect.std() / np.sqrt(400), rel=0.1)


def test_mde_shrinks_with_more_questions():
    rng = np.random.default_rng(6)
    mdes = {}
    for n in (200, 2000):
        a = rng.uniform(0.2, 0.6, size=(5, n))
        c = paired_contrast(from_array(a), from_array(a + rng.normal(0.03, 0.2, size=(5, n))))
        assert c["mde"] == pytest.approx(MDE_Z * c["se"])
        mdes[n] = c["mde"]
    assert MDE_Z == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    assert mdes[2000] < 0.5 * mdes[200]  # ~ 1/sqrt(10) with question noise only


def test_verdicts():
    assert verdict(0.5, 3.0, +1) == "reproduced" and verdict(-3.0, -0.5, -1) == "reproduced"
    assert verdict(0.5, 3.0, -1) == "contradicted" and verdict(-3.0, -0.5, +1) == "contradicted"
    assert verdict(-1.0, 2.0, +1) == "inconclusive" and verdict(0.0, 2.0, +1) == "inconclusive"
    assert verdict(0.5, 3.0, 0) == verdict(0.5, 3.0, None) == "no expected direction"


def test_bootstrap_settings_checked():
    assert check_bootstrap(None) == {"resamples": 2000, "seed": 0, "mde_target": 3.0}
    assert check_bootstrap({"resamples": 500, "mde_target": 2}) == {"resamples": 500, "seed": 0, "mde_target": 2}
    for bad in ({"resamples": 10}, {"resamples": "many"}, {"seed": 1.5}, {"resample": 500}, {"mde_target": 0},
                {"mde_target": "3"}):
        with pytest.raises(ValueError, match="bootstrap: expected"):
            check_bootstrap(bad)


def test_deterministic_under_the_seed(question_p):
    rng = np.random.default_rng(7)
    p = np.tile(question_p[:300], (3, 1))
    a, b = binomial_rows(p, 4, rng), binomial_rows(p + 0.03, 4, rng)
    first, again = paired_contrast(a, b, seed=11), paired_contrast(a, b, seed=11)
    assert first == again
    other = paired_contrast(a, b, seed=12)
    assert other["diff"] == first["diff"] and (other["ci_low"], other["se"]) != (first["ci_low"], first["se"])


def test_unpaired_cells_are_dropped_and_counted():
    """Only (seed, question) cells in both rows count; a seed or question of one side alone is dropped,
    counted per side, and the one-seed case says it has no seed-level spread."""
    a = {1: {"q1": 0.0, "q2": 0.5, "q3": 1.0}, 2: {"q1": 0.25, "q2": 0.5}}
    b = {1: {"q1": 0.5, "q2": 0.5, "q9": 1.0}, 3: {"q1": 1.0}}
    c = paired_contrast(a, b)
    assert (c["seeds"], c["n_questions"], c["dropped_cells"]) == ([1], 2, {"a": 3, "b": 2})
    assert c["diff"] == pytest.approx(25.0) and "one seed: no seed-to-seed spread" in c["seed_level"]
    with pytest.raises(ValueError, match="no \\(seed, question\\) cell in both rows"):
        paired_contrast({1: {"q1": 1.0}}, {2: {"q1": 1.0}})


def _result(tmp_path: Path, final_results: str | None, steps: list, base: dict | None) -> dict:
    final = {"avg@k": 50.0, "n_questions": 2, "k": 4}
    if final_results is not None:
        final["results"] = final_results
    return {"table": 3, "id": "T3b", "seed": 1, "final": final, "steps": steps, "base": base,
            "_path": str(tmp_path / "T3b_seed1" / "row_result.json")}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_results_file_location_and_missing_file_error(tmp_path):
    """final.results first, then the last step's <dir>/eval/results.jsonl, then the base's; a missing file
    names the row_result.json and the path, and per_question=optional turns it into a note."""
    rows = [{"id": 1, "accuracy": 0.25}, {"id": 2, "accuracy": 0.75}]
    given = _jsonl(tmp_path / "given.jsonl", rows)
    step = _jsonl(tmp_path / "s2" / "eval" / "results.jsonl", rows)
    base = _jsonl(tmp_path / "base" / "eval" / "results.jsonl", rows)
    two_steps = [{"dir": str(tmp_path / "s1")}, {"dir": str(tmp_path / "s2")}]
    assert results_path(_result(tmp_path, str(given), two_steps, None)) == given
    assert results_path(_result(tmp_path, None, two_steps, None)) == step
    assert results_path(_result(tmp_path, None, [], {"dir": str(tmp_path / "base")})) == base
    assert result_questions(_result(tmp_path, None, two_steps, None)) == {"1": 0.25, "2": 0.75}
    missing = _result(tmp_path, str(tmp_path / "gone.jsonl"), two_steps, None)
    with pytest.raises(ValueError) as e:
        result_questions(missing)
    assert "T3b_seed1/row_result.json" in str(e.value) and "gone.jsonl" in str(e.value)
    with pytest.raises(ValueError, match="row_result.json: no per-question results"):
        result_questions(_result(tmp_path, None, [], None))
    with pytest.raises(ValueError, match="gone.jsonl.*per_question=optional"):
        load_questions([missing])
    questions, notes = load_questions([missing], "optional")
    assert questions == {(3, "T3b"): {1: None}} and len(notes) == 1 and "gone.jsonl" in notes[0]
    stale = _result(tmp_path, str(given), two_steps, None)
    stale["final"]["avg@k"] = 40.0
    with pytest.raises(ValueError, match="stale or foreign results file"):
        result_questions(stale)


@pytest.mark.parametrize("line,match", [("{not json", r":2: not a JSON line"),
                                        ('{"accuracy": 0.5}', r":2: missing field 'id'"),
                                        ('{"id": "a", "accuracy": 2}', r":2: field 'accuracy' must be"),
                                        ('{"id": "q0", "accuracy": 1}', r":2: question 'q0' appears twice")])
def test_bad_results_line_names_file_and_line(tmp_path, line, match):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"id": "q0", "accuracy": 0.5}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=f"results.jsonl{match}"):
        read_questions(path)


def test_analysis_file_tolerant_of_missing_keys_strict_on_types(tmp_path):
    assert load_analysis(None) == dict.fromkeys(
        ["student_sentence_share", "cutoff_ratio_by_length", "learning_curve", "unit_budget"])
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps({"student_sentence_share": 0.07, "other": 1}))
    got = load_analysis(path)
    assert got["student_sentence_share"] == 0.07 and got["learning_curve"] is None and "other" not in got
    bad = {"student_sentence_share": "7%", "cutoff_ratio_by_length": [[100, 0.1], [200]],
           "learning_curve": [{"budget": 10, "accuracy": 20.0, "ci95": [18.0]}], "unit_budget": 1.5}
    for key, value in bad.items():
        path.write_text(json.dumps({key: value}))
        with pytest.raises(ValueError) as e:
            load_analysis(path)
        assert str(path) in str(e.value) and key in str(e.value)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="analysis.json: key '\\(top level\\)' must be a JSON object"):
        load_analysis(path)
    with pytest.raises(ValueError, match="not a readable JSON file"):
        load_analysis(tmp_path / "absent.json")
