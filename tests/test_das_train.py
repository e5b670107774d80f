"""`python train.py sampler=divergence` end to end on the built-in pool: Hydra → data module → DAS scoring with
the tiny student → selection → Lightning training → run-dir figures and W&B; and the beta sweep that scores
once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli import run_train
from wandb_offline import read_history, run_files


def _report(run_dir: Path) -> dict:
    return json.loads((run_dir / "data_report.json").read_text())["selection"]


@pytest.mark.cli
def test_divergence_stage1_trains_and_shows_its_selection(tmp_path):
    run_train(tmp_path, "sampler=divergence", "train.epochs=1", "data.max_samples=48", "experiment_name=das")
    run_train(tmp_path, "data_only=true", "experiment_name=rs")  # the random selection of the same pool
    das_dir, rs_dir = tmp_path / "outputs" / "das" / "stage1", tmp_path / "outputs" / "rs" / "stage1"
    das, rs = _report(das_dir), _report(rs_dir)
    assert das["sampler"] == "divergence" and rs["sampler"] == "random"
    # same filtered pool, same questions, same budget
    assert das["candidates"] == rs["candidates"] and das["questions"] == rs["questions"]
    assert das["selected"] == rs["selected"] == das["questions"]  # max_samples trims after selection
    cmp = das["das_vs_random"]
    assert cmp["questions_with_both"] == das["questions"] and 0 <= cmp["agreement"] <= das["questions"]
    for name in ("das_sentence_types", "das_teacher_counts", "das_lengths", "das_response_probability"):
        assert (das_dir / "das" / f"{name}.png").stat().st_size > 1000
    assert "sent-teacher" in (das_dir / "das" / "examples.html").read_text()
    manifest = json.loads((das_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["config"]["sampler"]["beta"] == 0.1
    history = read_history(run_files(das_dir)[-1])
    logged = {k for row in history for k in row}
    for name in ("sentence_types", "teacher_counts", "lengths", "response_probability"):
        assert f"das/{name}/filenames" in logged  # a W&B image
    assert "das/examples/nrows" in logged  # a W&B table (rich HTML sentences)


@pytest.mark.cli
def test_beta_sweep_scores_once_and_reselects(tmp_path):
    run_train(tmp_path, "-m", "sweep=das_beta", "data_only=true", "experiment_name=sweep")
    reports = sorted((tmp_path / "outputs" / "sweep" / "multirun").glob("*/*/data_report.json"))
    assert len(reports) == 3
    selections = [json.loads(p.read_text())["selection"] for p in reports]
    assert sorted(s["beta"] for s in selections) == [0.05, 0.1, 0.15]
    scored = sorted(s["scoring"]["scored_now"] for s in selections)
    assert scored[0] == scored[1] == 0 and scored[2] == selections[0]["candidates"]
    teacher = {s["beta"]: s["das_vs_random"]["groups"]["all"]["sentences"]["teacher"] for s in selections}
    assert teacher[0.05] >= teacher[0.1] >= teacher[0.15]
