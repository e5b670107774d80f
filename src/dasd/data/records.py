"""The one JSONL reader and the one record validation of the project (spec §8.1).

Lines. ``iter_jsonl`` reads every JSONL input (released SFT records, generate.py shards, mixed-policy training
files, question files, evaluation records): in binary mode, split at ``b"\\n"`` only (a ``\\r`` or U+2028 inside a
line never shifts the line numbers), blank lines skipped but counted, a UTF-8 byte-order mark at the start of
the file removed, each line decoded as UTF-8 and parsed as JSON; ``parse(obj, path, line)`` builds the item.

Records. ``iter_records`` validates teacher records, in two formats with one set of rules:

* the released fields ``uuid``, ``input``, ``output``, ``domain``, ``meta``: strings, ``input``/``output``
  non-empty, valid Unicode (no lone surrogates);
* ``token_ids`` + ``logprobs`` (the sampled teacher tokens and their natural-log probabilities: equal-length
  lists, ids >= 0, finite logprobs <= ``POSITIVE_LOGPROB_TOLERANCE``), ``finish_reason`` ("stop"/"length") and
  ``has_tool_call`` (bool): required in ``"generated"`` records (generate.py shards), optional in ``"released"``
  ones, where they are validated and used the same way when present (never ignored);
* an ``output`` in gpt-oss harmony text (``<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>
  final<|message|>…<|return|>``) is converted to ``<think>`` form (``dasd.text.harmony``); its
  ``has_final`` and ``has_tool_call`` come from the conversion;
* a uuid seen on an earlier line is an error.

Every other field is kept in ``TeacherRecord.extra`` as parsed (temperature, seed, question_id, token_spans, ...).

Errors. Every problem is a ``RecordError`` naming ``file:line`` (1-based; Parquet readers: ``file:row N``), the
field and a ``reason`` (``schema``, ``json``, ``utf-8``, ``duplicate``, ``length_mismatch``, ``non_finite``,
``positive_logprob``, ``negative_token_id``, ...). ``on_error="raise"`` stops at the first one; ``"skip"`` skips
the item and counts it per reason in a ``ReadReport`` (with the first ``MAX_EXAMPLES`` messages of each).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

from dasd.text.harmony import parse_harmony_text

REQUIRED_FIELDS = ("uuid", "input", "output", "domain", "meta")
GENERATED_FIELDS = ("token_ids", "logprobs", "finish_reason", "has_tool_call")
FINISH_REASONS = ("stop", "length")
FORMATS = ("released", "generated")
ON_ERROR = ("raise", "skip")
POSITIVE_LOGPROB_TOLERANCE = 1e-6
MAX_EXAMPLES = 5
BOM = b"\xef\xbb\xbf"
HARMONY_MARKERS = ("<|channel|>", "<|message|>")  # a harmony message header; never in <think>-form text
T = TypeVar("T")


class RecordError(ValueError):
    """A bad input item, located by file and 1-based line (``unit="line"``), 0-based Parquet row (``"row"``) or
    the file alone (``line=None``), with the field and a ``reason`` (the skip counters' key)."""

    reason, unit = "schema", "line"  # for subclasses that set their own attributes

    def __init__(self, path: str | Path, line: int | None, field: str, problem: str, reason: str = "schema",
                 unit: str = "line") -> None:
        self.path, self.line, self.field, self.problem = str(path), line or 0, field, problem
        self.reason, self.unit = reason, unit
        loc = f"{path}" if line is None else f"{path}:{line}" if unit == "line" else f"{path}:row {line}"
        super().__init__(f"{loc}: field '{field}': {problem}")


@dataclass(frozen=True)
class Record:
    """One training record: a question (``input``) and a teacher response (``output``)."""

    uuid: str
    input: str
    output: str
    domain: str
    meta: str
    source: str = ""  # "file:line", for error messages further down the pipeline


@dataclass(frozen=True, eq=False)
class TeacherRecord:
    """One teacher response, from any source.

    record: the released fields (``output`` in ``<think>`` form) and ``record.source`` = ``file:line``.
    token_ids, logprobs: the sampled teacher tokens (teacher tokenizer) and the natural-log probability of each,
        1-D int64 / float64 arrays of equal length; None when the record has none (until a Parquet join).
    finish_reason ("stop"/"length") and has_tool_call: None when unknown.
    extra: every other field as parsed from JSON (temperature, top_p, seed, model, question_id, token_spans,
        has_final, ...).
    converted_from: "harmony" when ``output`` was converted from harmony text, else None.
    """

    record: Record
    token_ids: np.ndarray | None = None
    logprobs: np.ndarray | None = None
    finish_reason: str | None = None
    has_tool_call: bool | None = None
    extra: dict = field(default_factory=dict)
    converted_from: str | None = None


@dataclass
class ReadReport:
    """What a reader kept and skipped: counts per skip reason with the first few messages of each; for records
    also the harmony outputs converted, the records with token logprobs and the sampling temperatures."""

    path: str
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    converted: int = 0  # harmony outputs converted to <think> form
    with_logprobs: int = 0  # kept records carrying token_ids/logprobs
    temperatures: Counter = field(default_factory=Counter)  # "0.6" / "unknown" -> kept records
    sha256: str = ""  # of the whole file, set once the iterator is exhausted

    def skip(self, error: RecordError) -> None:
        reason = getattr(error, "reason", "schema")
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(str(error))

    def messages(self) -> list[str]:
        """The example messages of every reason (at most ``MAX_EXAMPLES`` each)."""
        return [m for reason in self.examples for m in self.examples[reason]]

    def summary(self) -> dict:
        return {"path": self.path, "read": self.read, "kept": self.kept, "skipped": sum(self.skipped.values()),
                "skip_reasons": dict(self.skipped), "examples": {k: list(v) for k, v in self.examples.items()},
                "converted_from_harmony": self.converted, "with_logprobs": self.with_logprobs,
                "temperatures": dict(self.temperatures), "sha256": self.sha256}


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


# ---------------------------------------------------------------- lines


def jsonl_lines(path: str | Path, what: str = "data file", digest=None) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)`` of each non-blank line (1-based, blank lines counted); the UTF-8 BOM at the start
    of the file removed. ``digest`` (a hashlib object) is fed every byte of the file, BOM and blank lines too."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if digest is not None:
                digest.update(raw)
            if line_no == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            if raw.strip():
                yield line_no, raw


def decode_line(raw: bytes, path: str | Path, line: int) -> object:
    """One JSONL line as a JSON value; invalid UTF-8 (reason ``utf-8``) or JSON (``json``) is a RecordError."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(path, line, "<utf-8>", f"invalid UTF-8 bytes {raw[e.start:e.end]!r} at byte {e.start}",
                          "utf-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(path, line, "<json>", f"malformed JSON ({e})", "json") from None


def iter_jsonl(path: str | Path, parse: Callable[[object, Path, int], T], on_error: str, report: ReadReport,
               what: str = "data file") -> Iterator[T]:
    """Stream a JSONL file: ``parse(decode_line(line), path, line_no)`` for each non-blank line.

    A ``RecordError`` (bad UTF-8 or JSON, or raised by ``parse``) stops the read (``on_error="raise"``) or is
    counted by ``report.skip`` (``"skip"``). ``report`` counts ``read``/``kept`` and gets the file's ``sha256``.
    """
    check_on_error(on_error)
    path, digest = Path(path), hashlib.sha256()
    for line_no, raw in jsonl_lines(path, what, digest):
        report.read += 1
        try:
            item = parse(decode_line(raw, path, line_no), path, line_no)
        except RecordError as e:
            if on_error == "raise":
                raise
            report.skip(e)
            continue
        report.kept += 1
        yield item
    report.sha256 = digest.hexdigest()


def read_jsonl(path: str | Path, parse: Callable[[object, Path, int], T], on_error: str = "raise",
               what: str = "data file") -> tuple[list[T], ReadReport]:
    """``iter_jsonl`` into a list, with a ``ReadReport`` of what was kept and skipped."""
    check_on_error(on_error)
    report = ReadReport(path=str(path))
    return list(iter_jsonl(path, parse, on_error, report, what)), report


# ---------------------------------------------------------------- arrays (JSONL and Parquet)


def check_arrays(token_ids: np.ndarray, logprobs: np.ndarray, err: Callable[..., RecordError]) -> None:
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


def _json_array(value: object, name: str, kinds: str, dtype: type, err: Callable[..., RecordError]) -> np.ndarray:
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


# ---------------------------------------------------------------- records


def check_record(obj: object, path: Path, line: int) -> Record:
    """The 5 released string fields (non-empty input/output), each valid Unicode; ``output`` as given."""
    if not isinstance(obj, dict):
        raise RecordError(path, line, "<record>", f"expected a JSON object, got {type(obj).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in obj:
            raise RecordError(path, line, name, "missing")
        if not isinstance(obj[name], str):
            raise RecordError(path, line, name, f"expected a string, got {type(obj[name]).__name__}")
        try:
            obj[name].encode("utf-8")
        except UnicodeEncodeError as e:
            raise RecordError(path, line, name, f"not valid Unicode (lone surrogate at character {e.start})",
                              "utf-8") from None
    for name in ("input", "output"):
        if not obj[name].strip():
            raise RecordError(path, line, name, "empty")
    return Record(*(obj[name] for name in REQUIRED_FIELDS), source=f"{path}:{line}")


def is_harmony_text(output: str) -> bool:
    """gpt-oss harmony text (message headers inline) rather than ``<think>`` form."""
    return not output.lstrip().startswith("<think>") and any(m in output for m in HARMONY_MARKERS)


def think_output(output: str) -> str:
    """``output`` in ``<think>`` form: harmony text converted, anything else as it is."""
    return parse_harmony_text(output).output if is_harmony_text(output) else output


def _released_hint(obj: dict, fmt: str) -> str:
    if fmt == "generated" and not any(name in obj for name in GENERATED_FIELDS):
        return (" (this looks like a released-format record: the file is read as data.format=generated; set "
                "data.format=released, or use data=sample_released)")
    return ""


def _arrays(obj: dict, err: Callable[..., RecordError]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """token_ids and logprobs, both or neither (None, None)."""
    if "token_ids" not in obj and "logprobs" not in obj:
        return None, None
    for name, other in (("token_ids", "logprobs"), ("logprobs", "token_ids")):
        if name not in obj:
            raise err(name, f"missing (the record has {other}: give both or neither)", "schema")
    token_ids = _json_array(obj["token_ids"], "token_ids", "iu", np.int64, err)
    logprobs = _json_array(obj["logprobs"], "logprobs", "iuf", np.float64, err)
    check_arrays(token_ids, logprobs, err)
    return token_ids, logprobs


def _flags(obj: dict, err: Callable[..., RecordError]) -> tuple[str | None, bool | None]:
    """finish_reason and has_tool_call, None when absent."""
    finish, tool = obj.get("finish_reason"), obj.get("has_tool_call")
    if "finish_reason" in obj and finish not in FINISH_REASONS:
        raise err("finish_reason", f"expected one of {FINISH_REASONS}, got {finish!r}", "schema")
    if "has_tool_call" in obj and not isinstance(tool, bool):
        raise err("has_tool_call", f"expected a boolean, got {type(tool).__name__}", "schema")
    return finish, tool


def parse_record(obj: object, path: Path, line: int, fmt: str = "released") -> TeacherRecord:
    """One teacher record (module docstring): the released fields, optional (released) or required (generated)
    token arrays and flags, harmony text converted."""
    record = check_record(obj, path, line)
    err = partial(RecordError, path, line)
    if fmt == "generated":
        for name in GENERATED_FIELDS:
            if name not in obj:
                raise err(name, "missing" + _released_hint(obj, fmt), "schema")
    token_ids, logprobs = _arrays(obj, err)
    finish, tool = _flags(obj, err)
    extra = {k: v for k, v in obj.items() if k not in REQUIRED_FIELDS and k not in GENERATED_FIELDS}
    converted = None
    if is_harmony_text(record.output):
        h = parse_harmony_text(record.output)
        if not (h.has_analysis or h.has_final):
            raise err("output", "harmony text with neither an analysis nor a final message", "schema")
        record, converted, tool = replace(record, output=h.output), "harmony", bool(tool) or h.has_tool_call
        extra.setdefault("has_final", h.has_final)
    return TeacherRecord(record, token_ids, logprobs, finish, tool, extra, converted)


def record_temperature(item: TeacherRecord) -> float | None:
    """The sampling temperature the record says it was drawn at: its ``temperature`` field, else
    ``meta.temperature``; None when it says nothing (or not a number)."""
    value = item.extra.get("temperature")
    if value is None and "temperature" in item.record.meta:
        try:
            meta = json.loads(item.record.meta)
        except json.JSONDecodeError:
            meta = None
        value = meta.get("temperature") if isinstance(meta, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def iter_records(path: str | Path, fmt: str = "released", on_error: str = "raise",
                 report: ReadReport | None = None) -> Iterator[TeacherRecord]:
    """Stream a record file (``fmt``: "released" or "generated"); duplicate uuids are errors (a set of the
    uuids seen is kept: O(#records) ids, ~100 B each). ``report`` also counts conversions, records with token
    logprobs and temperatures."""
    if fmt not in FORMATS:
        raise ValueError(f"data.format must be one of {FORMATS}, got {fmt!r}")
    check_on_error(on_error)
    report = ReadReport(str(path)) if report is None else report
    seen: set[str] = set()

    def checked(obj: object, path: Path, line: int) -> TeacherRecord:
        item = parse_record(obj, path, line, fmt)
        if item.record.uuid in seen:
            raise RecordError(path, line, "uuid", f"duplicate uuid {item.record.uuid!r} (seen on an earlier line)",
                              "duplicate")
        seen.add(item.record.uuid)
        t = record_temperature(item)
        report.temperatures["unknown" if t is None else str(t)] += 1
        report.converted += item.converted_from is not None
        report.with_logprobs += item.token_ids is not None
        return item

    return iter_jsonl(path, checked, on_error, report, what="data file (set data.path)")


def read_records(path: str | Path, on_error: str = "raise", fmt: str = "released") -> tuple[list[Record], ReadReport]:
    """Read a record file into ``Record``s (``iter_records``: the training reader's rules), with its report."""
    report = ReadReport(str(path))
    return [t.record for t in iter_records(path, fmt, on_error, report)], report
