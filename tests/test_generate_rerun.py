"""Rerunning generate.py into the same output: finished samples are reused only when every setting that
determines a sample is the same (recorded beside the shard at its first write); any other setting, fewer or
changed questions, fewer samples or another shard count stop the run with the differences named, and nothing is
mixed. A run killed in the middle resumes without duplicates and ends as an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_jsonl
from test_config import compose_cfg

from dasd.recipes import generate as generation_run
from dasd.recipes.generate import generate

REPO = Path(__file__).resolve().parent.parent
BASE = ["logger=csv", "max_questions=4", "samples_per_question=2", "sampling.max_tokens=6", "progress=false",
        "batch_size=3", "engine.device=cpu", "engine.dtype=float32"]
SHARD = "shard-00000-of-00001"


def _generate(tmp_path: Path, *overrides: str) -> dict:
    return generate(compose_cfg([*BASE, *overrides], tmp_path, name="generate"))


def _rows(tmp_path: Path, stem: str = SHARD) -> list[dict]:
    path = tmp_path / "run" / "data" / f"{stem}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()]


def _other_teacher(tmp_path: Path, tiny_path: str) -> str:
    copy = tmp_path / "other_teacher"
    shutil.copytree(tiny_path, copy)
    return str(copy)


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """A finished output with the base settings (copied per test)."""
    root = tmp_path_factory.mktemp("done")
    _generate(root)
    return root


@pytest.fixture
def out(done, tmp_path) -> Path:
    shutil.copytree(done / "run", tmp_path / "run")
    return tmp_path


CHANGES = {  # override -> the setting the refusal names
    "seed=7": "seed: 42 -> 7",
    "sampling.max_tokens=5": "sampling.max_tokens: 6 -> 5",
    "temperature=high": "sampling.temperature: 0.6 -> 1.0",
    "sampling.top_p=0.9": "sampling.top_p: 1.0 -> 0.9",
    "sampling.top_k=5": "sampling.top_k: 0 -> 5",
    "sampling.min_p=0.1": "sampling.min_p: 0.0 -> 0.1",
    "sampling.repetition_penalty=1.1": "sampling.repetition_penalty: 1.0 -> 1.1",
    "sampling.stop=[Answer]": "sampling.stop: [] -> ['Answer']",
    "sampling.logprob_mode=processed": "sampling.logprob_mode: 'raw' -> 'processed'",
    "teacher.format=harmony": "format.kind: 'plain' -> 'harmony'",
    "teacher.system_prompt=Be brief.": "format.system_prompt: None -> 'Be brief.'",
    "+teacher.chat_template_kwargs.enable_thinking=true": "format.chat_template_kwargs.enable_thinking",
    "engine.dtype=bfloat16": "engine.dtype: 'float32' -> 'bfloat16'",
}


@pytest.mark.parametrize("override", list(CHANGES))
def test_each_other_setting_is_refused_and_nothing_is_mixed(out, override):
    before = _rows(out)
    with pytest.raises(ValueError, match="generated with other settings") as e:
        _generate(out, override)
    assert CHANGES[override] in str(e.value) and "overwrite=true" in str(e.value)
    assert _rows(out) == before  # untouched


def test_another_teacher_is_refused(out, tiny_path):
    other = _other_teacher(out, tiny_path)
    with pytest.raises(ValueError, match=f"model: '{tiny_path}' -> '{other}'"):
        _generate(out, f"teacher.name_or_path={other}")


@pytest.mark.parametrize("change", ["questions", "fewer_questions", "fewer_samples"])
def test_samples_of_other_questions_are_refused(out, change):
    """Samples of a question asked differently (another file with the same ids), or of questions or samples this
    run does not ask for, are not this run's: refused. More questions or samples only extend (seeds per sample)."""
    overrides = {"fewer_questions": ["max_questions=2"], "fewer_samples": ["samples_per_question=1"]}.get(change, [])
    if change == "questions":
        rows = [{"id": r["question_id"], "input": r["input"] + " Explain.", "domain": r["domain"]}
                for r in _rows(out) if r["sample_index"] == 0]
        overrides = [f"questions={write_jsonl(out / 'q.jsonl', rows)}"]
    with pytest.raises(ValueError, match="samples of questions this run does not ask"):
        _generate(out, *overrides)


def test_same_settings_reuse_and_more_samples_extend(out, done, tmp_path_factory):
    """A rerun with the same settings generates nothing; one with more questions and samples generates only the
    new pairs, and equals a fresh run with those settings."""
    again = _generate(out)
    assert again["generated"] == 0 and again["already_done"] == 8 and _rows(out) == _rows(done)
    more = _generate(out, "max_questions=5", "samples_per_question=3")
    assert more["already_done"] == 8 and more["generated"] == 7
    fresh = tmp_path_factory.mktemp("fresh")
    _generate(fresh, "max_questions=5", "samples_per_question=3")
    key = lambda r: (r["question_id"], r["sample_index"])  # noqa: E731
    assert sorted(_rows(out), key=key) == sorted(_rows(fresh), key=key)


def test_overwrite_replaces_the_samples_of_other_settings(out):
    result = _generate(out, "seed=7", "overwrite=true")
    rows = _rows(out)
    assert result["generated"] == 8 and len(rows) == 8 and all(json.loads(r["meta"])["seed"] == r["seed"] for r in rows)
    settings = json.loads((out / "run" / "data" / f"{SHARD}.settings.json").read_text())
    assert settings["seed"] == 7


def test_another_shard_count_is_refused(tmp_path):
    """Shards of two splits of the questions in one folder would duplicate questions: refused; overwrite=true
    removes the other split."""
    data = tmp_path / "data"
    _generate(tmp_path, f"output_dir={data}", "shard.count=2", "shard.index=0")
    with pytest.raises(ValueError, match=r"shards of another shard count \(shard-00000-of-00002"):
        _generate(tmp_path, f"output_dir={data}")
    _generate(tmp_path, f"output_dir={data}", "overwrite=true")
    shown = sorted(p.name for p in data.iterdir() if not p.name.startswith("."))  # the .locks folder stays
    assert shown == [f"{SHARD}.jsonl", f"{SHARD}.settings.json"]


def test_output_without_a_settings_record_is_refused(out):
    (out / "run" / "data" / f"{SHARD}.settings.json").unlink()
    with pytest.raises(ValueError, match="without a record of their settings"):
        _generate(out)


class _Killed(Exception):
    pass


def test_killed_run_resumes_without_duplicates(tmp_path, done, monkeypatch):
    """A run that dies after its first batch resumes with the same settings: no duplicates, nothing lost, the
    same samples as an uninterrupted run."""
    real = generation_run.instantiate

    def dying(cfg):
        engine, calls = real(cfg), []
        generate_batch = engine.generate

        def once(*args, **kwargs):
            calls.append(1)
            if len(calls) > 1:
                raise _Killed
            return generate_batch(*args, **kwargs)

        engine.generate = once
        return engine

    monkeypatch.setattr(generation_run, "instantiate", dying)
    with pytest.raises(_Killed):
        _generate(tmp_path)
    monkeypatch.setattr(generation_run, "instantiate", real)
    resumed = _generate(tmp_path)
    assert resumed["already_done"] == 3 and resumed["generated"] == 5
    rows = _rows(tmp_path)
    assert len({(r["question_id"], r["sample_index"]) for r in rows}) == len(rows) == 8
    assert rows == _rows(done)


@pytest.mark.slow  # a generate.py process (~20 s on a busy 2-core machine)
def test_cli_names_the_differences(out):
    """`python generate.py` with another temperature into a finished output stops with the settings named."""
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "generate.py"), *BASE, f"paths.root_dir={out}", f"paths.run_dir={out}/run",
           "temperature=high"]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "sampling.temperature: 0.6 -> 1.0" in proc.stderr and "overwrite=true" in proc.stderr
