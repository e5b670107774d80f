"""Mixed-policy distillation through the CLI: a revision round between two epochs adds its samples to the next
epoch, and stage=mixed trains on revised plus off-policy samples (tiny models, CPU, HF engine)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from cli import kill_after_checkpoint, metrics, run_train
from wandb_offline import read_history, run_files

from dasd.data.records import Record
from dasd.data.template import STUDENT_PREFIX_KEY, ChatTemplater
from dasd.models.student import asset_path, load_tokenizer

# tiny_base writes <think>...</think> answers, so the curation filters keep most continuations; a 0.5x budget
# makes most rollouts hit their limit, so every round has a teacher part to test
SMALL = ["student=tiny_base", "mixed.n_questions=12", "mixed.cap_factor=0.5", "mixed.teacher.max_tokens=256"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def check_round(folder: Path) -> list[dict]:
    """Every kept record is the student's own rollout text up to a cut in [ceil(L/2), L-1], then the teacher."""
    records, rollouts = read_jsonl(folder / "mixed.jsonl"), {r["uuid"]: r for r in read_jsonl(folder / "rollouts.jsonl")}
    stats = json.loads((folder / "stats.json").read_text())
    assert (folder / "cutoff_ratio.png").stat().st_size > 0
    assert stats["questions"] == 12 and stats["truncated"] == sum(r["finish_reason"] == "length" for r in rollouts.values())
    assert 0 < stats["kept"] == len(records) <= stats["continued"] <= stats["truncated"]
    for rec in records:
        meta = json.loads(rec["meta"])
        b, cut, rollout = meta[STUDENT_PREFIX_KEY], meta["cut"], rollouts[meta["source_uuid"]]
        assert rollout["finish_reason"] == "length" and rollout["length"] == cut["length"] <= rollout["cap"]
        assert math.ceil(cut["length"] / 2) <= cut["index"] <= cut["raw"] <= cut["length"] - 1
        assert (rollout["lead"] + rollout["text"]).startswith(rec["output"][:b])
        assert rec["finish_reason"] == "stop" and rec["output"][b:]
        assert 1 <= meta["continuation_budget"] <= 256  # mixed.teacher.max_tokens, bounded by data.cutoff_len
        assert len(rec["teacher_token_ids"]) <= meta["continuation_budget"]
    assert sum(stats["skipped"].values()) + stats["continued"] == stats["truncated"] - sum(
        r["finish_reason"] == "length" and r["length"] < 2 for r in rollouts.values())  # every drop counted
    return records


def supervised_tokens(records: list[dict], tokenizer) -> int:
    t = ChatTemplater(tokenizer)
    return sum(t.render(Record(r["uuid"], r["input"], r["output"], r["domain"], r["meta"])).num_supervised
               for r in records)


@pytest.mark.cli
def test_revision_between_epochs_adds_its_samples_to_the_next_epoch(tmp_path):
    run_train(tmp_path, "callbacks=mixed_policy", "train.epochs=2", *SMALL)
    run = tmp_path / "outputs" / "default" / "stage1"
    records = check_round(run / "mixed" / "round_1")
    spec = json.loads((run / "mixed" / "round_1" / "spec.json").read_text())
    assert spec["student"]["model"] == str(run / "checkpoints" / "hf" / "epoch_0")  # this epoch's weights
    rows = metrics(run)
    per_epoch = [sum(r["train/supervised_tokens"] for r in rows if r["epoch"] == e) for e in (0, 1)]
    added = supervised_tokens(records, load_tokenizer(asset_path("tiny_qwen3_base")))
    assert per_epoch[1] == per_epoch[0] + added  # epoch 1 = the stage's data + exactly the round's samples
    assert rows[-1]["train/lr"] == pytest.approx(1e-4, rel=0.05)  # the schedule was stretched to the new end
    history = read_history(run_files(run)[-1])
    logged = [h for h in history if "mixed/kept" in h]
    assert logged and logged[0]["mixed/kept"] == len(records)
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"


@pytest.mark.cli
def test_resume_inside_a_revised_epoch_matches_uninterrupted(tmp_path):
    """Killed during the epoch that trains on a round's samples, a resumed run trains on the same data from the
    same position with the same stretched schedule: its loss and lr trajectories equal the uninterrupted run's."""
    common = ["callbacks=mixed_policy", "train.epochs=2", "train.save_every_n_steps=2", "data.max_samples=48",
              "logger=csv", "mixed.transport=inprocess", *SMALL]
    (tmp_path / "a").mkdir()
    run_train(tmp_path / "a", *common)
    reference = metrics(tmp_path / "a" / "outputs" / "default" / "stage1")
    first_epoch = sum(r["epoch"] == 0 for r in reference)
    out = tmp_path / "b"
    out.mkdir()
    run_dir = out / "outputs" / "default" / "stage1"
    killed_at = kill_after_checkpoint(out, run_dir, first_epoch + 2, *common)
    assert first_epoch < killed_at < len(reference), "the run was not interrupted inside the revised epoch"
    run_train(out, *common)
    resumed = metrics(run_dir)
    assert [r["step"] for r in resumed] == [r["step"] for r in reference]
    assert [r["train/loss"] for r in resumed] == pytest.approx([r["train/loss"] for r in reference], rel=1e-5)
    assert [r["train/lr"] for r in resumed] == pytest.approx([r["train/lr"] for r in reference], rel=1e-6)


@pytest.mark.cli
def test_stage_mixed_trains_one_epoch_on_revised_and_offpolicy_samples(tmp_path):
    common = ["student=tiny_base", "logger=csv", "stage.epochs=1"]
    proc = run_train(tmp_path, "stage=mixed", *common, check=False)
    assert proc.returncode != 0 and "Run that stage first" in proc.stderr
    run_train(tmp_path, "stage=1", *common)
    run_train(tmp_path, "stage=2", *common)
    stage3 = ["stage=mixed", "mixed.extra_offpolicy=8", "logger=csv", "mixed.transport=inprocess", *SMALL]
    run_train(tmp_path, *stage3)
    exp = tmp_path / "outputs" / "default"
    run = exp / "stage3"
    records = check_round(run / "mixed" / "round_0")
    spec = json.loads((run / "mixed" / "round_0" / "spec.json").read_text())
    assert spec["student"]["model"] == str(exp / "stage2" / "checkpoints" / "hf" / "final")
    train = read_jsonl(run / "mixed" / "train.jsonl")
    composition = json.loads((run / "mixed" / "composition.json").read_text())
    assert composition["mixed_policy"] == len(records) and composition["off_policy"] == 8
    assert composition["pool_duplicates_dropped"] == 0  # stage 1 and stage 2 train on different files
    assert train[:len(records)] == records
    pools = {}  # off-policy samples are the stages' selected records, verbatim
    for name in ("pool_T0.6.jsonl", "pool_T1.0.jsonl"):
        pools.update({r["uuid"]: r for r in read_jsonl(Path(asset_path("sample_pool")) / name)})
    assert all(pools[r["uuid"]] == r for r in train[len(records):])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["parent"]["run_dir"] == str(exp / "stage2")
    assert manifest["data"]["selection"]["selected"] == len(train) and manifest["mixed"]["kept"] == len(records)
    assert manifest["data"]["filters"] is None  # the round and the parent runs filtered (and counted) already
    assert "per_question" not in manifest["mixed"] and manifest["mixed"]["composition"] == composition
    assert {r["epoch"] for r in metrics(run)} == {0}  # one epoch
    # a completed stage=mixed returns at once: no parent data rebuilt, no round, no train.jsonl rewritten
    stamps = {p: p.stat().st_mtime_ns for p in (run / "mixed").rglob("*") if p.is_file()}
    again = run_train(tmp_path, *stage3)
    assert "nothing to do" in again.stdout + again.stderr
    assert {p: p.stat().st_mtime_ns for p in (run / "mixed").rglob("*") if p.is_file()} == stamps


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_revision_round_with_vllm_engines(tmp_path):
    """The same callback with vLLM generating both the student rollouts and the teacher continuations, each in
    a child process that exits before training resumes."""
    args = [f"+mixed.{who}.engine_args.{k}={v}" for who in ("student", "teacher")
            for k, v in (("dtype", "float32"), ("max_model_len", 1024))]
    run_train(tmp_path, "callbacks=mixed_policy", "train.epochs=2", "logger=csv", *SMALL,
              "mixed.student.engine=vllm", "mixed.teacher.engine=vllm", *args)
    run = tmp_path / "outputs" / "default" / "stage1"
    records = check_round(run / "mixed" / "round_1")
    rows = metrics(run)
    per_epoch = [sum(r["train/supervised_tokens"] for r in rows if r["epoch"] == e) for e in (0, 1)]
    assert per_epoch[1] == per_epoch[0] + supervised_tokens(records, load_tokenizer(asset_path("tiny_qwen3_base")))
