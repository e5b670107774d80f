"""Streaming readers for the three teacher sources, all yielding one type: ``TeacherRecord``.

* ``iter_released``: the released SFT JSONL (spec §8.1), string fields uuid, input, output, domain, meta.
* ``iter_generated``: shards written by generate.py (``pipeline.make_record``): the released fields plus
  token_ids, logprobs, finish_reason, has_tool_call and provenance (kept in ``TeacherRecord.extra``).
* ``iter_logprobs``: the released Logprob Parquet (spec §8.2), columns sample_uuid, token_ids (teacher
  tokenizer), logprobs; ``join_logprobs`` attaches its rows to records by ``uuid == sample_uuid``.

Errors. Every problem is a ``SourceError`` (a ``RecordError``) naming ``file:line`` (JSONL, 1-based) or
``file:row N`` (Parquet, 0-based row of the file), the field, and a ``reason`` (``schema``, ``json``,
``utf-8``, ``duplicate``, ``length_mismatch``, ``non_finite``, ``positive_logprob``,
``negative_token_id``, ``missing_logprobs``, ``missing_record``). ``on_error="raise"`` stops at the first
one; ``"skip"`` skips the item and counts it per reason in a ``SourceReport`` (pass one in to read it
afterwards). A Parquet file missing a column or with a wrong column type always raises.

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

import json
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dasd.data.records import ON_ERROR, REQUIRED_FIELDS, Record, RecordError, iter_jsonl
from dasd.data.records import check_record as _check_released

POSITIVE_LOGPROB_TOLERANCE = 1e-6
FINISH_REASONS = ("stop", "length")
GENERATED_FIELDS = ("token_ids", "logprobs", "finish_reason", "has_tool_call")
LOGPROB_COLUMNS = ("sample_uuid", "token_ids", "logprobs")
MAX_EXAMPLES = 5


class SourceError(RecordError):
    """A bad item, located by file and line (JSONL), row (Parquet) or the file alone, with a field and a reason."""

    def __init__(self, path: str | Path, where: int | None, field: str, problem: str, reason: str,
                 unit: str = "line") -> None:
        self.path, self.line, self.field, self.problem = str(path), where or 0, field, problem
        self.reason, self.unit = reason, unit
        loc = f"{path}" if where is None else f"{path}:{where}" if unit == "line" else f"{path}:row {where}"
        ValueError.__init__(self, f"{loc}: field '{field}': {problem}")


@dataclass(frozen=True, eq=False)
class TeacherRecord:
    """One teacher response, from any of the three sources.

    record: the released fields and ``record.source`` = ``file:line``.
    token_ids, logprobs: the sampled teacher tokens (teacher tokenizer) and the natural-log probability of
        each, 1-D int64 / float64 arrays of equal length; None for released JSONL until ``join_logprobs``.
    finish_reason ("stop"/"length") and has_tool_call: generated shards only, else None.
    extra: every other field of a generated record (temperature, top_p, seed, model, logprob_mode,
        question_id, sample_index, token_spans, ...) as parsed from JSON; empty for released records.
    """

    record: Record
    token_ids: np.ndarray | None = None
    logprobs: np.ndarray | None = None
    finish_reason: str | None = None
    has_tool_call: bool | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class SourceReport:
    """What a reader kept and skipped: counts per skip reason and the first few messages of each."""

    path: str
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    sha256: str = ""  # of the whole JSONL file, set once the iterator is exhausted

    def skip(self, error: RecordError) -> None:
        reason = getattr(error, "reason", "schema")
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(str(error))

    def summary(self) -> dict:
        return {"path": self.path, "read": self.read, "kept": self.kept, "skipped": sum(self.skipped.values()),
                "skip_reasons": dict(self.skipped), "examples": {k: list(v) for k, v in self.examples.items()},
                "sha256": self.sha256}


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def _handle(error: SourceError, on_error: str, report: SourceReport) -> None:
    if on_error == "raise":
        raise error
    report.skip(error)


# ---------------------------------------------------------------- validation shared by JSONL and Parquet


def _check_arrays(token_ids: np.ndarray, logprobs: np.ndarray, err: Callable[..., SourceError]) -> None:
    """Equal lengths, non-negative token ids, finite logprobs <= POSITIVE_LOGPROB_TOLERANCE."""
    if len(logprobs) != len(token_ids):
        raise err("logprobs", f"{len(logprobs)} logprobs for {len(token_ids)} token_ids", "length_mismatch")
    negative = np.flatnonzero(token_ids < 0)
    if negative.size:
        k = int(negative[0])
        raise err("token_ids", f"negative token id {int(token_ids[k])} at position {k}", "negative_token_id")
    bad = np.flatnonzero(~np.isfinite(logprobs))
    if bad.size:
        k = int(bad[0])
        raise err("logprobs", f"non-finite logprob {logprobs[k]} at position {k}", "non_finite")
    positive = np.flatnonzero(logprobs > POSITIVE_LOGPROB_TOLERANCE)
    if positive.size:
        k = int(positive[0])
        raise err("logprobs", f"positive logprob {logprobs[k]} at position {k} (a log-probability is <= 0)",
                  "positive_logprob")


def _json_array(value: object, name: str, kinds: str, dtype: type, err: Callable[..., SourceError]) -> np.ndarray:
    """A JSON list of numbers as a 1-D array; ``kinds`` are the numpy dtype kinds accepted."""
    if not isinstance(value, list):
        raise err(name, f"expected a list, got {type(value).__name__}", "schema")
    if not value:
        return np.zeros(0, dtype=dtype)
    try:
        arr = np.asarray(value)
    except ValueError:
        arr = np.zeros((0, 0))
    if arr.ndim != 1 or arr.dtype.kind not in kinds:
        what = "integers" if kinds == "iu" else "numbers"
        raise err(name, f"expected a flat list of {what}", "schema")
    return arr.astype(dtype, copy=False)


# ---------------------------------------------------------------- JSONL sources


def _decode(raw: bytes, path: Path, line: int) -> object:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(path, line, "<utf-8>", f"invalid UTF-8 bytes {raw[e.start:e.end]!r} at byte {e.start}",
                          "utf-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SourceError(path, line, "<json>", f"malformed JSON ({e})", "json") from None


def _released_record(obj: object, path: Path, line: int) -> Record:
    """The 5 string fields (non-empty input/output), each encodable as UTF-8 (no lone surrogates)."""
    try:
        record = _check_released(obj, path, line)
    except RecordError as e:
        raise SourceError(path, line, e.field, e.problem, "schema") from None
    for name in REQUIRED_FIELDS:
        try:
            obj[name].encode("utf-8")
        except UnicodeEncodeError as e:
            raise SourceError(path, line, name, f"not valid Unicode (lone surrogate at character {e.start})",
                              "utf-8") from None
    return record


def _parse_released(obj: object, path: Path, line: int) -> TeacherRecord:
    return TeacherRecord(record=_released_record(obj, path, line))


def _parse_generated(obj: object, path: Path, line: int) -> TeacherRecord:
    """A generate.py record: the released fields plus the teacher's tokens, logprobs and flags."""
    record = _released_record(obj, path, line)
    err = partial(SourceError, path, line)
    for name in GENERATED_FIELDS:
        if name not in obj:
            raise err(name, "missing", "schema")
    token_ids = _json_array(obj["token_ids"], "token_ids", "iu", np.int64, err)
    logprobs = _json_array(obj["logprobs"], "logprobs", "iuf", np.float64, err)
    _check_arrays(token_ids, logprobs, err)
    if obj["finish_reason"] not in FINISH_REASONS:
        raise err("finish_reason", f"expected one of {FINISH_REASONS}, got {obj['finish_reason']!r}", "schema")
    if not isinstance(obj["has_tool_call"], bool):
        raise err("has_tool_call", f"expected a boolean, got {type(obj['has_tool_call']).__name__}", "schema")
    extra = {k: v for k, v in obj.items() if k not in REQUIRED_FIELDS and k not in GENERATED_FIELDS}
    return TeacherRecord(record, token_ids, logprobs, obj["finish_reason"], obj["has_tool_call"], extra)


def _iter_jsonl(path: str | Path, parse: Callable[[object, Path, int], TeacherRecord], on_error: str,
                report: SourceReport | None) -> Iterator[TeacherRecord]:
    """Stream a JSONL file through ``parse`` (``records.iter_jsonl``); rejects duplicate uuids (keeps a set)."""
    _check_on_error(on_error)
    report = SourceReport(str(path)) if report is None else report
    seen: set[str] = set()

    def checked(obj: object, path: Path, line: int) -> TeacherRecord:
        item = parse(obj, path, line)
        if item.record.uuid in seen:
            raise SourceError(path, line, "uuid", f"duplicate uuid {item.record.uuid!r} (seen on an earlier line)",
                              "duplicate")
        seen.add(item.record.uuid)
        return item

    return iter_jsonl(path, checked, on_error, report, decode=_decode)


def iter_released(path: str | Path, on_error: str = "raise",
                  report: SourceReport | None = None) -> Iterator[TeacherRecord]:
    """Stream a released SFT JSONL file (uuid, input, output, domain, meta; all strings)."""
    return _iter_jsonl(path, _parse_released, on_error, report)


def iter_generated(path: str | Path, on_error: str = "raise",
                   report: SourceReport | None = None) -> Iterator[TeacherRecord]:
    """Stream a generate.py shard: released fields + token_ids, logprobs, finish_reason, has_tool_call."""
    return _iter_jsonl(path, _parse_generated, on_error, report)


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
    _check_arrays(token_ids, logprobs, err)
    return uuid, token_ids, logprobs


def iter_logprobs(path: str | Path, on_error: str = "raise", report: SourceReport | None = None,
                  batch_size: int = 64) -> Iterator[tuple[str, np.ndarray, np.ndarray, int]]:
    """Stream the Logprob Parquet as ``(sample_uuid, token_ids, logprobs, row)``, ``batch_size`` rows at a time.

    token_ids are int64, logprobs float64 (own copies); ``row`` is the 0-based row in the file.
    Duplicate sample_uuids are rejected (a set of the uuids seen is kept).
    """
    _check_on_error(on_error)
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


def join_logprobs(records: Iterable[TeacherRecord], logprob_path: str | Path, on_error: str = "raise",
                  report: SourceReport | None = None, cache_row_groups: int = 2) -> Iterator[TeacherRecord]:
    """Attach the Parquet row with ``sample_uuid == record.uuid`` to each record (token_ids, logprobs).

    A record without a row (``missing_logprobs``) or whose row is invalid is skipped or raises; once the
    records are exhausted, each row no record asked for is a ``missing_record`` (named by file:row).
    The report counts records (read/kept) and the rows' problems; see the module docstring for memory.
    """
    _check_on_error(on_error)
    logprob_path = Path(logprob_path)
    report = SourceReport(str(logprob_path)) if report is None else report
    index = _LogprobIndex(logprob_path, on_error, report, cache_row_groups)
    for item in records:
        report.read += 1
        try:
            row = index.fetch(item.record.uuid)
            if row is None:
                raise _missing_logprobs(item, logprob_path)
        except SourceError as e:
            _handle(e, on_error, report)
            continue
        report.kept += 1
        yield replace(item, token_ids=row[1], logprobs=row[2])
    for row_no, uuid in index.unjoined():
        _handle(SourceError(logprob_path, row_no, "sample_uuid", f"no record with uuid {uuid!r}", "missing_record",
                            unit="row"), on_error, report)
