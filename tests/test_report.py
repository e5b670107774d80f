"""The ablation report (`python report.py runs=<dir>`, dasd.recipes.report): numbers over seeds are exact, the
paper's numbers and the contrasts are shown, duplicates are resolved newest-first and counted, malformed
results fail naming the file and key, and the CLI writes report.md / report.json / PNGs and a W&B run."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_config import compose_cfg
from wandb_offline import read_history, read_records, run_files

from dasd.ablation.report import write_report
from dasd.ablation.results import CONTRASTS, RESULT_FILE, collect, load_result, natural_key
from dasd.recipes.report import report

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1",
       "OMP_NUM_THREADS": "1"}
PAPER = {"T3a": {"AIME24": 81.7, "AIME25": 71.9}, "T3b": {"AIME24": 83.3, "AIME25": 74.2},
         "T3c": {"AIME24": 83.1, "AIME25": 76.1}, "T3e": {"AIME24": 85.0, "AIME25": 79.2},
         "T7a": {"AIME24": None, "AIME25": 47.4}, "T7b": {"AIME24": 84.2, "AIME25": 74.0},
         "T7c": {"AIME24": 87.7, "AIME25": 83.0}, "T7d": {"AIME24": 88.5, "AIME25": 83.3},
         "T1d": {"AIME24": 85.2, "AIME25": 81.3}, "T1h": {}}  # T1h: a control row, no paper numbers
ANALYSIS = {"student_sentence_share": 0.07, "cutoff_ratio_by_length": [["<200", 0.05], ["200-400", 0.2], [812.5, 0.3]],
            "learning_curve": [{"budget": b, "accuracy": a, "ci95": [a - 2, a + 2]}
                               for b, a in ((100, 20.0), (200, 30.0), (400, 38.0), (800, 44.0), (1600, 47.0))],
            "unit_budget": 400}
SUMMARY_KEYS = {"teacher_accuracy", "student_base_accuracy", "distilled_accuracy", "mde_points",
                "student_sentence_share", "cutoff_ratio_by_length", "seeds", "heldout_questions", "k", "wall_hours",
                "wall_hours_note", "contrasts"}
# toy avg@k per row over seeds 1, 2, 3: T3b > T3a by far more than the std; T3e < T3c (against the paper)
TOY = {"T3a": [30.0, 32.0, 34.0], "T3b": [40.0, 41.0, 45.0], "T3c": [50.0, 52.0, 51.0],
       "T3e": [49.0, 51.0, 50.0], "T7a": [10.0, 12.0, 11.0], "T7b": [20.0, 26.0, 23.0],
       "T7c": [30.0, 31.0, 32.0], "T7d": [32.0, 33.0, 34.0]}
WORLD = {"key": "ab12cd", "accuracy": {"teacher_a": 94.0, "teacher_b": 80.0, "student": 21.0}}


def _eval(avg: float, trunc: float = 0.02, tokens: float = 88.0) -> dict:
    return {"avg@k": avg, "ci95": [avg - 5, avg + 5], "truncation_rate": trunc, "mean_response_tokens": tokens,
            "n_questions": 120, "k": 4}


def make_result(row: str, seed: int, avg: float, **extra) -> dict:
    """A row_result.json as the ablation runner writes it (T7a: the base model, no steps)."""
    table = int(row[1])
    steps = [] if row == "T7a" else [
        {"stage": "1", "settings": {"teacher": "a", "temperature": 0.6, "sampler": "divergence", "questions": 1},
         "dir": f"/x/{row}/{seed}/s1", "reused": False, "train_seconds": 10.0 * seed, "eval": _eval(avg - 1)},
        {"stage": "2", "settings": {"teacher": "a", "temperature": 1.0, "sampler": "divergence", "questions": 1},
         "dir": f"/x/{row}/{seed}/s2", "reused": True, "train_seconds": 100.0, "eval": _eval(avg)}]
    result = {"table": table, "id": row, "label": f"setting of {row}", "paper": PAPER[row], "seed": seed,
              "world": WORLD, "steps": steps, "final": _eval(avg, trunc=0.01 * seed, tokens=80.0 + seed),
              "seconds": 60.0 + seed, "config": {"budget": {"questions": 300, "eval": {"k": 4}}}, "versions": {"dasd": "0.1.0"}, **extra}
    return json.loads(json.dumps(result))  # a deep copy: tests may edit it


def question_rows(avg: float, n: int, seed: int) -> list[dict]:
    """n per-question results whose mean accuracy is avg/100 exactly: avg ± a zero-mean pattern (per seed)."""
    spread = min(avg, 100 - avg) / 100 / 2
    pattern = [(((q + seed) * 7) % 5 - 2) / 2 for q in range(n)]  # -1 .. 1, mean 0 over every 5 questions
    return [{"id": f"q{q}", "accuracy": avg / 100 + spread * p, "correct": [True] * 4,
             "response_tokens": [80] * 4} for q, p in enumerate(pattern)]


def write_result(root: Path, name: str, result: dict, mtime: float | None = None, questions: bool = True) -> Path:
    """row_result.json under root/name, and (``questions``) its final evaluation's results.jsonl beside it,
    named by ``final.results`` as ablate.py writes it."""
    path = root / name / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if questions:
        final = result["final"]
        jsonl = path.parent / "eval" / "results.jsonl"
        jsonl.parent.mkdir(exist_ok=True)
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in question_rows(final["avg@k"], final["n_questions"],
                                                                              result["seed"])))
        final["results"] = str(jsonl)
    path.write_text(json.dumps(result))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "multirun" / "2025-01-01_00-00-00"
    for row, values in TOY.items():
        for seed, avg in enumerate(values, start=1):
            write_result(root, f"{row}_seed{seed}", make_result(row, seed, avg), mtime=1_000_000 + seed)
    return root


def test_means_stds_and_paper_numbers(sweep, tmp_path):
    rep = write_report([sweep], tmp_path / "out")
    assert set(rep["tables"]) == {3, 7} and rep["n_results"] == 24 and rep["duplicates"] == []
    rows = {x["id"]: x for t in rep["tables"].values() for x in t["rows"]}
    for row, values in TOY.items():
        assert rows[row]["mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert rows[row]["std"] == pytest.approx(statistics.stdev(values), abs=1e-12)  # n - 1
        assert rows[row]["n"] == 3 and rows[row]["paper"] == PAPER[row]
    assert rows["T3a"]["std"] == pytest.approx(2.0) and rows["T3b"]["mean"] == pytest.approx(42.0)
    assert rows["T3a"]["truncation_rate"] == pytest.approx(0.02) and rows["T3a"]["mean_response_tokens"] == 82.0
    assert rows["T3a"]["train_seconds"] == pytest.approx(20.0)  # mean of 10, 20, 30; the reused step not counted
    assert rows["T7a"]["train_seconds"] == 0.0 and rows["T3a"]["seconds"] == pytest.approx(62.0)
    assert [x["id"] for x in rep["tables"][3]["rows"]] == ["T3a", "T3b", "T3c", "T3e"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| id | setting | paper AIME24 | paper AIME25 | toy avg@k (mean ± std) | seeds |" in md
    assert "| T3a | setting of T3a | 81.7 | 71.9 | 32.0 ± 2.0 | 3 | 0.020 | 82 | 20 | 62 |" in md
    assert "| T7a | setting of T7a | — | 47.4 | 11.0 ± 1.0 | 3 |" in md  # the paper's "-" stays a dash
    assert "World ab12cd: held-out accuracy teacher a 94.0%, teacher b 80.0%, student 21.0%." in md and "k = 4 samples per question, 120 held-out" in md
    assert "Per-stage progression" in md and "| T3b | 2 | 2 | teacher=a, temperature=1.0" in md
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["tables"]["3"]["rows"][0]["values"] == TOY["T3a"] and len(saved["inputs"]) == 24
    assert saved["versions"]["runs"] == [{"dasd": "0.1.0"}] and saved["versions"]["report"]["python"]
    for t in (3, 7):
        png = (tmp_path / "out" / f"table{t}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_contrasts_are_computed_from_the_numbers(sweep, tmp_path):
    rep = write_report([sweep], tmp_path / "out")
    by_pair = {(c["a"], c["b"]): c for t in rep["tables"].values() for c in t["contrasts"]}
    das = by_pair[("T3a", "T3b")]  # paper +2.3 on AIME25; toy +10 with a combined std of sqrt(4 + 7)
    assert das["metric"] == "AIME25" and das["paper_diff"] == pytest.approx(2.3)
    assert das["toy_diff"] == pytest.approx(10.0) and das["combined_std"] == pytest.approx((4 + 7) ** 0.5)
    assert das["same_direction"] and das["beyond_std"]
    hot = by_pair[("T3c", "T3e")]  # paper +3.1; toy -1.0 within a combined std of sqrt(2)
    assert hot["same_direction"] is False and hot["beyond_std"] is False
    assert by_pair[("T3d", "T3e")]["missing"] == ["T3d"]
    assert all(by_pair[p]["same_direction"] for p in [("T7a", "T7b"), ("T7b", "T7c"), ("T7c", "T7d")])
    # the paired interval over questions and seeds: every question paired, so its diff is the seeds' mean diff
    assert das["id"] == "T3a-T3b" and das["diff"] == pytest.approx(das["toy_diff"], abs=1e-9)
    assert (das["n_seeds"], das["n_questions"], das["expected_sign"]) == (3, 120, 1)
    assert das["ci_low"] < 10 < das["ci_high"] and das["ci_low"] > 0 and das["verdict"] == "reproduced"
    assert hot["ci_high"] < 0 and hot["verdict"] == "contradicted" and hot["mde"] > 0
    assert by_pair[("T7a", "T7d")]["paper_diff"] == pytest.approx(35.9)  # the whole recipe, paper's numbers
    assert by_pair[("T7a", "T7d")]["verdict"] == "reproduced"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| contrast (b − a) | what | paper AIME25 diff | toy diff [95% CI] | MDE | seed sd | seeds for MDE ≤ 3 " \
           "| seeds × questions | verdict |" in md
    lo, hi = (f"{das[k]:+.1f}" for k in ("ci_low", "ci_high"))
    power = das["power"]  # the seeds the MDE target needs (dasd.ablation.power), 3 seeds: 2 degrees of freedom
    assert power["df_seed"] == 2 and power["mde_target"] == 3.0 and power["sd_seed"] >= 0
    need = power["seeds_for_target"] or "none"
    assert f"| T3a-T3b | DAS vs RS at T=0.6 | +2.3 | +10.0 [{lo}, {hi}] | {das['mde']:.1f} | " \
           f"{power['sd_seed']:.1f} | {need} | 3 × 120 | reproduced |" in md
    assert "| T3d-T3e | 50K DAS vs 100K RS at T=1.0 | — | — | — | — | — | — | not in the results: T3d |" in md
    assert "**Verdicts (paired 95% interval vs the expected direction):** 1 reproduced, 1 contradicted, " \
           "2 not run. All row pairs: 5 of 6 ordered as the paper's AIME25." in md
    assert "- T7a → T7b → T7c → T7d: paper AIME25 47.4 → 74.0 → 83.0 → 83.3; toy avg@k 11.0 → 23.0 → 31.0 → " \
           "33.0; 3 of 3 steps reproduced, 3 in the paper's direction" in md  # T7a-T7d is no step of the chain
    assert all(len(c.rows) >= 2 and c.table == int(c.rows[0][1]) for c in CONTRASTS)


def test_summary_json_figures_and_extra_path(sweep, tmp_path):
    """summary.json holds the issue's keys, from the results and the world-analysis file; it is also written to
    summary_path; the analysis draws the learning curve and the cut-off bars."""
    analysis = tmp_path / "analysis.json"
    analysis.write_text(json.dumps(ANALYSIS))
    extra = tmp_path / "docs" / "results" / "summary.json"
    rep = write_report([sweep], tmp_path / "out", analysis=analysis, summary_path=extra)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary) and json.loads(extra.read_text()) == summary == rep["summary"]
    assert (summary["teacher_accuracy"], summary["student_base_accuracy"], summary["distilled_accuracy"]) == (
        94.0, pytest.approx(11.0), pytest.approx(33.0))
    assert summary["seeds"] == [1, 2, 3] and summary["heldout_questions"] == 120 and summary["k"] == 4
    assert summary["wall_hours"] == pytest.approx(8 * (61 + 62 + 63) / 3600) and "sum" in summary["wall_hours_note"]
    assert summary["student_sentence_share"] == 0.07 and summary["cutoff_ratio_by_length"][1] == ["200-400", 0.2]
    paired = [c for c in summary["contrasts"] if c["mde"] is not None]
    assert len(summary["contrasts"]) == 8 and len(paired) == 6  # T3d-T3e and T3f-T3g: rows not run
    assert summary["mde_points"] == max(c["mde"] for c in paired) and summary["mde_points"] > 0
    assert {"id", "diff", "ci_low", "ci_high", "verdict", "what", "table", "paper_diff"} <= set(paired[0])
    for name in ("contrasts.png", "learning_curve.png", "cutoff_by_length.png"):
        png = (tmp_path / "out" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
    assert "**Summary** (summary.json): teacher 94.0%, student base 11.0%, distilled (T7d) 33.0%" in \
        (tmp_path / "out" / "report.md").read_text()
    bare = write_report([sweep], tmp_path / "bare")  # no analysis: nulls, no analysis figures
    assert bare["summary"]["student_sentence_share"] is None and bare["summary"]["cutoff_ratio_by_length"] is None
    assert not (tmp_path / "bare" / "learning_curve.png").exists()
    analysis.write_text(json.dumps({"learning_curve": {"budget": 1}}))
    with pytest.raises(ValueError, match="analysis.json: key 'learning_curve' must be"):
        write_report([sweep], tmp_path / "bad", analysis=analysis)


def test_control_contrast_direction_is_the_claim(tmp_path):
    """T1h (stage 2 at T=1.0 after stage 1 at T=1.0) has no paper numbers: T1h-T1d is judged against the
    method's claim (+); a T1d below T1h on every seed contradicts it."""
    for seed in (1, 2, 3):
        write_result(tmp_path, f"T1h_{seed}", make_result("T1h", seed, 40.0 + seed))
        write_result(tmp_path, f"T1d_{seed}", make_result("T1d", seed, 30.0 + seed))
    rep = write_report([tmp_path], tmp_path / "out")
    c = {c["id"]: c for c in rep["tables"][1]["contrasts"]}["T1h-T1d"]
    assert (c["paper_diff"], c["expected_sign"], c["expected_from"]) == (None, 1, "claim")
    assert c["diff"] == pytest.approx(-10.0) and c["ci_high"] < 0 and c["verdict"] == "contradicted"
    assert "| T1h-T1d | schedule T=0.6→1.0 vs a warmup restart at T=1.0 (stage 2 at T=1.0 after stage 1 at T=1.0) " \
           "| — (claim: +) | -10.0 [" in (tmp_path / "out" / "report.md").read_text()


def test_missing_per_question_results_fail_or_fall_back(sweep, tmp_path):
    """A missing results.jsonl stops the report naming the row_result.json and the path; per_question=optional
    falls back to the seed-level comparison for that row's contrasts and says so."""
    gone = sweep / "T3b_seed2" / "eval" / "results.jsonl"
    gone.unlink()
    with pytest.raises(ValueError) as e:
        write_report([sweep], tmp_path / "out")
    assert str(sweep / "T3b_seed2" / RESULT_FILE) in str(e.value) and str(gone) in str(e.value)
    rep = write_report([sweep], tmp_path / "out", per_question="optional")
    c = {c["id"]: c for c in rep["tables"][3]["contrasts"]}
    assert c["T3a-T3b"]["method"].startswith("seed-level only") and c["T3a-T3b"]["ci_low"] is None
    assert c["T3a-T3b"]["diff"] == pytest.approx(10.0) and c["T3c-T3e"]["verdict"] == "contradicted"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**Per-question results missing for 1 result(s)** (per_question=optional)" in md
    assert "seed-level only: same direction as the paper, \\|diff\\| > combined std" in md  # | escaped
    with pytest.raises(ValueError, match="per_question: expected one of"):
        write_report([sweep], tmp_path / "out", per_question="maybe")


def test_unpaired_questions_are_a_warning(sweep, tmp_path):
    """A seed of T3b evaluated on one question fewer: that question leaves the pairing in every seed (questions
    are crossed with seeds), its cells are counted per side and flagged."""
    path = sweep / "T3b_seed1" / RESULT_FILE
    result = json.loads(path.read_text())
    rows = question_rows(40.0, 120, 1)[1:]  # question q0 missing
    Path(result["final"]["results"]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    result["final"].update(n_questions=119, **{"avg@k": 100 * statistics.fmean(r["accuracy"] for r in rows)})
    path.write_text(json.dumps(result))
    rep = write_report([sweep], tmp_path / "out")
    c = {c["id"]: c for c in rep["tables"][3]["contrasts"]}["T3a-T3b"]
    assert c["dropped_cells"] == {"a": 3, "b": 2} and c["n_questions"] == 119  # q0 of every seed
    assert "T3a-T3b: 3 (seed, question) cell(s) of T3a and 2 of T3b not paired" in " ".join(
        rep["tables"][3]["warnings"])


def test_duplicates_newest_first_and_mixed_worlds_flagged(sweep, tmp_path, caplog):
    other = tmp_path / "second_sweep"
    write_result(other, "T3a_seed1", make_result("T3a", 1, 99.0), mtime=2_000_000)  # newer: kept
    write_result(other, "T3b_seed2", make_result("T3b", 2, 0.0), mtime=10)  # older: dropped
    moved = {**WORLD, "key": "zz99"}
    odd = make_result("T3c", 4, 51.0, world=moved, config={"budget": {"questions": 100, "eval": {"k": 4}},
                                                          "train_overrides": ["optim.lr=3e-3"]})
    odd["final"]["n_questions"] = 60
    write_result(other, "T3c_seed4", odd)
    rep = write_report([sweep, other], tmp_path / "out")
    assert rep["n_files"] == 27 and rep["n_results"] == 25 and len(rep["duplicates"]) == 2
    rows = {x["id"]: x for x in rep["tables"][3]["rows"]}
    assert rows["T3a"]["values"] == [99.0, 32.0, 34.0] and rows["T3b"]["values"] == TOY["T3b"]
    assert rows["T3c"]["n"] == 4
    dropped = {d["dropped"] for d in rep["duplicates"]}
    assert str((sweep / "T3a_seed1" / RESULT_FILE).resolve()) in dropped
    assert str((other / "T3b_seed2" / RESULT_FILE).resolve()) in dropped
    warnings = rep["tables"][3]["warnings"]
    assert any("different worlds" in w and "zz99 (T3c)" in w for w in warnings)
    assert "rows of table 3 ran on different budgets: budget.questions = 100 (T3c), 300 (T3a, T3b, T3c, T3e)" \
        in warnings and rep["tables"][7]["warnings"] == []
    # rows trained with other overrides (another learning rate) are flagged too
    assert 'rows of table 3 ran on different settings: train_overrides = ["optim.lr=3e-3"] (T3c), null (T3a, ' \
        'T3b, T3c, T3e)' in warnings
    assert any("different numbers of held-out questions" in w and "T3c 60/120" in w for w in warnings)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "2 duplicate result(s) of one (row, seed) dropped" in md and "> **Warning:** rows of table 3" in md
    assert any("different worlds" in r.message for r in caplog.records)


def test_one_seed_has_no_std_and_tables_filter(tmp_path):
    write_result(tmp_path, "a", make_result("T3a", 1, 30.0, world={"key": "w", "accuracy": None}))
    write_result(tmp_path, "b", make_result("T7a", 1, 10.0))
    rep = write_report([tmp_path], tmp_path / "out", tables=[3])
    assert list(rep["tables"]) == [3] and rep["tables"][3]["rows"][0]["std"] is None
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| 30.0 ± — | 1 |" in md and "World w: held-out accuracy not recorded." in md
    with pytest.raises(ValueError, match="belongs to tables"):
        collect([tmp_path], tables=[5])
    assert sorted(["T10a", "T2b", "T1c"], key=natural_key) == ["T1c", "T2b", "T10a"]


@pytest.mark.parametrize("drop,key", [(("final", "avg@k"), "final.avg@k"), (("world", "key"), "world.key"),
                                      (("seed",), "seed"), (("steps", 0, "train_seconds"), "steps[0].train_seconds")])
def test_malformed_result_names_file_and_key(tmp_path, drop, key):
    result = make_result("T3b", 1, 40.0)
    target = result
    for part in drop[:-1]:
        target = target[part]
    del target[drop[-1]]
    path = write_result(tmp_path, "bad", result, questions=False)
    with pytest.raises(ValueError) as e:
        load_result(path)
    assert str(path) in str(e.value) and repr(key) in str(e.value)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="bad/row_result.json: not a readable JSON"):
        collect([tmp_path])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no row_result.json under"):
        collect([tmp_path / "empty"])


def test_cli_logger_none(sweep, tmp_path):
    """`python report.py runs=<dir> logger=none` writes every output into its run dir and no W&B run."""
    analysis = tmp_path / "analysis.json"
    analysis.write_text(json.dumps(ANALYSIS))
    cmd = [sys.executable, str(REPO / "report.py"), f"runs={sweep}", f"paths.root_dir={tmp_path}", "logger=none",
           "run_name=report/cli", f"analysis={analysis}", "summary_path=docs/summary.json", "bootstrap.resamples=500"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "outputs" / "ablate" / "report" / "cli"
    assert {"report.md", "report.json", "summary.json", "contrasts.png", "table3.png", "table7.png"} <= {
        p.name for p in out.iterdir()}
    assert "## Table 3" in (out / "report.md").read_text() and not (out / "wandb").exists()
    assert "T3b 42.0 ± 2.6 (n=3)" in (out / "report.log").read_text()
    summary = json.loads((tmp_path / "docs" / "summary.json").read_text())  # relative to the working dir
    assert summary == json.loads((out / "summary.json").read_text()) and summary["student_sentence_share"] == 0.07
    assert json.loads((out / "report.json").read_text())["tables"]["3"]["contrasts"][0]["resamples"] == 500


def test_wandb_offline_run_holds_the_tables(sweep, tmp_path):
    """logger=wandb without an API key: an offline run (job_type report) with one table per paper table."""
    cfg = compose_cfg([f"runs=[{sweep}]", "logger=wandb", "logger.mode=offline", "tables=[3,7]"], tmp_path,
                      name="report")
    assert cfg.experiment_name == "ablate" and cfg.out_dir == f"{tmp_path}/run"
    report(cfg)
    files = run_files(tmp_path / "run")
    assert len(files) == 1
    for _ in range(50):  # W&B offline can return from finish() before its writer flushed the file (~1 in 10 runs)
        if files[0].stat().st_size > 7:  # more than the file header
            break
        time.sleep(0.2)
    logged = {k for h in read_history(files[0]) for k in h}
    assert {"report/table3/nrows", "report/table7/nrows", "report/contrasts/nrows",
            "report/table3_plot/path", "report/contrasts_plot/path"} <= logged, logged
    runs = [r.run for r in read_records(files[0]) if r.WhichOneof("record_type") == "run"]
    assert runs and runs[0].job_type == "report" and runs[0].run_group == "ablate"
