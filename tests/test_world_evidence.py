"""dasd.ablation.evidence: a row's folder carries the report's inputs (per-question results, DAS summaries, mixed
round records), so rows copied off the machine (the caches gone) give the same report; rows of different
builds of one world are never combined."""

import gzip
import json
import shutil
from pathlib import Path

import pytest

from dasd.ablation import evidence
from dasd.ablation.analysis import analyze
from dasd.ablation.contrasts import result_questions


def _cache_step(root: Path, name: str, stage: str = "1", das: dict | None = None, per_q: list | None = None,
                key: str | None = None) -> dict:
    """A step as ablate.py leaves it in its cache: a folder with an evaluation and the stage's outputs."""
    d = root / "steps" / name
    (d / "eval").mkdir(parents=True)
    results = [{"id": f"q{i}", "accuracy": float(i % 3 == 0), "response": "long text " * 20} for i in range(30)]
    (d / "eval" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    if das is not None:
        (d / "das").mkdir()
        (d / "das" / "das_summary.json").write_text(json.dumps(das))
    if per_q is not None:
        (d / "mixed" / "round_0").mkdir(parents=True)
        (d / "mixed" / "round_0" / "stats.json").write_text(json.dumps({"per_question": per_q}))
    return {"stage": stage, "key": key or name, "dir": str(d), "settings": {"stage": stage, "questions": 1.0},
            "eval": {"avg@k": 100 * 10 / 30, "n_questions": 30, "k": 1, "results": str(d / "eval" / "results.jsonl")}}


def _row(root: Path, rid: str, table: int, seed: int, entries: list[dict], weights: dict | None = None) -> dict:
    run_dir = root / "rows" / f"{rid}_seed{seed}"
    run_dir.mkdir(parents=True)
    final = evidence.collect(run_dir, entries, entries[-1]["eval"])
    result = {"id": rid, "table": table, "seed": seed, "steps": entries, "final": final,
              "world": {"key": "w1", "weights": weights or {"teacher_a": "aa", "teacher_b": "bb", "student": "cc"}},
              "config": {"budget": {"questions": 100}}}
    (run_dir / "row_result.json").write_text(json.dumps(result))
    return {**result, "_path": str(run_dir / "row_result.json")}


DAS = {"candidates": 40, "groups": {"all": {"sentences": {"teacher": 60, "shared": 30, "student": 10}}}}
PER_Q = [{"teacher_tokens": n, "truncated": n > 300} for n in range(50, 650, 5)]


def test_a_row_folder_reports_alone_after_the_caches_are_gone(tmp_path):
    shared = _cache_step(tmp_path, "das_step", das=DAS, key="k1")  # T3b and T5a share this step
    t3b = _row(tmp_path, "T3b", 3, 1, [dict(shared)])
    t5a = _row(tmp_path, "T5a", 5, 1, [dict(shared)])
    t5c = _row(tmp_path, "T5c", 5, 1, [dict(shared), _cache_step(tmp_path, "mixed_step", "mixed", per_q=PER_Q)])
    before = analyze([t3b, t5a, t5c])
    questions = result_questions(t3b)

    # the row folder keeps only ids and accuracies, gzip-compressed; final.results is relative to it
    assert t3b["final"]["results"] == evidence.QUESTIONS_FILE
    lines = gzip.open(Path(t3b["_path"]).parent / evidence.QUESTIONS_FILE, "rt").read().splitlines()
    assert json.loads(lines[0]) == {"id": "q0", "accuracy": 1.0} and len(lines) == 30

    moved = tmp_path / "committed"
    shutil.copytree(tmp_path / "rows", moved)
    shutil.rmtree(tmp_path / "steps")
    shutil.rmtree(tmp_path / "rows")
    rows = []
    for p in sorted(moved.rglob("row_result.json")):
        rows.append({**json.loads(p.read_text()), "_path": str(p)})
    after = analyze(rows)
    assert after["sentence_shares"] == before["sentence_shares"]
    assert after["sentence_shares"]["T=0.6"]["pools"] == 1  # the shared step's pool counted once
    assert after["cutoff_ratio_by_length"] == before["cutoff_ratio_by_length"] is not None
    assert result_questions(next(r for r in rows if r["id"] == "T3b")) == questions


def test_a_step_without_a_local_copy_reads_its_cache_folder(tmp_path):
    entry = _cache_step(tmp_path, "s", das=DAS)
    result = {"steps": [entry], "_path": str(tmp_path / "row_result.json")}
    assert evidence.step_file(result, 0, "das_summary") == Path(entry["dir"]) / "das" / "das_summary.json"
    assert evidence.step_file(result, 0, "mixed_stats") is None
    entry["evidence"] = {"das_summary": "steps/0/das_summary.json"}  # named but gone: not silently the cache's
    assert evidence.step_file(result, 0, "das_summary") is None


def test_rows_of_different_builds_of_one_world_are_not_combined(tmp_path):
    a = _row(tmp_path, "T3a", 3, 1, [_cache_step(tmp_path, "a")])
    b = _row(tmp_path, "T3b", 3, 1, [_cache_step(tmp_path, "b")])
    evidence.check_same_weights([a, b])  # one build
    b["world"]["weights"] = {**b["world"]["weights"], "student": "dd"}
    with pytest.raises(ValueError, match=r"world w1: rows from 2 different builds.*T3a_seed1.*T3b_seed1"):
        evidence.check_same_weights([a, b])
    del b["world"]["weights"]  # a row without a fingerprint is not checked
    evidence.check_same_weights([a, b])


def test_world_weights_follow_the_bytes(tmp_path):
    for name in evidence.WORLD_MODELS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"\x00" * 3000)
        (tmp_path / name / "config.json").write_text("{}")
    first = evidence.world_weights(tmp_path)
    assert set(first) == set(evidence.WORLD_MODELS)
    (tmp_path / "student" / "model.safetensors").write_bytes(b"\x00" * 2999 + b"\x01")
    second = evidence.world_weights(tmp_path)
    assert second["student"] != first["student"] and second["teacher_a"] == first["teacher_a"]
    (tmp_path / "teacher_b" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="teacher_b has no weight files"):
        evidence.world_weights(tmp_path)


def test_export_rows_copies_what_the_report_reads(tmp_path):
    step = _cache_step(tmp_path, "das_step", das=DAS)
    row = _row(tmp_path, "T3b", 3, 2, [step])
    old = dict(row, final={**row["final"], "results": str(Path(step["dir"]) / "eval" / "results.jsonl")})
    old["steps"] = [{k: v for k, v in step.items() if k != "evidence"}]  # written before row-local copies
    written = evidence.export_rows([row], tmp_path / "export")
    assert [p.name for p in written] == ["T3b_seed2"]
    written_old = evidence.export_rows([{**old, "id": "T3a"}], tmp_path / "export")
    shutil.rmtree(tmp_path / "rows")
    shutil.rmtree(tmp_path / "steps")
    for folder in [*written, *written_old]:
        p = folder / "row_result.json"
        r = {**json.loads(p.read_text()), "_path": str(p)}
        assert r["final"]["results"] == evidence.QUESTIONS_FILE and len(result_questions(r)) == 30
    exported = {**json.loads((written[0] / "row_result.json").read_text()),
                "_path": str(written[0] / "row_result.json")}
    assert analyze([exported])["sentence_shares"]["T=0.6"]["sentences"] == 100
    with pytest.raises(ValueError, match="per-question results .* are missing"):
        evidence.export_rows([row], tmp_path / "again")  # its source folder is gone
