"""Reading the released record format (JSONL: uuid, input, output, domain, meta; spec §8.1).

Every problem with the input is reported as ``file:line: field``. In strict mode (``on_error="raise"``)
the first problem stops the run; in lenient mode (``on_error="skip"``) the record is skipped, counted
and reported, never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
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


def read_jsonl(path: str | Path, parse: Callable[[object, Path, int], T], on_error: str = "raise",
               what: str = "data file") -> tuple[list[T], ReadReport]:
    """Read a JSONL file, turning each non-blank line into ``parse(obj, path, line)``.

    A malformed line, or a ``RecordError`` from ``parse``, stops the read (``on_error="raise"``) or is
    skipped and listed in the report (``"skip"``). The report also carries the file's sha256.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    items: list[T] = []
    report = ReadReport(path=str(path))
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            digest.update(raw)
            if not raw.strip():
                continue
            report.read += 1
            try:
                try:
                    obj = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise RecordError(path, line_no, "<json>", f"malformed JSON ({e})") from None
                items.append(parse(obj, path, line_no))
            except RecordError as e:
                if on_error == "raise":
                    raise
                report.skipped.append(str(e))
    report.kept = len(items)
    report.sha256 = digest.hexdigest()
    return items, report


def read_records(path: str | Path, on_error: str = "raise") -> tuple[list[Record], ReadReport]:
    """Read a JSONL file of records. Returns the records and a report of what was kept and skipped."""
    return read_jsonl(path, check_record, on_error, what="data file (set data.path)")
