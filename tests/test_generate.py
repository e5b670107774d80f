"""Teacher sampling to training records: format, resume, atomic parts, shard seeds, bad questions, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_jsonl
from wandb_offline import read_history, run_files

from dasd.data.records import RecordError, read_records
from dasd.generation.engine import SamplingConfig
from dasd.generation.hf import HFEngine
from dasd.generation.pipeline import TeacherFormat, generate_shard, make_record, sample_seed, shard_questions
from dasd.generation.questions import read_questions
from dasd.generation.shards import ShardWriter

REPO = Path(__file__).resolve().parent.parent
SAMPLING = SamplingConfig(temperature=1.0, max_tokens=6)
FMT = TeacherFormat(system_prompt="You are a helpful assistant.")


@pytest.fixture(scope="module")
def engine(tiny_path):
    return HFEngine(tiny_path, device="cpu", dtype="float32")


@pytest.fixture
def questions(tmp_path):
    rows = [{"id": f"q{i}", "input": f"What is {i} + {i}?", "domain": "math"} for i in range(5)]
    return read_questions(write_jsonl(tmp_path / "q.jsonl", rows))[0]


def _run(engine, questions, out, k, index=0, count=1):
    writer = ShardWriter(out, index, count)
    counts = generate_shard(engine, shard_questions(questions, index, count), writer, samples_per_question=k,
                            sampling=SAMPLING, seed=42, fmt=FMT, batch_size=3, progress=False)
    return writer, counts


def test_records_are_trainable_and_carry_teacher_fields(engine, questions, tmp_path):
    """Every (question, sample) becomes a released-format record plus token ids, logprobs, finish reason,
    temperature, top_p, seed, model and logprob mode; the shard file reads as training data."""
    writer, counts = _run(engine, questions, tmp_path / "out", k=2)
    path = writer.finalize()
    records, report = read_records(path)
    assert counts["generated"] == 10 and report.kept == 10 and not report.skipped
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert {(r["question_id"], r["sample_index"]) for r in rows} == {(f"q{i}", k) for i in range(5) for k in (0, 1)}
    for r in rows:
        assert len(r["token_ids"]) == len(r["logprobs"]) <= 6 and r["finish_reason"] in ("stop", "length")
        assert (r["temperature"], r["top_p"], r["logprob_mode"], r["model"]) == (1.0, 1.0, "raw", engine.model_name)
        meta = json.loads(r["meta"])
        assert meta["seed"] == r["seed"] == sample_seed(42, r["question_id"], r["sample_index"])
    assert len({r["uuid"] for r in rows}) == 10


def test_resume_skips_finished_pairs_and_draws_the_same_samples(engine, questions, tmp_path):
    """A rerun generates only missing (question, sample) pairs, and the result equals one uninterrupted run."""
    fresh, _ = _run(engine, questions, tmp_path / "a", k=2)
    partial, first = _run(engine, questions[:3], tmp_path / "b", k=1)  # an "interrupted" run
    resumed, second = _run(engine, questions, tmp_path / "b", k=2)
    assert first["generated"] == 3 and second["already_done"] == 3 and second["generated"] == 7
    key = lambda r: (r["question_id"], r["sample_index"])  # noqa: E731
    a = {key(r): r["token_ids"] for r in fresh.rows()}
    b = {key(r): r["token_ids"] for r in resumed.rows()}
    assert a == b


def test_killed_part_write_leaves_nothing_behind(engine, questions, tmp_path):
    """A temporary part left by a kill mid-write is never read, and finalize merges parts without duplicates."""
    writer, _ = _run(engine, questions, tmp_path / "out", k=1)
    (writer.parts_dir / ".part-000009.jsonl.tmp").write_text('{"question_id": "q0", "sampl')
    assert len(list(writer.rows())) == 5
    final = writer.finalize()
    assert len(final.read_text().splitlines()) == 5 and not writer.parts_dir.exists()
    again = ShardWriter(tmp_path / "out", 0, 1)
    assert again.done_keys() == {(f"q{i}", 0) for i in range(5)}


def test_shards_partition_questions_with_distinct_seeds(engine, questions, tmp_path):
    """Two data-parallel shards cover every question once, and no two samples share a seed."""
    rows = []
    for index in (0, 1):
        writer, _ = _run(engine, questions, tmp_path / "out", k=2, index=index, count=2)
        rows += list(writer.rows())
    assert sorted(r["question_id"] for r in rows) == sorted(f"q{i}" for i in range(5) for _ in range(2))
    assert len({r["seed"] for r in rows}) == len(rows)


def test_bad_questions_name_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "input": "ok?"}, {"id": "b"}, "[1, 2", {"id": "a", "input": "dup"},
                                              {"input": "fine"}])
    with pytest.raises(RecordError, match=rf"{path}:2: field 'input': missing"):
        read_questions(path)
    kept, report = read_questions(path, on_error="skip")
    assert [q.input for q in kept] == ["ok?", "fine"] and sum(report.skipped.values()) == 3
    assert any(":4: field 'id': duplicate" in s for s in report.messages())
    with pytest.raises(FileNotFoundError, match="questions file not found"):
        read_questions(tmp_path / "missing.jsonl")


def test_generate_cli_writes_data_summary_and_wandb(tmp_path):
    """`python generate.py ...` writes a trainable shard, a summary with the truncation rate, the length and
    response-probability histograms (PNG) and an offline W&B run with the summary."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, str(REPO / "generate.py"), f"paths.root_dir={tmp_path}", "max_questions=4",
           "samples_per_question=2", "sampling.max_tokens=8", "temperature=high", "progress=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "default" / "generate_T1.0_shard0"
    summary = json.loads((run_dir / "generation_summary.json").read_text())
    assert summary["samples"] == 8 and 0 <= summary["truncation_rate"] <= 1
    assert (run_dir / "generation_summary.png").stat().st_size > 1000
    rows = [json.loads(x) for x in (run_dir / "data" / "shard-00000-of-00001.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["temperature"] == 1.0 for r in rows)
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "completed"
    logged = {k for h in read_history(run_files(run_dir)[-1]) for k in h}
    assert {"generate/summary/path", "generate/response_probability/values"} <= logged


def test_harmony_teacher_records_are_converted_and_flagged():
    """A gpt-oss (harmony) completion becomes `<think>analysis</think>final` with a char span per teacher
    token, and a completion with a tool call is flagged."""
    from test_harmony import CALL, CHANNEL, END, MESSAGE, RETURN, START, _harmony_tokenizer, enc

    from dasd.generation.engine import Sample
    from dasd.generation.questions import Question

    tok = _harmony_tokenizer()
    q = Question(id="q", input="2+2?", domain="math", meta={}, source="x:1")
    fmt = TeacherFormat(kind="harmony")
    ok = enc(tok, CHANNEL, "analysis", MESSAGE, "Add them.", END, START, "assistant", CHANNEL, "final", MESSAGE,
             "\\boxed{4}", RETURN)
    tool = enc(tok, CHANNEL, "analysis", " to=python", MESSAGE, "print(2+2)", CALL)
    rows = [make_record(q, k, Sample(text="", token_ids=ids, logprobs=[-0.1] * len(ids), finish_reason="stop",
                                     prompt_token_ids=[1], logprob_mode="raw"), 7, SAMPLING, "gpt-oss", fmt, tok)
            for k, ids in enumerate((ok, tool))]
    assert rows[0]["output"] == "<think>\nAdd them.\n</think>\n\n\\boxed{4}" and not rows[0]["has_tool_call"]
    spans = [s for s in rows[0]["token_spans"] if s]
    assert "".join(rows[0]["output"][a:b] for a, b in spans) == "Add them.\\boxed{4}"
    assert len(rows[0]["token_spans"]) == len(rows[0]["token_ids"])
    assert rows[1]["has_tool_call"] and rows[0]["format"] == "harmony"


def test_missing_vllm_is_a_clear_error(tiny_path):
    """Without vLLM installed, engine=vllm says how to install it."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    from dasd.generation.vllm_engine import VLLMEngine

    with pytest.raises(ImportError, match="setup.sh vllm"):
        VLLMEngine(tiny_path)
