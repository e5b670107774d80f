"""Streaming readers of the teacher sources: released JSONL, generate.py shards, the Logprob Parquet, the join."""

from __future__ import annotations

import hashlib
import inspect
import json
import random
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_record, write_jsonl

from dasd.data.sources import (
    SourceError,
    SourceReport,
    TeacherRecord,
    iter_generated,
    iter_logprobs,
    iter_released,
    join_logprobs,
)


def uid(i: int) -> str:
    return make_record(i)["uuid"]


def gen_record(i: int, n: int = 4, **fields) -> dict:
    rec = make_record(i, token_ids=list(range(i, i + n)), logprobs=[-0.1 * (k + 1) for k in range(n)],
                      finish_reason="stop", has_tool_call=False, temperature=0.6, top_p=1.0, seed=7 + i,
                      model="teacher", logprob_mode="processed", question_id=f"q{i}", sample_index=0,
                      token_spans=[[0, 1]] * n)
    rec.update(fields)
    return rec


def lp_rows(n: int) -> dict:
    return {"sample_uuid": [uid(i) for i in range(n)],
            "token_ids": [[i * 10 + k for k in range(i % 4 + 1)] for i in range(n)],
            "logprobs": [[-(i + k) / 10 for k in range(i % 4 + 1)] for i in range(n)]}


def write_parquet(path: Path, cols: dict, row_group_size: int = 3, schema: pa.Schema | None = None) -> Path:
    schema = schema or pa.schema([("sample_uuid", pa.string()), ("token_ids", pa.list_(pa.int64())),
                                  ("logprobs", pa.list_(pa.float32()))])
    pq.write_table(pa.Table.from_pydict(cols, schema=schema), path, row_group_size=row_group_size)
    return path


# ---------------------------------------------------------------- round trips


def test_released_round_trip(tmp_path):
    rows = [make_record(i) for i in range(5)]
    path = write_jsonl(tmp_path / "sft.jsonl", rows[:2] + [""] + rows[2:])  # a blank line is ignored
    report = SourceReport(str(path))
    got = list(iter_released(path, report=report))
    assert all(isinstance(t, TeacherRecord) and t.token_ids is None and t.extra == {} for t in got)
    assert [(t.record.uuid, t.record.input, t.record.output, t.record.domain, t.record.meta) for t in got] == \
        [tuple(r[k] for k in ("uuid", "input", "output", "domain", "meta")) for r in rows]
    assert got[2].record.source == f"{path}:4"
    summary = report.summary()
    assert summary["read"] == summary["kept"] == 5 and summary["skipped"] == 0
    assert summary["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    json.dumps(summary)


def test_generated_round_trip(tmp_path):
    rows = [gen_record(i, n=i + 1) for i in range(4)]
    rows[3]["has_tool_call"], rows[3]["finish_reason"] = True, "length"
    got = list(iter_generated(write_jsonl(tmp_path / "shard.jsonl", rows)))
    for t, r in zip(got, rows, strict=True):
        assert t.token_ids.dtype == np.int64 and t.logprobs.dtype == np.float64
        assert t.token_ids.tolist() == r["token_ids"] and t.logprobs.tolist() == r["logprobs"]
        assert (t.finish_reason, t.has_tool_call) == (r["finish_reason"], r["has_tool_call"])
        assert t.extra["seed"] == r["seed"] and t.extra["token_spans"] == r["token_spans"]
        assert "token_ids" not in t.extra and "uuid" not in t.extra


def test_logprobs_round_trip_across_row_groups(tmp_path):
    cols = lp_rows(11)
    path = write_parquet(tmp_path / "lp.parquet", cols, row_group_size=3)
    assert pq.ParquetFile(path).num_row_groups == 4
    got = list(iter_logprobs(path, batch_size=2))
    assert [g[3] for g in got] == list(range(11)) and [g[0] for g in got] == cols["sample_uuid"]
    for (_, tok, lp, row) in got:
        assert tok.tolist() == cols["token_ids"][row]
        np.testing.assert_allclose(lp, cols["logprobs"][row], rtol=1e-6)


def test_tiny_positive_logprob_is_tolerated(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [gen_record(0, n=2, logprobs=[5e-7, -0.0])])
    assert next(iter_generated(path)).logprobs.tolist() == [5e-7, 0.0]


# ---------------------------------------------------------------- strict mode: file:line / file:row and field

BAD_RELEASED = {
    "missing field": ({"domain": None}, "domain", "schema"),
    "not a string": ({"meta": {"a": 1}}, "meta", "schema"),
    "empty output": ({"output": "  "}, "output", "schema"),
    "lone surrogate": ({"input": "a\ud800b"}, "input", "utf-8"),
}


@pytest.mark.parametrize("case", list(BAD_RELEASED))
def test_released_strict_errors_name_file_line_field(tmp_path, case):
    fields, name, reason = BAD_RELEASED[case]
    bad = make_record(1, **fields)
    if fields.get("domain", 0) is None:
        del bad["domain"]
    path = write_jsonl(tmp_path / "sft.jsonl", [make_record(0), bad, make_record(2)])
    with pytest.raises(SourceError, match=rf"sft.jsonl:2: field '{name}'") as e:
        list(iter_released(path))
    assert (e.value.line, e.value.field, e.value.reason) == (2, name, reason)


def test_released_strict_json_duplicate_and_utf8(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [make_record(0), "{not json"])
    with pytest.raises(SourceError, match=r"a.jsonl:2: field '<json>'"):
        list(iter_released(path))
    path = write_jsonl(tmp_path / "b.jsonl", [make_record(0), make_record(1), make_record(0)])
    with pytest.raises(SourceError, match=r"b.jsonl:3: field 'uuid': duplicate"):
        list(iter_released(path))
    path = tmp_path / "c.jsonl"
    good = json.dumps(make_record(0)).encode()
    path.write_bytes(good + b"\n" + json.dumps(make_record(1)).encode().replace(b"What", b"Wh\xff\xfet") + b"\n")
    with pytest.raises(SourceError, match=r"c.jsonl:2: field '<utf-8>': invalid UTF-8 bytes b'\\xff'") as e:
        list(iter_released(path))
    assert e.value.reason == "utf-8"


BAD_GENERATED = {
    "length": ({"logprobs": [-0.1]}, "logprobs", "length_mismatch"),
    "nan": ({"logprobs": [-0.1, float("nan")]}, "logprobs", "non_finite"),
    "inf": ({"logprobs": [float("-inf"), -0.1]}, "logprobs", "non_finite"),
    "positive": ({"logprobs": [-0.1, 0.01]}, "logprobs", "positive_logprob"),
    "negative id": ({"token_ids": [3, -1]}, "token_ids", "negative_token_id"),
    "float ids": ({"token_ids": [3.5, 1]}, "token_ids", "schema"),
    "string logprob": ({"logprobs": ["-0.1", -0.2]}, "logprobs", "schema"),
    "finish reason": ({"finish_reason": "abort"}, "finish_reason", "schema"),
    "tool call flag": ({"has_tool_call": "no"}, "has_tool_call", "schema"),
    "no token ids": ({"token_ids": None}, "token_ids", "schema"),
}


@pytest.mark.parametrize("case", list(BAD_GENERATED))
def test_generated_strict_errors_name_file_line_field(tmp_path, case):
    fields, name, reason = BAD_GENERATED[case]
    path = write_jsonl(tmp_path / "shard.jsonl", [gen_record(0, n=2), gen_record(1, n=2, **fields)])
    with pytest.raises(SourceError, match=rf"shard.jsonl:2: field '{name}'") as e:
        list(iter_generated(path))
    assert e.value.reason == reason


BAD_ROWS = {
    "null uuid": ("sample_uuid", None, "sample_uuid", "schema"),
    "length": ("logprobs", [-0.1], "logprobs", "length_mismatch"),
    "inf": ("logprobs", [-0.1, float("inf")], "logprobs", "non_finite"),
    "nan": ("logprobs", [float("nan"), -0.1], "logprobs", "non_finite"),
    "positive": ("logprobs", [-0.1, 0.5], "logprobs", "positive_logprob"),
    "negative id": ("token_ids", [1, -5], "token_ids", "negative_token_id"),
    "null element": ("token_ids", [1, None], "token_ids", "schema"),
    "null list": ("logprobs", None, "logprobs", "schema"),
    "duplicate": ("sample_uuid", uid(2), "sample_uuid", "duplicate"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_logprobs_strict_errors_name_file_row_field(tmp_path, case):
    column, value, name, reason = BAD_ROWS[case]
    cols = lp_rows(9)
    cols["token_ids"][7], cols["logprobs"][7] = [1, 2], [-0.1, -0.2]
    cols[column][7] = value  # row 7: in the third row group
    path = write_parquet(tmp_path / "lp.parquet", cols)
    with pytest.raises(SourceError, match=rf"lp.parquet:row 7: field '{name}'") as e:
        list(iter_logprobs(path, batch_size=2))
    assert e.value.reason == reason


def test_logprobs_bad_schema_always_raises(tmp_path):
    cols = lp_rows(3)
    schema = pa.schema([("sample_uuid", pa.string()), ("token_ids", pa.list_(pa.float64())),
                        ("logprobs", pa.list_(pa.float32()))])
    path = write_parquet(tmp_path / "lp.parquet", cols, schema=schema)
    with pytest.raises(SourceError, match=r"lp.parquet: field 'token_ids': expected list<int>"):
        list(iter_logprobs(path, on_error="skip"))
    del cols["logprobs"]
    two = pa.schema([("sample_uuid", pa.string()), ("token_ids", pa.list_(pa.int32()))])
    path = write_parquet(tmp_path / "lp2.parquet", cols, schema=two)
    with pytest.raises(SourceError, match=r"field 'logprobs': column missing"):
        list(iter_logprobs(path, on_error="skip"))


# ---------------------------------------------------------------- lenient mode counts per reason


def test_lenient_jsonl_counts_per_reason(tmp_path):
    path = tmp_path / "shard.jsonl"
    lines = [json.dumps(gen_record(0)), "{oops", json.dumps(gen_record(1, logprobs=[0.5] * 4)),
             json.dumps(gen_record(2)), json.dumps(gen_record(0)), json.dumps(gen_record(3, logprobs=[-1.0])),
             json.dumps(gen_record(4, logprobs=[-1.0, float("nan"), -1, -1])), json.dumps(gen_record(5))]
    raw = "\n".join(lines).encode() + b"\n" + json.dumps(gen_record(6)).encode().replace(b"What", b"\xc3(") + b"\n"
    path.write_bytes(raw)
    report = SourceReport(str(path))
    kept = [t.record.uuid for t in iter_generated(path, on_error="skip", report=report)]
    assert kept == [uid(0), uid(2), uid(5)]
    summary = report.summary()
    assert summary["read"] == 9 and summary["kept"] == 3 and summary["skipped"] == 6
    assert summary["skip_reasons"] == {"json": 1, "positive_logprob": 1, "duplicate": 1, "length_mismatch": 1,
                                       "non_finite": 1, "utf-8": 1}
    assert summary["examples"]["utf-8"][0].startswith(f"{path}:9: field '<utf-8>'")
    assert summary["examples"]["duplicate"][0].startswith(f"{path}:5: field 'uuid'")
    json.dumps(summary)


def test_lenient_parquet_counts_per_reason(tmp_path):
    cols = lp_rows(10)
    cols["logprobs"][1] = [1.0] * len(cols["token_ids"][1])
    cols["logprobs"][4] = [-1.0] * (len(cols["token_ids"][4]) + 1)
    cols["sample_uuid"][8] = uid(0)
    path = write_parquet(tmp_path / "lp.parquet", cols)
    report = SourceReport(str(path))
    rows = [r[3] for r in iter_logprobs(path, on_error="skip", report=report)]
    assert rows == [0, 2, 3, 5, 6, 7, 9]
    assert report.summary()["skip_reasons"] == {"positive_logprob": 1, "length_mismatch": 1, "duplicate": 1}
    assert report.examples["duplicate"] == [f"{path}:row 8: field 'sample_uuid': duplicate {uid(0)!r}"]


# ---------------------------------------------------------------- the join


def test_join_attaches_right_rows_across_row_groups(tmp_path):
    cols = lp_rows(14)
    lp_path = write_parquet(tmp_path / "lp.parquet", cols, row_group_size=3)
    order = list(range(14))
    random.Random(0).shuffle(order)
    path = write_jsonl(tmp_path / "sft.jsonl", [make_record(i) for i in order])
    report = SourceReport(str(lp_path))
    got = list(join_logprobs(iter_released(path), lp_path, report=report, cache_row_groups=1))
    assert [t.record.uuid for t in got] == [uid(i) for i in order]
    for t in got:
        i = cols["sample_uuid"].index(t.record.uuid)
        assert t.token_ids.tolist() == cols["token_ids"][i]
        np.testing.assert_allclose(t.logprobs, cols["logprobs"][i], rtol=1e-6)
    assert report.summary()["kept"] == 14 and report.summary()["skipped"] == 0


def test_join_reports_missing_on_both_sides(tmp_path):
    lp_path = write_parquet(tmp_path / "lp.parquet", lp_rows(8))  # uuids 0..7
    path = write_jsonl(tmp_path / "sft.jsonl", [make_record(i) for i in (6, 1, 42, 3, 99)])
    report = SourceReport(str(lp_path))
    got = [t.record.uuid for t in join_logprobs(iter_released(path), lp_path, on_error="skip", report=report)]
    assert got == [uid(6), uid(1), uid(3)]
    summary = report.summary()
    assert summary["skip_reasons"] == {"missing_logprobs": 2, "missing_record": 5}
    assert summary["examples"]["missing_logprobs"][0].startswith(f"{path}:3: field 'uuid': no row with sample_uuid")
    assert [e.split(": field")[0] for e in summary["examples"]["missing_record"]] == \
        [f"{lp_path}:row {r}" for r in (0, 2, 4, 5, 7)]
    json.dumps(summary)

    with pytest.raises(SourceError, match=rf"sft.jsonl:3: field 'uuid': no row with sample_uuid '{uid(42)}' in "
                                          rf".*lp.parquet"):
        list(join_logprobs(iter_released(path), lp_path))
    only_known = write_jsonl(tmp_path / "known.jsonl", [make_record(i) for i in range(7)])
    with pytest.raises(SourceError, match=rf"lp.parquet:row 7: field 'sample_uuid': no record with uuid '{uid(7)}'"):
        list(join_logprobs(iter_released(only_known), lp_path))


def test_join_bad_row_is_skipped_not_missing(tmp_path):
    cols = lp_rows(6)
    cols["logprobs"][4] = [float("nan")] * len(cols["token_ids"][4])
    lp_path = write_parquet(tmp_path / "lp.parquet", cols)
    path = write_jsonl(tmp_path / "sft.jsonl", [make_record(i) for i in range(6)])
    report = SourceReport(str(lp_path))
    got = [t.record.uuid for t in join_logprobs(iter_released(path), lp_path, on_error="skip", report=report)]
    assert got == [uid(i) for i in (0, 1, 2, 3, 5)]
    assert report.summary()["skip_reasons"] == {"non_finite": 1}
    assert report.examples["non_finite"][0].startswith(f"{lp_path}:row 4: field 'logprobs'")
    with pytest.raises(SourceError, match=r"lp.parquet:row 4: field 'logprobs': non-finite"):
        list(join_logprobs(iter_released(path), lp_path))


def test_join_checks_inline_arrays_against_the_parquet(tmp_path):
    """A record's own token_ids/logprobs that equal its Parquet row (to float32 precision) join; ones that differ
    are a logprob_conflict at the record's file:line, never silently replaced (or skipped and counted)."""
    lp = lp_rows(3)
    lp_path = write_parquet(tmp_path / "lp.parquet", lp)
    same = [gen_record(i, token_ids=lp["token_ids"][i], logprobs=lp["logprobs"][i]) for i in range(3)]
    got = list(join_logprobs(iter_generated(write_jsonl(tmp_path / "same.jsonl", same)), lp_path))
    assert got[2].token_ids.tolist() == lp["token_ids"][2] and got[2].extra["seed"] == 9
    path = write_jsonl(tmp_path / "g.jsonl", [gen_record(i) for i in range(3)])
    with pytest.raises(SourceError, match=r"g.jsonl:1: field 'token_ids': the record's own .* differ"):
        list(join_logprobs(iter_generated(path), lp_path))
    report = SourceReport(str(lp_path))
    assert list(join_logprobs(iter_generated(path), lp_path, on_error="skip", report=report)) == []
    assert report.skipped == {"logprob_conflict": 3}


# ---------------------------------------------------------------- streaming


def test_iterating_a_large_file_streams(tmp_path):
    path = tmp_path / "big.jsonl"
    pad = "x" * 2000
    with path.open("w") as f:
        for i in range(20_000):
            f.write(json.dumps(make_record(i, output=f"<think>{pad}{i}</think> {i}")) + "\n")
    size = path.stat().st_size
    it = iter_released(path)
    assert inspect.isgenerator(it)
    tracemalloc.start()
    try:
        count = sum(1 for _ in it)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert peak < 0.25 * size, (peak, size)
