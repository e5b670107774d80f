"""End to end in a reduced reasoning world (marker ``e2e``; CI runs ``pytest -m e2e``): ``build_world.py`` trains a
teacher, a weaker teacher and a student with train.py and measures them with evaluate.py; ``ablate.py`` then runs
Table 7's full recipe (teacher sampling at T=0.6 and T=1.0 with logprobs → filters → DAS → stage 1 → stage 2 →
mixed-policy stage, evaluation after each) and the base row, one seed, a few steps; ``report.py`` makes the
table. Small enough for two CPU cores in a few minutes; the full suite is ``python ablate.py -m sweep=world_all``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli import REPO

pytestmark = pytest.mark.e2e

WORLD = ["world.difficulty=[1,2]", "world.data.n_teacher_train=1200", "world.data.n_teacher_facts=100", "world.data.n_student_pretrain=100",
         "world.data.n_student_facts=200", "world.data.n_questions=24", "world.data.n_heldout=12",
         "world.teacher.epochs=3", "world.teacher.weaker_epoch=2", "world.student.epochs=1", "world.eval.k=1",
         "world.eval.max_tokens=160"]  # the walk world at 4-6 moves: answers of about 50-110 tokens
BUDGET = ["budget.questions=8", "budget.samples_per_question=2", "budget.epochs=1", "budget.eval.k=1",
          "budget.eval.max_tokens=160", "budget.teacher_max_tokens=160"]


def _run(script: str, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run([sys.executable, str(REPO / script), *overrides, f"paths.root_dir={out}"], cwd=out,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def test_reduced_world_runs_the_whole_pipeline_and_reports(tmp_path):
    # 1. the world: built once, then reused (same key, nothing retrained)
    proc = _run("build_world.py", tmp_path, *WORLD)
    wdir = Path(proc.stdout.strip().splitlines()[-1])
    info = json.loads((wdir / "world.json").read_text())
    assert set(info["accuracy"]) == {"teacher_a", "teacher_b", "student"}
    assert all(0 <= v <= 100 for v in info["accuracy"].values())
    assert info["models"]["student"]["parameters"] < info["models"]["teacher"]["parameters"]
    from transformers import AutoTokenizer

    t_tok, s_tok = (AutoTokenizer.from_pretrained(wdir / n) for n in ("teacher_a", "student"))
    assert t_tok.get_vocab() != s_tok.get_vocab()  # a different tokenizer: DAS aligns by character spans
    mtime = (wdir / "teacher_a" / "model.safetensors").stat().st_mtime
    assert Path(_run("build_world.py", tmp_path, *WORLD).stdout.strip().splitlines()[-1]) == wdir
    assert (wdir / "teacher_a" / "model.safetensors").stat().st_mtime == mtime

    # 2. Table 7 (base, then DAS T=0.6 -> DAS T=1.0 -> mixed policy), one seed
    # side by side, as sweep=world_all runs its rows (Hydra's joblib launcher, one torch thread per job)
    _run("ablate.py", tmp_path, "-m", "experiment=world/t7a,world/t7d", "seed=1", *WORLD, *BUDGET, "logger=csv",
         "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=1")
    results = {json.loads(p.read_text())["id"]: json.loads(p.read_text())
               for p in (tmp_path / "outputs" / "ablate").rglob("row_result.json")}
    assert set(results) == {"T7a", "T7d"}
    t7d = results["T7d"]
    assert [str(s["stage"]) for s in t7d["steps"]] == ["1", "2", "mixed"]
    assert [s["settings"].get("temperature") for s in t7d["steps"][:2]] == [0.6, 1.0]
    for step in t7d["steps"]:
        assert step["eval"]["n_questions"] == 12 and 0 <= step["eval"]["avg@k"] <= 100
        manifest = json.loads((Path(step["dir"]) / "manifest.json").read_text())
        assert manifest["status"] == "completed"
        assert (Path(step["dir"]) / "checkpoints" / "hf" / "final").is_dir()
    assert t7d["final"] == {**t7d["steps"][-1]["eval"], "results": "questions.jsonl.gz"}  # in the row's folder
    assert results["T7a"]["steps"] == [] and 0 <= results["T7a"]["final"]["avg@k"] <= 100
    # the teacher pools carry the sampled tokens' logprobs (DAS scores the teacher side with them)
    pools = sorted((tmp_path / "outputs" / "ablate" / "pools").glob("*/data/*.jsonl"))
    assert len(pools) == 2
    sample = json.loads(pools[0].read_text().splitlines()[0])
    assert len(sample["logprobs"]) == len(sample["token_ids"]) > 0
    # DAS ran in both distillation stages: its per-candidate report sits in each stage's run dir
    for step in t7d["steps"][:2]:
        assert any(Path(step["dir"]).rglob("das*")), step["dir"]

    # the provenance analysis of every step model of T7d (scripts/world_provenance.py -> provenance.py)
    t7d_dir = next(p.parent for p in (tmp_path / "outputs" / "ablate").rglob("row_result.json")
                   if json.loads(p.read_text())["id"] == "T7d")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "world_provenance.py"), str(t7d_dir), "--k", "1",
                           "--root", str(tmp_path), "--override", "logger=none"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = tmp_path / "outputs" / "provenance_world" / "report"
    table = (report / "README.md").read_text()
    labels = ["T7d_step0", "T7d_step1", "T7d"]  # the last step is the row's model
    assert all(f"| {label} |" in table for label in labels)
    for label, step in zip(labels, t7d["steps"], strict=True):
        s = json.loads((report / label / "provenance_summary.json").read_text())
        assert s["models"]["distilled"]["path"] == str(Path(step["dir"]) / "checkpoints" / "hf" / "final")
        assert s["models"]["teacher"]["path"] == str(wdir / "teacher_a") and s["counts"]["responses"] == 12
        assert s["counts"]["unlabeled"] < s["counts"]["sentences"]  # the cross-tokenizer alignment places tokens

    # 3. the report: markdown next to the paper's numbers, a PNG; the row folders exported for committing
    rows = tmp_path / "rows"
    _run("report.py", tmp_path, f"runs={tmp_path / 'outputs' / 'ablate'}", "logger=none",
         f"hydra.run.dir={tmp_path / 'report'}", f"export_rows={rows}")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "T7d" in md and "T7a" in md and "83.3" in md  # T7d's paper AIME25
    assert (tmp_path / "report" / "table7.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["seeds"] == [1] and summary["heldout_questions"] == 12
    assert [c["id"] for c in summary["contrasts"] if c["id"].startswith("T7")]  # T7a-T7d paired over questions

    # 4. the exported row folders alone (the caches deleted) give the same report
    import shutil

    assert sorted(p.name for p in rows.iterdir()) == ["T7a_seed1", "T7d_seed1"]
    shutil.rmtree(tmp_path / "outputs" / "ablate")
    _run("report.py", tmp_path, f"runs={rows}", "logger=none", f"hydra.run.dir={tmp_path / 'report2'}")
    again = json.loads((tmp_path / "report2" / "summary.json").read_text())
    for key in ("contrasts", "student_base_accuracy", "distilled_accuracy", "student_sentence_share",
                "cutoff_ratio_by_length", "mde_points"):
        assert again[key] == summary[key], key
