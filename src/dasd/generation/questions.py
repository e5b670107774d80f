"""Reading questions for generation: JSONL with ``input`` (required), ``id`` or ``uuid``, ``domain``, ``meta``.

Released SFT records are valid question files too (their ``uuid`` becomes the question id). Read by the
project's one JSONL reader (``records.read_jsonl``: UTF-8 BOM, UTF-8 and JSON handled as for training data).
Errors name ``file:line`` and the field; ``on_error="skip"`` skips, counts and reports them instead.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from dasd.data.records import ReadReport, RecordError, read_jsonl

NAMESPACE = uuid.UUID("6c1f7e1a-3f4b-4bd0-9a53-2d0f1b7e5a10")


@dataclass(frozen=True)
class Question:
    id: str
    input: str
    domain: str
    meta: dict
    source: str  # file:line


def _question(obj: object, path: Path, line: int) -> Question:
    if not isinstance(obj, dict):
        raise RecordError(path, line, "<record>", f"expected a JSON object, got {type(obj).__name__}")
    text = obj.get("input", obj.get("question"))
    if text is None:
        raise RecordError(path, line, "input", "missing")
    if not isinstance(text, str) or not text.strip():
        raise RecordError(path, line, "input", "expected a non-empty string")
    qid = obj.get("id", obj.get("uuid"))
    if qid is not None and not isinstance(qid, str | int):
        raise RecordError(path, line, "id", f"expected a string or int, got {type(qid).__name__}")
    domain = obj.get("domain", "unknown")
    if not isinstance(domain, str):
        raise RecordError(path, line, "domain", f"expected a string, got {type(domain).__name__}")
    meta = obj.get("meta", {})
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta else {}
        except json.JSONDecodeError:
            meta = {"raw": meta}
    if not isinstance(meta, dict):
        raise RecordError(path, line, "meta", f"expected an object or JSON string, got {type(meta).__name__}")
    qid = str(qid) if qid is not None else str(uuid.uuid5(NAMESPACE, text))
    return Question(id=qid, input=text, domain=domain, meta=meta, source=f"{path}:{line}")


def read_questions(path: str | Path, on_error: str = "raise") -> tuple[list[Question], ReadReport]:
    """Read a questions file; duplicate ids are an error (they would collide in the output)."""
    seen: dict[str, int] = {}

    def parse(obj: object, path: Path, line: int) -> Question:
        q = _question(obj, path, line)
        if q.id in seen:
            raise RecordError(path, line, "id", f"duplicate id {q.id!r} (first at line {seen[q.id]})", "duplicate")
        seen[q.id] = line
        return q

    return read_jsonl(path, parse, on_error, what="questions file")
