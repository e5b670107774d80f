"""Streaming readers for the three teacher sources, all yielding one type: ``TeacherRecord``.

* ``iter_released``: the released SFT JSONL (spec §8.1), string fields uuid, input, output, domain, meta, and
  optionally the teacher's token_ids/logprobs, finish_reason and has_tool_call (used when present).
* ``iter_generated``: shards written by generate.py (``pipeline.make_record``): the released fields plus
  token_ids, logprobs, finish_reason, has_tool_call (required) and provenance (kept in ``TeacherRecord.extra``).
* ``iter_logprobs``: the released Logprob Parquet (spec §8.2), columns sample_uuid, token_ids (teacher
  tokenizer), logprobs; ``join_logprobs`` attaches its rows to records by ``uuid == sample_uuid``.

The two JSONL readers are ``records.iter_records`` (the project's one JSONL reader and record validation: BOM,
UTF-8, JSON, fields, harmony conversion, duplicate uuids; see its module docstring).

Errors. Every problem is a ``SourceError`` (= ``records.RecordError``) naming ``file:line`` (JSONL, 1-based) or
``file:row N`` (Parquet, 0-based row of the file), the field, and a ``reason`` (``schema``, ``json``,
``utf-8``, ``duplicate``, ``length_mismatch``, ``non_finite``, ``positive_logprob``,
``negative_token_id``, ``missing_logprobs``, ``missing_record``, ``logprob_conflict``). ``on_error="raise"``
stops at the first one; ``"skip"`` skips the item and counts it per reason in a ``SourceReport``
(= ``records.ReadReport``; pass one in to read it afterwards). A Parquet file missing a column or with a wrong
column type always raises.

Logprobs must be finite and <= ``POSITIVE_LOGPROB_TOLERANCE`` (1e-6): a log-probability is <= 0, and
float32 log-softmax rounding can give values a few ulps above 0; those are kept as given, not clamped.

Memory. Nothing reads a whole file. JSONL is read line by line; the only state kept is the set of uuids
seen, for duplicate detection (O(#records) ids, ~100 B each, ~45 MB for 435K records). The Parquet is
read batch by batch (``batch_size`` rows decoded at a time). ``join_logprobs`` indexes the Parquet side by
uuid only: a sorted array of the uuids (bytes) and their row numbers (~50 B/row, ~22 MB for 435K rows),
never the arrays; the token_ids/logprobs of a row are decoded on demand, one row group at a time, with the
last ``cache_row_groups`` row groups kept (memory: that many row groups). Records in the Parquet's order
decode each row group once; records in random order may decode a row group per record (slow, not big).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dasd.data.records import (
    POSITIVE_LOGPROB_TOLERANCE,
    ReadReport,
    RecordError,
    TeacherRecord,
    check_arrays,
    check_on_error,
    iter_records,
)

SourceError = RecordError  # one error type for every input: file:line or file:row N, field, reason
SourceReport = ReadReport  # one report type for every reader
LOGPROB_COLUMNS = ("sample_uuid", "token_ids", "logprobs")
__all__ = ["POSITIVE_LOGPROB_TOLERANCE", "SourceError", "SourceReport", "TeacherRecord", "iter_generated",
           "iter_logprobs", "iter_released", "join_logprobs"]


def _handle(error: SourceError, on_error: str, report: SourceReport) -> None:
    if on_error == "raise":
        raise error
    report.skip(error)


def iter_released(path: str | Path, on_error: str = "raise",
                  report: SourceReport | None = None) -> Iterator[TeacherRecord]:
    """Stream a released SFT JSONL file (uuid, input, output, domain, meta; optional token arrays and flags)."""
    return iter_records(path, "released", on_error, report)


def iter_generated(path: str | Path, on_error: str = "raise",
                   report: SourceReport | None = None) -> Iterator[TeacherRecord]:
    """Stream a generate.py shard: released fields + token_ids, logprobs, finish_reason, has_tool_call."""
    return iter_records(path, "generated", on_error, report)


# ---------------------------------------------------------------- Parquet logprobs


def _open_parquet(path: str | Path) -> pq.ParquetFile:
    """Open the Logprob Parquet and check its columns (always raises on a file-level problem)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"logprob file not found: {path}")
    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    checks = {"sample_uuid": (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "string"),
              "token_ids": (lambda t: _is_list_of(t, pa.types.is_integer), "list<int>"),
              "logprobs": (lambda t: _is_list_of(t, pa.types.is_floating), "list<float>")}
    for name, (ok, what) in checks.items():
        if name not in schema.names:
            raise SourceError(path, None, name, "column missing", "schema", unit="file")
        if not ok(schema.field(name).type):
            raise SourceError(path, None, name, f"expected {what}, got {schema.field(name).type}", "schema",
                              unit="file")
    return pf


def _is_list_of(t: pa.DataType, is_value: Callable[[pa.DataType], bool]) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and is_value(t.value_type)


class _ListColumn:
    """A decoded list column of one batch: rows are slices of one flat numpy array."""

    def __init__(self, arr: pa.Array | pa.ChunkedArray, dtype: type) -> None:
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        self.null = arr.is_null().to_numpy(zero_copy_only=False)
        self.offsets = arr.offsets.to_numpy()
        values = arr.values
        self.value_null = values.is_null().to_numpy(zero_copy_only=False) if values.null_count else None
        self.values = values.fill_null(0).to_numpy(zero_copy_only=False).astype(dtype, copy=False)

    def row(self, i: int, name: str, err: Callable[..., SourceError]) -> np.ndarray:
        if self.null[i]:
            raise err(name, "null", "schema")
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        if self.value_null is not None and self.value_null[a:b].any():
            raise err(name, f"null element at position {int(np.argmax(self.value_null[a:b]))}", "schema")
        return self.values[a:b].copy()


def _columns(table: pa.RecordBatch | pa.Table) -> tuple[_ListColumn, _ListColumn]:
    return (_ListColumn(table.column("token_ids"), np.int64), _ListColumn(table.column("logprobs"), np.float64))


def _row(uuid: object, cols: tuple[_ListColumn, _ListColumn], i: int, row: int,
         path: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """Validate row ``i`` of a decoded batch (``row`` is its number in the file)."""
    err = partial(SourceError, path, row, unit="row")
    if not isinstance(uuid, str) or not uuid:
        raise err("sample_uuid", "missing or empty", "schema")
    token_ids, logprobs = cols[0].row(i, "token_ids", err), cols[1].row(i, "logprobs", err)
    check_arrays(token_ids, logprobs, err)
    return uuid, token_ids, logprobs


def iter_logprobs(path: str | Path, on_error: str = "raise", report: SourceReport | None = None,
                  batch_size: int = 64) -> Iterator[tuple[str, np.ndarray, np.ndarray, int]]:
    """Stream the Logprob Parquet as ``(sample_uuid, token_ids, logprobs, row)``, ``batch_size`` rows at a time.

    token_ids are int64, logprobs float64 (own copies); ``row`` is the 0-based row in the file.
    Duplicate sample_uuids are rejected (a set of the uuids seen is kept).
    """
    check_on_error(on_error)
    pf, path = _open_parquet(path), Path(path)
    report = SourceReport(str(path)) if report is None else report
    seen: set[str] = set()
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=list(LOGPROB_COLUMNS)):
        uuids, cols = batch.column("sample_uuid").to_pylist(), _columns(batch)
        for i, uuid in enumerate(uuids):
            report.read += 1
            try:
                item = _row(uuid, cols, i, row, path)
                if uuid in seen:
                    raise SourceError(path, row, "sample_uuid", f"duplicate {uuid!r}", "duplicate", unit="row")
            except SourceError as e:
                _handle(e, on_error, report)
            else:
                seen.add(uuid)
                report.kept += 1
                yield (*item, row)
            row += 1


# ---------------------------------------------------------------- the join


class _LogprobIndex:
    """sample_uuid → row number of the Parquet (uuids only); rows decoded on demand, by row group."""

    def __init__(self, path: str | Path, on_error: str, report: SourceReport, cache_row_groups: int) -> None:
        self.path, self.pf = Path(path), _open_parquet(path)
        sizes = [self.pf.metadata.row_group(g).num_rows for g in range(self.pf.num_row_groups)]
        self.starts = np.cumsum([0, *sizes])
        keys, rows = self._read_uuids(on_error, report)
        order = np.argsort(keys, kind="stable")
        self.keys, self.rows = keys[order], rows[order]
        dup = np.flatnonzero(self.keys[1:] == self.keys[:-1]) + 1
        for k in dup:  # the stable sort puts the first occurrence first; it is the one kept
            _handle(SourceError(self.path, int(self.rows[k]), "sample_uuid", f"duplicate {self.keys[k].decode()!r}",
                                "duplicate", unit="row"), on_error, report)
        keep = np.ones(len(self.keys), dtype=bool)
        keep[dup] = False
        self.keys, self.rows = self.keys[keep], self.rows[keep]
        self.joined = np.zeros(len(self.keys), dtype=bool)
        self.cache: OrderedDict[int, tuple[_ListColumn, _ListColumn]] = OrderedDict()
        self.cache_size = max(1, cache_row_groups)

    def _read_uuids(self, on_error: str, report: SourceReport) -> tuple[np.ndarray, np.ndarray]:
        keys, rows = [], []
        for g in range(self.pf.num_row_groups):
            good: list[tuple[bytes, int]] = []
            for j, u in enumerate(self.pf.read_row_group(g, columns=["sample_uuid"]).column(0).to_pylist()):
                if isinstance(u, str) and u:
                    good.append((u.encode("utf-8"), int(self.starts[g]) + j))
                else:
                    _handle(SourceError(self.path, int(self.starts[g]) + j, "sample_uuid", "missing or empty",
                                        "schema", unit="row"), on_error, report)
            if good:
                keys.append(np.array([k for k, _ in good], dtype=bytes))
                rows.append(np.array([r for _, r in good], dtype=np.int64))
        return (np.concatenate(keys) if keys else np.zeros(0, dtype="S1"),
                np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64))

    def fetch(self, uuid: str) -> tuple[str, np.ndarray, np.ndarray] | None:
        """The validated row of ``uuid`` (raises SourceError for a bad row), or None if there is none."""
        key = uuid.encode("utf-8")
        k = int(np.searchsorted(self.keys, key))
        if k == len(self.keys) or self.keys[k] != key:
            return None
        self.joined[k] = True
        row = int(self.rows[k])
        g = int(np.searchsorted(self.starts, row, side="right")) - 1
        return _row(uuid, self._group(g), row - int(self.starts[g]), row, self.path)

    def _group(self, g: int) -> tuple[_ListColumn, _ListColumn]:
        if g in self.cache:
            self.cache.move_to_end(g)
        else:
            self.cache[g] = _columns(self.pf.read_row_group(g, columns=["token_ids", "logprobs"]))
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return self.cache[g]

    def unjoined(self) -> Iterator[tuple[int, str]]:
        """(row, sample_uuid) of the rows no record asked for, in row order."""
        left = np.flatnonzero(~self.joined)
        for k in left[np.argsort(self.rows[left])]:
            yield int(self.rows[k]), self.keys[k].decode("utf-8")


def _missing_logprobs(item: TeacherRecord, logprob_path: Path) -> SourceError:
    """A record with no logprob row, located at the record's own file:line."""
    src, _, line = item.record.source.rpartition(":")
    problem = f"no row with sample_uuid {item.record.uuid!r} in {logprob_path}"
    if src and line.isdigit():
        return SourceError(src, int(line), "uuid", problem, "missing_logprobs")
    return SourceError(logprob_path, None, "uuid", problem, "missing_logprobs", unit="file")


def _check_inline(item: TeacherRecord, row: tuple[str, np.ndarray, np.ndarray], logprob_path: Path) -> None:
    """A record that carries its own token_ids/logprobs must agree with its Parquet row (logprobs to float32
    precision): two different answers to "what did the teacher sample" are an error, not a silent choice."""
    if item.token_ids is None:
        return
    same = np.array_equal(item.token_ids, row[1]) and len(item.logprobs) == len(row[2]) and \
        np.allclose(item.logprobs, row[2], rtol=1e-6, atol=1e-6)
    if not same:
        src, _, line = item.record.source.rpartition(":")
        raise SourceError(src or logprob_path, int(line) if line.isdigit() else None, "token_ids",
                          f"the record's own token_ids/logprobs differ from the row with sample_uuid "
                          f"{item.record.uuid!r} in {logprob_path}: give them in one place", "logprob_conflict")


def join_logprobs(records: Iterable[TeacherRecord], logprob_path: str | Path, on_error: str = "raise",
                  report: SourceReport | None = None, cache_row_groups: int = 2) -> Iterator[TeacherRecord]:
    """Attach the Parquet row with ``sample_uuid == record.uuid`` to each record (token_ids, logprobs).

    A record without a row (``missing_logprobs``), whose row is invalid, or whose own token_ids/logprobs differ
    from its row (``logprob_conflict``) is skipped or raises; once the records are exhausted, each row no record
    asked for is a ``missing_record`` (named by file:row). The report counts records (read/kept) and the rows'
    problems; see the module docstring for memory.
    """
    check_on_error(on_error)
    logprob_path = Path(logprob_path)
    report = SourceReport(str(logprob_path)) if report is None else report
    index = _LogprobIndex(logprob_path, on_error, report, cache_row_groups)
    for item in records:
        report.read += 1
        try:
            row = index.fetch(item.record.uuid)
            if row is None:
                raise _missing_logprobs(item, logprob_path)
            _check_inline(item, row, logprob_path)
        except SourceError as e:
            _handle(e, on_error, report)
            continue
        report.kept += 1
        yield replace(item, token_ids=row[1], logprobs=row[2])
    for row_no, uuid in index.unjoined():
        _handle(SourceError(logprob_path, row_no, "sample_uuid", f"no record with uuid {uuid!r}", "missing_record",
                            unit="row"), on_error, report)
