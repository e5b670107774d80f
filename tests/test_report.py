"""The ablation report (`python report.py runs=<dir>`, dasd.world.report): numbers over seeds are exact, the
paper's numbers and the contrasts are shown, duplicates are resolved newest-first and counted, malformed
results fail naming the file and key, and the CLI writes report.md / report.json / PNGs and a W&B run."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from test_config import compose_cfg
from wandb_offline import read_history, read_records, run_files

from dasd.world.report import CONTRASTS, RESULT_FILE, collect, load_result, natural_key, report, write_report

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1",
       "OMP_NUM_THREADS": "1"}
PAPER = {"T3a": {"AIME24": 81.7, "AIME25": 71.9}, "T3b": {"AIME24": 83.3, "AIME25": 74.2},
         "T3c": {"AIME24": 83.1, "AIME25": 76.1}, "T3e": {"AIME24": 85.0, "AIME25": 79.2},
         "T7a": {"AIME24": None, "AIME25": 47.4}, "T7b": {"AIME24": 84.2, "AIME25": 74.0},
         "T7c": {"AIME24": 87.7, "AIME25": 83.0}, "T7d": {"AIME24": 88.5, "AIME25": 83.3}}
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


def write_result(root: Path, name: str, result: dict, mtime: float | None = None) -> Path:
    path = root / name / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
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
    md = (tmp_path / "out" / "report.md").read_text()
    assert "- T3b vs T3a (DAS vs RS at T=0.6): paper AIME25 +2.3; toy avg@k +10.0 (combined std 3.3) → same " \
           "direction as the paper, |diff| > combined std" in md
    assert "opposite direction to the paper, |diff| ≤ combined std" in md
    assert "**Paper's ordering reproduced?** 1 of 2 contrasted pairs" in md  # table 3: T3b>T3a yes, T3e>T3c no
    assert "- T7a → T7b → T7c → T7d: paper AIME25 47.4 → 74.0 → 83.0 → 83.3; toy avg@k 11.0 → 23.0 → 31.0 → " \
           "33.0; 3 of 3 steps in the paper's direction" in md
    assert all(len(c.rows) >= 2 and c.table == int(c.rows[0][1]) for c in CONTRASTS)


def test_duplicates_newest_first_and_mixed_worlds_flagged(sweep, tmp_path, caplog):
    other = tmp_path / "second_sweep"
    write_result(other, "T3a_seed1", make_result("T3a", 1, 99.0), mtime=2_000_000)  # newer: kept
    write_result(other, "T3b_seed2", make_result("T3b", 2, 0.0), mtime=10)  # older: dropped
    moved = {**WORLD, "key": "zz99"}
    odd = make_result("T3c", 4, 51.0, world=moved, config={"budget": {"questions": 100, "eval": {"k": 4}}})
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
    path = write_result(tmp_path, "bad", result)
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
    cmd = [sys.executable, str(REPO / "report.py"), f"runs={sweep}", f"paths.root_dir={tmp_path}", "logger=none",
           "run_name=report/cli"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "outputs" / "ablate" / "report" / "cli"
    assert {"report.md", "report.json", "table3.png", "table7.png"} <= {p.name for p in out.iterdir()}
    assert "## Table 3" in (out / "report.md").read_text() and not (out / "wandb").exists()
    assert "T3b 42.0 ± 2.6 (n=3)" in (out / "report.log").read_text()


def test_wandb_offline_run_holds_the_tables(sweep, tmp_path):
    """logger=wandb without an API key: an offline run (job_type report) with one table per paper table."""
    cfg = compose_cfg([f"runs=[{sweep}]", "logger=wandb", "logger.mode=offline", "tables=[3,7]"], tmp_path,
                      name="report")
    assert cfg.experiment_name == "ablate" and cfg.out_dir == f"{tmp_path}/run"
    report(cfg)
    files = run_files(tmp_path / "run")
    assert len(files) == 1
    logged = {k for h in read_history(files[0]) for k in h}
    assert {"report/table3/nrows", "report/table7/nrows", "report/contrasts/nrows",
            "report/table3_plot/path"} <= logged, logged
    runs = [r.run for r in read_records(files[0]) if r.WhichOneof("record_type") == "run"]
    assert runs and runs[0].job_type == "report" and runs[0].run_group == "ablate"
