"""Reading the released record format (JSONL: uuid, input, output, domain, meta; spec §8.1).

Every problem with the input is reported as ``file:line: field``. In strict mode (``on_error="raise"``)
the first problem stops the run; in lenient mode (``on_error="skip"``) the record is skipped, counted
and reported, never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

REQUIRED_FIELDS = ("uuid", "input", "output", "domain", "meta")
ON_ERROR = ("raise", "skip")
T = TypeVar("T")


class RecordError(ValueError):
    """A bad record, located by file, 1-based line number and field."""

    def __init__(self, path: str | Path, line: int, field: str, problem: str) -> None:
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        super().__init__(f"{path}:{line}: field '{field}': {problem}")


@dataclass(frozen=True)
class Record:
    """One training record: a question (``input``) and a teacher response (``output``)."""

    uuid: str
    input: str
    output: str
    domain: str
    meta: str
    source: str = ""  # "file:line", for error messages further down the pipeline


@dataclass
class ReadReport:
    """What reading a file kept and what it skipped (with the reason of each skip)."""

    path: str
    read: int = 0
    kept: int = 0
    skipped: list[str] = field(default_factory=list)
    sha256: str = ""

    def skip(self, error: RecordError) -> None:
        self.skipped.append(str(error))

    def summary(self) -> dict:
        reasons = Counter(s.split(": ", 1)[-1].split(":")[0] for s in self.skipped)
        return {"path": self.path, "read": self.read, "kept": self.kept, "skipped": len(self.skipped),
                "skip_reasons": dict(reasons), "sha256": self.sha256}


def check_record(obj: object, path: Path, line: int) -> Record:
    if not isinstance(obj, dict):
        raise RecordError(path, line, "<record>", f"expected a JSON object, got {type(obj).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in obj:
            raise RecordError(path, line, name, "missing")
        if not isinstance(obj[name], str):
            raise RecordError(path, line, name, f"expected a string, got {type(obj[name]).__name__}")
    for name in ("input", "output"):
        if not obj[name].strip():
            raise RecordError(path, line, name, "empty")
    return Record(*(obj[name] for name in REQUIRED_FIELDS), source=f"{path}:{line}")


def _decode_json(raw: bytes, path: Path, line: int) -> object:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(path, line, "<json>", f"malformed JSON ({e})") from None


def iter_jsonl(path: str | Path, parse: Callable[[object, Path, int], T], on_error: str, report,
               what: str = "data file", decode: Callable[[bytes, Path, int], object] = _decode_json) -> Iterator[T]:
    """Stream a JSONL file line by line: ``parse(decode(line), path, line_no)`` for each non-blank line.

    A ``RecordError`` (bad JSON, or raised by ``parse``) stops the read (``on_error="raise"``) or is handed
    to ``report.skip`` (``"skip"``). ``report`` counts ``read``/``kept`` and gets the file's ``sha256``.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            digest.update(raw)
            if not raw.strip():
                continue
            report.read += 1
            try:
                item = parse(decode(raw, path, line_no), path, line_no)
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
    report = ReadReport(path=str(path))
    return list(iter_jsonl(path, parse, on_error, report, what)), report


def read_records(path: str | Path, on_error: str = "raise") -> tuple[list[Record], ReadReport]:
    """Read a JSONL file of records. Returns the records and a report of what was kept and skipped."""
    return read_jsonl(path, check_record, on_error, what="data file (set data.path)")
