"""Reading the released record format: round trip, located errors, strict vs lenient mode, provenance."""

from __future__ import annotations

import json
import re

import pytest
from conftest import make_record, write_jsonl

from dasd.data.records import Record, RecordError, read_records

FIELDS = ("uuid", "input", "output", "domain", "meta")


def test_good_file_round_trips(tmp_path):
    """Every record of a good file comes back with its fields verbatim and source = "file:line" (1-based)."""
    rows = [make_record(1), make_record(2, output="<think>\nü ∑ 😀\n</think>\n\nok"), make_record(3)]
    path = write_jsonl(tmp_path / "good.jsonl", [rows[0], "", rows[1], "   ", rows[2]])
    records, report = read_records(path)
    assert len(records) == 3
    assert all(isinstance(r, Record) for r in records)
    for rec, row, line in zip(records, rows, (1, 3, 5), strict=True):
        assert {f: getattr(rec, f) for f in FIELDS} == row
        assert rec.source == f"{path}:{line}"
    assert (report.read, report.kept, sum(report.skipped.values())) == (3, 3, 0)


def test_shipped_sample_file_reads_strictly(sample_file):
    """The shipped sample data is valid in strict mode and nothing is skipped."""
    records, report = read_records(sample_file)
    assert records and report.kept == len(records) == report.read
    assert not report.skipped


def test_missing_file_raises_and_names_path(tmp_path):
    """A missing data file raises FileNotFoundError whose message names the path."""
    path = tmp_path / "nope" / "missing.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        read_records(path)


def test_malformed_json_names_file_line_and_json_field(tmp_path):
    """A malformed JSON line raises RecordError naming file:line (1-based, blank lines counted) and <json>."""
    path = write_jsonl(tmp_path / "bad.jsonl", [make_record(1), "", '{"uuid": "x", "input": ', make_record(2)])
    with pytest.raises(RecordError) as info:
        read_records(path)
    msg = str(info.value)
    assert f"{path}:3" in msg
    assert "<json>" in msg
    assert (info.value.line, info.value.field) == (3, "<json>")


BAD_ROWS = {
    "missing": ({k: v for k, v in make_record(7).items() if k != "domain"}, "domain"),
    "non_string": (make_record(7, meta={"source": "test"}), "meta"),
    "non_string_null": (make_record(7, uuid=None), "uuid"),
    "empty_output": (make_record(7, output=""), "output"),
    "blank_output": (make_record(7, output="  \n\t "), "output"),
    "empty_input": (make_record(7, input=" "), "input"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_field_names_file_line_and_field(tmp_path, case):
    """A missing, non-string or empty field raises RecordError naming file:line and the field."""
    row, field = BAD_ROWS[case]
    path = write_jsonl(tmp_path / "bad.jsonl", [make_record(1), make_record(2), "", row, make_record(3)])
    with pytest.raises(RecordError) as info:
        read_records(path)
    msg = str(info.value)
    assert f"{path}:4" in msg
    assert field in msg
    assert (info.value.line, info.value.field) == (4, field)


def test_non_object_line_is_an_error(tmp_path):
    """Valid JSON that is not an object (e.g. a list) is rejected, located by file:line."""
    path = write_jsonl(tmp_path / "bad.jsonl", [make_record(1), json.dumps([1, 2])])
    with pytest.raises(RecordError, match=re.escape(f"{path}:2")):
        read_records(path)


def test_skip_mode_keeps_good_and_reports_each_skip(tmp_path):
    """on_error="skip" keeps exactly the good records and reports every skip with its file:line."""
    rows = [make_record(1), "{not json", "", make_record(2, output=""), make_record(3),
            {k: v for k, v in make_record(4).items() if k != "uuid"}, make_record(5, domain=5), make_record(6)]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    records, report = read_records(path, on_error="skip")
    assert [r.uuid for r in records] == [make_record(i)["uuid"] for i in (1, 3, 6)]
    assert [r.source for r in records] == [f"{path}:{line}" for line in (1, 5, 8)]
    bad_lines = (2, 4, 6, 7)
    assert sum(report.skipped.values()) == len(bad_lines)
    assert report.skipped == {"json": 1, "schema": 3}
    assert sorted(int(m.split(":")[1]) for m in report.messages()) == list(bad_lines)
    assert (report.read, report.kept) == (7, 3)
    summary = report.summary()
    assert summary["skipped"] == 4 and summary["kept"] == 3 and summary["read"] == 7
    assert sum(summary["skip_reasons"].values()) == 4


def test_strict_mode_stops_at_first_bad_line(tmp_path):
    """on_error="raise" (the default) reports the first bad line, not a later one."""
    path = write_jsonl(tmp_path / "mixed.jsonl", [make_record(1), make_record(2, input=""), "{oops"])
    with pytest.raises(RecordError) as info:
        read_records(path, on_error="raise")
    assert info.value.line == 2 and info.value.field == "input"


@pytest.mark.parametrize("bad", ["ignore", "RAISE", "", None])
def test_invalid_on_error_raises(tmp_path, bad):
    """An on_error value other than "raise"/"skip" is a ValueError, even for a good file."""
    path = write_jsonl(tmp_path / "good.jsonl", [make_record(1)])
    with pytest.raises(ValueError, match="on_error"):
        read_records(path, on_error=bad)


def test_sha256_identifies_content(tmp_path):
    """The report's sha256 is equal for equal content and changes when the file content changes."""
    a = write_jsonl(tmp_path / "a.jsonl", [make_record(1), make_record(2)])
    b = write_jsonl(tmp_path / "b.jsonl", [make_record(1), make_record(2)])
    sha_a, sha_b = read_records(a)[1].sha256, read_records(b)[1].sha256
    assert sha_a == sha_b and len(sha_a) == 64
    write_jsonl(b, [make_record(1), make_record(2, output="a different answer")])
    assert read_records(b)[1].sha256 != sha_a
    write_jsonl(b, [make_record(1), "", make_record(2)])  # even a blank line is a different file
    assert read_records(b)[1].sha256 != sha_a
