"""dasd.ablation.analysis: the learning curve, the pools' sentence types and the cut-off share by teacher length,
read from ablate.py's outputs (synthetic ones here, in the layout ablate.py writes)."""

import json
from pathlib import Path

import pytest

from dasd.ablation.analysis import analyze, learning_curve


def _row(tmp: Path, rid: str, seed: int, table: int, steps: list[dict], acc: float = 50.0,
         questions: int = 100) -> dict:
    return {"id": rid, "table": table, "seed": seed, "steps": steps, "config": {"budget": {"questions": questions}},
            "final": {"avg@k": acc, "ci95": [acc - 3, acc + 3], "n_questions": 1000}}


def _step(tmp: Path, name: str, stage: str = "1", questions: float = 1.0) -> dict:
    d = tmp / name
    d.mkdir(parents=True)
    return {"dir": str(d), "stage": stage, "settings": {"stage": stage, "questions": questions}}


def test_learning_curve_averages_seeds_per_budget(tmp_path):
    rows = [_row(tmp_path, f"LC{m}", s, 0, [_step(tmp_path, f"lc{m}_{s}", questions=m)], acc=10 * m + s)
            for m in (0.5, 1, 2) for s in (1, 2)]
    rows.append(_row(tmp_path, "T1a", 1, 1, [_step(tmp_path, "t1a")], acc=99))  # not a curve row
    curve, unit = learning_curve(rows)
    assert unit == 100 and [p["budget"] for p in curve] == [50, 100, 200]
    assert [p["accuracy"] for p in curve] == [6.5, 11.5, 21.5] and curve[0]["seeds"] == [1, 2]
    rows[0]["config"]["budget"]["questions"] = 50
    with pytest.raises(ValueError, match="different budget.questions"):
        learning_curve(rows)


def test_sentence_shares_and_cutoff_by_length(tmp_path):
    rows = []
    for seed in (1, 2):
        step = _step(tmp_path, f"t3e_{seed}")
        das = Path(step["dir"]) / "das"
        das.mkdir()
        sentences = {"teacher": 60, "shared": 30, "student": 8 + 2 * seed, "unlabeled": 0}
        (das / "das_summary.json").write_text(json.dumps(
            {"candidates": 40, "groups": {"all": {"sentences": sentences}}}))
        rows.append(_row(tmp_path, "T3e", seed, 3, [step]))
        s1, mixed = _step(tmp_path, f"t7c_{seed}"), _step(tmp_path, f"t7d_{seed}", stage="mixed")
        stats = Path(mixed["dir"]) / "mixed" / "round_0"
        stats.mkdir(parents=True)
        per_q = [{"teacher_tokens": n, "truncated": n > 300 and i % 2 == 0} for i, n in
                 enumerate(range(50, 650, 5))]
        (stats / "stats.json").write_text(json.dumps({"per_question": per_q}))
        rows.append(_row(tmp_path, "T7d", seed, 7, [s1, mixed]))
    out = analyze(rows)
    assert out["student_sentence_share"] == pytest.approx((10 + 12) / (2 * 90 + 10 + 12))
    assert out["sentence_shares"]["T=1.0"]["pools"] == 2 and "T=0.6" not in out["sentence_shares"]
    shares = [share for _, share in out["cutoff_ratio_by_length"]]
    edges = [hi for hi, _ in out["cutoff_ratio_by_length"]]
    assert edges == sorted(edges) and shares[0] == 0 and shares[-1] > 0.4  # long answers: cut off more
    assert out["learning_curve"] is None and out["unit_budget"] == 100  # the table rows' budget.questions


def test_nothing_is_guessed_without_runs():
    out = analyze([])
    assert out["student_sentence_share"] is None and out["cutoff_ratio_by_length"] is None


def test_report_figures_from_the_analysis(tmp_path):
    """The sentence-type shares of each pool are drawn as stacked bars (sentence_shares.png)."""
    from dasd.ablation.contrasts import plot_sentence_shares

    path = plot_sentence_shares({"T=1.0": {"teacher": 0.6, "shared": 0.3, "student": 0.1, "unlabeled": 0.0},
                                 "T=0.6": {"teacher": 0.7, "shared": 0.28, "student": 0.02}},
                                tmp_path / "sentence_shares.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5000
