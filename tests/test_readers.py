"""One reader for every JSONL input, one behaviour (issue 15 item 6), the paper presets' data selection and the
stage-temperature check (item 9)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import make_record, write_jsonl

from dasd.data.datamodule import SFTDataModule, TemperatureCheck, source_rows
from dasd.data.filters import FilterConfig
from dasd.data.records import RecordError, iter_records, read_records
from dasd.data.selection import KeepAllSelector
from dasd.data.sources import SourceReport, iter_generated, iter_released
from dasd.eval.tasks import load_task
from dasd.generation.questions import read_questions

BOM = b"\xef\xbb\xbf"
HARMONY = ("<|channel|>analysis<|message|>We add 1 and 1.<|end|><|start|>assistant<|channel|>final<|message|>"
           "The answer is \\boxed{2}.<|return|>")


def write_bom(path: Path, rows: list[dict]) -> Path:
    path.write_bytes(BOM + "".join(json.dumps(r) + "\n" for r in rows).encode())
    return path


def gen_fields(n: int = 3, **fields) -> dict:
    out = {"token_ids": list(range(n)), "logprobs": [-0.5] * n, "finish_reason": "stop", "has_tool_call": False}
    return {**out, **fields}


def _dm(path: Path, tok, tmp_path: Path, **kwargs) -> SFTDataModule:
    args = {"selector": KeepAllSelector(), "cutoff_len": 512, "cache_dir": str(tmp_path / "cache"), **kwargs}
    dm = SFTDataModule(str(path), tok, **args)
    dm.setup()
    return dm


# ---------------------------------------------------------------- a BOM at the start of a file


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("fmt", ["released", "generated"])
def test_bom_file_loads_every_record(tmp_path, on_error, fmt):
    """A UTF-8 BOM before the first record neither stops the read (strict) nor loses that record (skip); line
    numbers and the file's sha256 (of its bytes, BOM included) are unchanged."""
    rows = [make_record(i, **(gen_fields() if fmt == "generated" else {})) for i in range(3)]
    path = write_bom(tmp_path / "bom.jsonl", rows)
    report = SourceReport(str(path))
    items = list(iter_records(path, fmt, on_error, report))
    assert [t.record.uuid for t in items] == [r["uuid"] for r in rows]
    assert [t.record.source for t in items] == [f"{path}:{n}" for n in (1, 2, 3)]
    assert (report.read, report.kept, dict(report.skipped)) == (3, 3, {})
    import hashlib

    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_bom_is_only_skipped_at_the_start(tmp_path):
    """A BOM in the middle of a file is not a byte-order mark: that line is malformed JSON, located."""
    path = tmp_path / "mid.jsonl"
    path.write_bytes((json.dumps(make_record(1)) + "\n").encode() + BOM + (json.dumps(make_record(2)) + "\n").encode())
    with pytest.raises(RecordError, match=rf"{path}:2: field '<json>'"):
        read_records(path)


def test_bom_everywhere_else_jsonl_is_read(tmp_path, tokenizer):
    """Question files, evaluation record files, the training pipeline and the source-line lookup all use the one
    reader, so a BOM file loads in each."""
    rows = [make_record(i, meta=json.dumps({"answer": str(2 * i)})) for i in range(1, 4)]
    path = write_bom(tmp_path / "bom.jsonl", rows)
    questions, _ = read_questions(path)
    assert [q.id for q in questions] == [r["uuid"] for r in rows]
    items, report = load_task("records", str(path))
    assert len(items) == 3 and [i.reference for i in items] == ["2", "4", "6"]
    dm = _dm(path, tokenizer, tmp_path)
    assert len(dm.samples) == 3 and dm.report()["read"]["kept"] == 3
    assert [r["uuid"] for r in source_rows([f"{path}:1", f"{path}:3"])] == [rows[0]["uuid"], rows[2]["uuid"]]


# ---------------------------------------------------------------- gpt-oss harmony text in a released output


def test_harmony_output_is_converted(tmp_path):
    """A released record whose output is harmony text loads in <think> form, with has_final/has_tool_call from
    the conversion and the conversion counted in the report."""
    path = write_jsonl(tmp_path / "h.jsonl", [make_record(1, output=HARMONY), make_record(2)])
    report = SourceReport(str(path))
    items = list(iter_released(path, report=report))
    assert items[0].record.output == "<think>\nWe add 1 and 1.\n</think>\n\nThe answer is \\boxed{2}."
    assert items[0].converted_from == "harmony" and items[0].extra["has_final"] is True
    assert items[0].has_tool_call is False
    assert items[1].converted_from is None and items[1].record.output == make_record(2)["output"]
    assert report.summary()["converted_from_harmony"] == 1


def test_harmony_records_pass_the_filters_on_the_training_path(tmp_path, tokenizer):
    """Training on released harmony text: the converted record passes the structure filter (it used to be
    dropped as "does not start with <think>"); a harmony tool call is dropped by the tool-call filter."""
    tool = ("<|channel|>analysis<|message|>Let me compute.<|end|><|start|>assistant to=python<|channel|>commentary"
            "<|message|>print(1+1)<|call|><|start|>assistant<|channel|>final<|message|>2<|return|>")
    path = write_jsonl(tmp_path / "h.jsonl", [make_record(1, output=HARMONY), make_record(2, output=tool),
                                              make_record(3)])
    dm = _dm(path, tokenizer, tmp_path, filters=FilterConfig())
    assert sorted(s.uuid for s in dm.samples) == sorted(make_record(i)["uuid"] for i in (1, 3))
    dropped = {k: v["dropped"] for k, v in dm.report()["filters"]["filters"].items()}
    assert dropped["structure"] == 0 and dropped["tool_call"] == 1


def test_empty_harmony_output_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "h.jsonl", [make_record(1, output="<|channel|>analysis<|message|><|end|>")])
    with pytest.raises(RecordError, match=rf"{path}:1: field 'output': harmony text with neither"):
        read_records(path)


# ---------------------------------------------------------------- token_ids/logprobs inline in released records


def test_inline_logprobs_in_released_records_are_used(tmp_path):
    """Released records that carry token_ids/logprobs (and flags) come with them, validated, as generated ones."""
    rows = [make_record(i, **gen_fields(4, finish_reason="length")) for i in range(2)] + [make_record(5)]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    report = SourceReport(str(path))
    items = list(iter_released(path, report=report))
    assert items[0].token_ids.tolist() == [0, 1, 2, 3] and items[0].logprobs.tolist() == [-0.5] * 4
    assert items[0].finish_reason == "length" and items[0].has_tool_call is False
    assert items[2].token_ids is None and items[2].finish_reason is None
    assert report.with_logprobs == 2


@pytest.mark.parametrize("fields,field,reason", [
    ({"token_ids": [1, 2], "logprobs": [-0.1]}, "logprobs", "length_mismatch"),
    ({"token_ids": [1, 2]}, "logprobs", "schema"),
    ({"logprobs": [-0.1]}, "token_ids", "schema"),
    ({"token_ids": [1], "logprobs": [float("nan")]}, "logprobs", "non_finite"),
    ({"finish_reason": "timeout"}, "finish_reason", "schema"),
], ids=["length_mismatch", "ids_only", "logprobs_only", "nan", "finish_reason"])
def test_inline_logprobs_are_validated(tmp_path, fields, field, reason):
    """Bad inline arrays stop the read with file:line:field, or are skipped and counted under their reason."""
    path = write_jsonl(tmp_path / "r.jsonl", [make_record(1), make_record(2, **fields)])
    with pytest.raises(RecordError, match=rf"{path}:2: field '{field}'") as info:
        read_records(path)
    assert info.value.reason == reason
    records, report = read_records(path, on_error="skip")
    assert len(records) == 1 and report.skipped == {reason: 1}


# ---------------------------------------------------------------- a released file read as generated


def test_released_file_read_as_generated_names_data_format(tmp_path, tokenizer):
    """data=sample reads generate.py shards: a released file there stops at file:1:token_ids and says to set
    data.format=released."""
    path = write_jsonl(tmp_path / "r.jsonl", [make_record(1)])
    with pytest.raises(RecordError, match=rf"{path}:1: field 'token_ids': missing .*data.format=released"):
        _dm(path, tokenizer, tmp_path, source_format="generated")
    with pytest.raises(RecordError, match=r"field 'logprobs': missing$"):  # a shard with one field lost: no hint
        list(iter_generated(write_jsonl(tmp_path / "g.jsonl", [make_record(1, token_ids=[1])])))


# ---------------------------------------------------------------- one behaviour


BAD = {
    "duplicate": [make_record(1), make_record(2), make_record(1)],
    "json": [make_record(1), make_record(2), "{oops"],
    "schema": [make_record(1), make_record(2), make_record(3, output=" ")],
    "length_mismatch": [make_record(1), make_record(2), make_record(3, token_ids=[1], logprobs=[])],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_read_records_and_the_training_reader_agree(tmp_path, case):
    """records.read_records (tools, tests) and the training reader stop at the same file:line with the same
    message, and skip (and count) the same records; duplicate uuids included."""
    path = write_jsonl(tmp_path / "bad.jsonl", BAD[case])
    with pytest.raises(RecordError) as a:
        read_records(path)
    with pytest.raises(RecordError) as b:
        list(iter_released(path))
    assert str(a.value) == str(b.value) and a.value.line == 3 and a.value.reason == case
    records, report = read_records(path, on_error="skip")
    lenient = SourceReport(str(path))
    assert [r.uuid for r in records] == [t.record.uuid for t in iter_released(path, "skip", lenient)]
    assert report.summary() == lenient.summary() and report.skipped == {case: 1}


def test_duplicate_question_ids_are_counted_as_duplicates(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "input": "x?"}, {"id": "a", "input": "y?"}])
    _, report = read_questions(path, on_error="skip")
    assert report.skipped == {"duplicate": 1} and ":2: field 'id': duplicate" in report.messages()[0]


# ---------------------------------------------------------------- stage temperature vs record temperature


def test_temperature_check_counts_and_modes(caplog):
    counts = {"1.0": 150}
    with caplog.at_level(logging.WARNING, logger="dasd.data.datamodule"):
        result = TemperatureCheck(0.6, "1").run(counts, "/d/pool.jsonl")
    assert "stage 1 expects T=0.6 but 150 of 150 records were sampled at T=1.0 (data.path=/d/pool.jsonl)" \
        in caplog.text
    assert result == {"expected": 0.6, "mode": "warn", "records": 150, "mismatched": 150, "unknown": 0,
                      "temperatures": counts}
    with pytest.raises(ValueError, match="stage 2 expects T=1.0 but 3 of 10 records were sampled at other "
                                         r"temperatures \(T=0.6: 2, T=0.8: 1\)"):
        TemperatureCheck(1.0, "2", "error").run({"1.0": 5, "0.6": 2, "0.8": 1, "unknown": 2}, "p")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dasd.data.datamodule"):
        assert TemperatureCheck(0.6, "1", "off").run(counts, "p")["mismatched"] == 150
        assert TemperatureCheck(1.0, "2").run({"1.0": 4, "unknown": 1}, "p")["mismatched"] == 0
    assert caplog.text == ""
    with pytest.raises(ValueError, match="data.temperature_check must be one of"):
        TemperatureCheck(0.6, mode="stop")


def test_temperature_check_on_the_training_path(tmp_path, tokenizer, caplog):
    """The records' own temperature (field, else meta.temperature) against the stage's: warned once with the
    counts, recorded in the data report, also on a cache hit; error mode stops."""
    rows = [make_record(i, temperature=1.0) for i in range(3)] + \
        [make_record(5, meta=json.dumps({"temperature": 1.0})), make_record(6)]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    for hit in (False, True):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dasd.data.datamodule"):
            dm = _dm(path, tokenizer, tmp_path, temperature_check=TemperatureCheck(0.6, "1"))
        assert dm.cache_report["hit"] is hit
        assert caplog.text.count("stage 1 expects T=0.6 but 4 of 5 records were sampled at T=1.0") == 1
        report = dm.report()["temperature"]
        assert (report["mismatched"], report["unknown"], report["temperatures"]) == (4, 1, {"1.0": 4, "unknown": 1})
    with pytest.raises(ValueError, match="stage 1 expects T=0.6"):
        _dm(path, tokenizer, tmp_path, temperature_check=TemperatureCheck(0.6, "1", "error"))
    assert _dm(path, tokenizer, tmp_path).report()["temperature"] is None  # no check asked (stage=mixed)


# ---------------------------------------------------------------- the paper presets train the files as released


@pytest.mark.parametrize("preset", ["paper_stage1", "paper_stage2", "paper_30b_a3b_stage1"])
def test_paper_presets_train_every_released_record(preset, tmp_path):
    """The authors trained the released SFT files as released: no re-filtering (filters=none), no selection
    (sampler=all); both stay available as explicit choices on the command line."""
    from test_config import compose_cfg

    cfg = compose_cfg([f"experiment={preset}"], tmp_path)
    assert cfg.sampler._target_ == "dasd.data.selection.KeepAllSelector" and cfg.sampler.name == "all"
    assert list(cfg.filters.order) == []
    assert cfg.data.supervise_eot_newline is True and cfg.data.temperature_check == "warn"
    chosen = compose_cfg([f"experiment={preset}", "sampler=random", "filters=spec"], tmp_path)
    assert chosen.sampler.name == "random" and "structure" in chosen.filters.order
