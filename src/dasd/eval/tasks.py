"""Evaluation tasks read from local files: AIME 2024/2025, GPQA-Diamond and dasd records (method.md §9).

``load_task(name, path)`` returns ``EvalItem``s (one question each: the user message, a grader name and a
reference) and a report. Formats (docs/evaluation_data.md):

* ``aime24`` / ``aime25``: JSONL, a JSON list or CSV with a problem (``problem`` | ``question`` |
  ``Problem``), an ``answer`` (``answer`` | ``Answer``) and an optional id (``id`` | ``ID`` | ``url`` |
  ``problem_idx``). Grader "math"; the message is the problem + ``MATH_INSTRUCTION``.
* ``gpqa_diamond``: the official GPQA CSV (``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``,
  optional ``Record ID``) or JSONL/JSON with ``question``, ``correct_answer``, ``incorrect_answers`` (3), optional
  ``id``. The four options are ordered by a hash of (seed, question key, option index): the same order
  for a question whatever the file order or the other questions. The key is the source id, or the
  question text when the file has none. Grader "choice"; the reference is the correct option's letter.
* ``records``: dasd's record JSONL (``uuid``, ``input``, ``meta`` as a JSON string or an object) with the
  reference in ``meta.answer`` (required here). Grader "exact" when ``meta.grader == "exact"``, else "math".
  The message is ``input`` as it is (it carries its own instruction).

Errors name ``file:line`` (CSV: ``file:row N (line L)``, L the line where the row starts; JSON list:
``file:L (item N)``) and the field. ``on_error="raise"`` stops at the first bad item; ``"skip"`` skips it and
lists it in the report's ``skips``. These always raise: a missing file, an unknown format, a file with no
items, a CSV without a required column, a JSON list that does not parse, a duplicate id, and a file where
every item was skipped.

Ids are ``"<task>/<source id>"``, or ``"<task>/row<N>"`` (N: 1-based position of the item in the file,
blank lines not counted) when the item has no id.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dasd.data.records import ON_ERROR, RecordError, decode_line, jsonl_lines

TASKS = ("aime24", "aime25", "gpqa_diamond", "records")
GRADERS = ("math", "choice", "exact")
LETTERS = "ABCD"
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CHOICE_INSTRUCTION = (
    "Please reason step by step, and end your response with \"Answer: X\", where X is the letter (A, B, C "
    "or D) of the correct option, with the letter in \\boxed{}, e.g. \"Answer: \\boxed{X}\"."
)

AIME_PROBLEM = ("problem", "question", "Problem")
AIME_ANSWER = ("answer", "Answer")
AIME_ID = ("id", "ID", "url", "problem_idx")
GPQA_CSV = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
GPQA_ID = ("Record ID", "id", "ID")


@dataclass(frozen=True)
class EvalItem:
    """One evaluation question."""

    id: str  # stable id: task name + source id (or row)
    question: str  # the user message, instruction included
    grader: str  # "math" | "choice" | "exact"
    reference: str  # math: the answer; choice: the correct letter; exact: the exact answer string
    meta: dict  # source ("file:line"), source_id, options order (GPQA), ... (JSON-serialisable)


class TaskError(RecordError):
    """A bad evaluation item, located by file and line (CSV: row and starting line) and field."""

    def __init__(self, path: str | Path, where: str, line: int, field: str, problem: str) -> None:
        self.path, self.where, self.line, self.field, self.problem = str(path), where, line, field, problem
        ValueError.__init__(self, f"{path}:{where}: field '{field}': {problem}")


@dataclass(frozen=True)
class _Loc:
    path: str
    where: str  # "12" (JSONL), "row 3 (line 4)" (CSV), "7 (item 2)" (JSON list)
    line: int
    row: int  # 1-based position of the item in the file (blank lines not counted)

    def error(self, field: str, problem: str) -> TaskError:
        return TaskError(self.path, self.where, self.line, field, problem)

    def __str__(self) -> str:
        return f"{self.path}:{self.where}"


# ---------------------------------------------------------------- file readers: (location, object | error)


def _read_jsonl(path: Path) -> Iterator[tuple[_Loc, object]]:
    """The project's one JSONL reader (``records.jsonl_lines`` / ``decode_line``), items located as tasks do."""
    for row, (line_no, raw) in enumerate(jsonl_lines(path, what="task file"), start=1):
        loc = _Loc(str(path), str(line_no), line_no, row)
        try:
            yield loc, decode_line(raw, path, line_no)
        except RecordError as e:
            yield loc, loc.error(e.field, e.problem)


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 (invalid byte at offset {e.start})") from None


def _read_json_list(path: Path, text: str) -> Iterator[tuple[_Loc, object]]:
    """A JSON list, item by item, each located by the line where it starts."""
    decoder = json.JSONDecoder()
    n = len(text)

    def skip_ws(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def fail(i: int, problem: str) -> ValueError:
        line = text.count("\n", 0, i) + 1
        return TaskError(path, str(line), line, "<json>", problem)

    i = skip_ws(0)
    if i >= n or text[i] != "[":
        raise fail(i, "expected a JSON list of objects")
    i = skip_ws(i + 1)
    row = 0
    if i < n and text[i] == "]":
        return
    while True:
        line = text.count("\n", 0, i) + 1
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise fail(e.pos, f"malformed JSON ({e.msg})") from None
        row += 1
        yield _Loc(str(path), f"{line} (item {row})", line, row), obj
        i = skip_ws(i)
        if i < n and text[i] == "]":
            if skip_ws(i + 1) < n:
                raise fail(skip_ws(i + 1), "text after the end of the JSON list")
            return
        if i >= n or text[i] != ",":
            raise fail(i, "malformed JSON list (expected ',' or ']')")
        i = skip_ws(i + 1)


def _read_csv(path: Path, text: str, required: tuple[tuple[str, ...], ...]) -> Iterator[tuple[_Loc, object]]:
    """CSV rows as dicts (header on the first line); each entry of ``required`` is a set of alternative
    column names, one of which must be in the header."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise TaskError(path, "1", 1, "<csv>", f"malformed CSV header ({e})") from None
    header = [h.strip() for h in header]
    for names in required:
        if not any(name in header for name in names):
            raise TaskError(path, "1", 1, " | ".join(names), f"missing column (the header has {header})")
    row, prev_end = 0, reader.line_num
    while True:
        start = prev_end + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            loc = _Loc(str(path), f"row {row + 1} (line {start})", start, row + 1)
            raise loc.error("<csv>", f"malformed CSV ({e})") from None
        prev_end = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        row += 1
        loc = _Loc(str(path), f"row {row} (line {start})", start, row)
        if len(cells) > len(header):
            yield loc, loc.error("<csv>", f"{len(cells)} cells for {len(header)} columns")
            continue
        yield loc, dict(zip(header, cells, strict=False))


def _rows(path: Path, csv_required: tuple[tuple[str, ...], ...] | None) -> Iterator[tuple[_Loc, object]]:
    """The items of a .jsonl/.ndjson, .json (a list, or JSONL) or .csv file (``csv_required=None``: JSONL only)."""
    suffix = path.suffix.lower()
    if csv_required is None or suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".json":
        text = _read_text(path)
        return _read_json_list(path, text) if text.lstrip().startswith("[") else _read_jsonl(path)
    if suffix == ".csv":
        return _read_csv(path, _read_text(path), csv_required)
    raise ValueError(f"{path}: unknown format '{suffix}' (expected .jsonl, .json or .csv)")


# ---------------------------------------------------------------- field helpers


def _first(obj: dict, names: tuple[str, ...]) -> tuple[str, object] | None:
    """The first of ``names`` present in ``obj`` with a non-empty value, as (name, value)."""
    for name in names:
        value = obj.get(name)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return name, value
    return None


def _text(obj: dict, names: tuple[str, ...], loc: _Loc) -> str:
    found = _first(obj, names)
    if found is None:
        missing = [n for n in names if n not in obj]
        raise loc.error(" | ".join(names), "missing" if len(missing) == len(names) else "empty")
    name, value = found
    if not isinstance(value, str):
        raise loc.error(name, f"expected a string, got {type(value).__name__}")
    return value.strip()


def _scalar(value: object, name: str, loc: _Loc) -> str:
    """An answer or id as a string: a non-empty string, an integer or a number."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise loc.error(name, f"expected a string or a number, got {type(value).__name__}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        raise loc.error(name, "empty")
    return text


def _source_id(obj: dict, names: tuple[str, ...], loc: _Loc) -> str | None:
    found = _first(obj, names)
    return None if found is None else _scalar(found[1], found[0], loc)


def _check_object(obj: object, loc: _Loc) -> dict:
    if not isinstance(obj, dict):
        raise loc.error("<item>", f"expected a JSON object, got {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------- tasks


def _aime_item(task: str, obj: object, loc: _Loc, seed: int) -> EvalItem:
    obj = _check_object(obj, loc)
    problem = _text(obj, AIME_PROBLEM, loc)
    found = _first(obj, AIME_ANSWER)
    if found is None:
        raise loc.error(" | ".join(AIME_ANSWER), "missing" if not any(n in obj for n in AIME_ANSWER) else "empty")
    answer = _scalar(found[1], found[0], loc)
    sid = _source_id(obj, AIME_ID, loc)
    return EvalItem(id=f"{task}/{sid if sid is not None else f'row{loc.row}'}",
                    question=f"{problem}\n\n{MATH_INSTRUCTION}", grader="math", reference=answer,
                    meta={"task": task, "source": str(loc), "source_id": sid})


def option_order(seed: int, key: str, n: int = len(LETTERS)) -> list[int]:
    """The display order of ``n`` options (indices into [correct, incorrect 1, 2, 3]) for the question with
    ``key``: sorted by sha256(seed, key, index), so it depends on nothing else (not on file order, not on
    Python's ``random``)."""
    def rank(i: int) -> bytes:
        return hashlib.sha256(f"{seed}\x00{key}\x00{i}".encode()).digest()
    return sorted(range(n), key=rank)


def _gpqa_item(task: str, obj: object, loc: _Loc, seed: int) -> EvalItem:
    obj = _check_object(obj, loc)
    if "Question" in obj:  # the official CSV columns (also accepted in JSONL)
        question = _text(obj, ("Question",), loc)
        options = [_text(obj, (name,), loc) for name in GPQA_CSV[1:]]
    else:
        question = _text(obj, ("question",), loc)
        correct = _text(obj, ("correct_answer",), loc)
        wrong = obj.get("incorrect_answers")
        if wrong is None:
            raise loc.error("incorrect_answers", "missing")
        if not isinstance(wrong, list) or len(wrong) != len(LETTERS) - 1:
            raise loc.error("incorrect_answers", f"expected a list of {len(LETTERS) - 1} strings")
        for k, w in enumerate(wrong):
            if not isinstance(w, str) or not w.strip():
                raise loc.error(f"incorrect_answers[{k}]", "expected a non-empty string")
        options = [correct] + [w.strip() for w in wrong]
    sid = _source_id(obj, GPQA_ID, loc)
    key = sid if sid is not None else question
    order = option_order(seed, key)
    shown = [options[i] for i in order]
    letter = LETTERS[order.index(0)]
    lines = "\n".join(f"{LETTERS[k]}) {text}" for k, text in enumerate(shown))
    meta = {"task": task, "source": str(loc), "source_id": sid, "seed": seed,
            "shuffle_key": "source_id" if sid is not None else "question",
            "order": order, "options": shown, "correct_answer": options[0]}
    for name in ("High-level domain", "Subdomain"):
        if isinstance(obj.get(name), str) and obj[name].strip():
            meta[name.lower().replace(" ", "_").replace("-", "_")] = obj[name].strip()
    return EvalItem(id=f"{task}/{sid if sid is not None else f'row{loc.row}'}",
                    question=f"{question}\n\n{lines}\n\n{CHOICE_INSTRUCTION}", grader="choice",
                    reference=letter, meta=meta)


def _record_item(task: str, obj: object, loc: _Loc, seed: int) -> EvalItem:
    obj = _check_object(obj, loc)
    for name in ("uuid", "input"):
        if name not in obj:
            raise loc.error(name, "missing")
        if not isinstance(obj[name], str):
            raise loc.error(name, f"expected a string, got {type(obj[name]).__name__}")
        if not obj[name].strip():
            raise loc.error(name, "empty")
    if "meta" not in obj:
        raise loc.error("meta", "missing (evaluation needs meta.answer)")
    meta = obj["meta"]
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta.strip() else {}
        except json.JSONDecodeError as e:
            raise loc.error("meta", f"not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise loc.error("meta", f"expected a JSON object (or a string holding one), got {type(meta).__name__}")
    if "answer" not in meta:
        raise loc.error("meta.answer", "missing (evaluation needs an explicit reference answer)")
    answer = _scalar(meta["answer"], "meta.answer", loc)
    grader = meta.get("grader", "math")
    if grader not in ("math", "exact"):
        raise loc.error("meta.grader", f"expected 'math' or 'exact', got {grader!r}")
    return EvalItem(id=f"{task}/{obj['uuid']}", question=obj["input"], grader=grader, reference=answer,
                    meta={"task": task, "source": str(loc), "source_id": obj["uuid"],
                          "domain": obj.get("domain"), "record_meta": meta})


_PARSERS: dict[str, Callable[[str, object, _Loc, int], EvalItem]] = {
    "aime24": _aime_item, "aime25": _aime_item, "gpqa_diamond": _gpqa_item, "records": _record_item}
_CSV_COLUMNS: dict[str, tuple[tuple[str, ...], ...] | None] = {
    "aime24": (AIME_PROBLEM, AIME_ANSWER), "aime25": (AIME_PROBLEM, AIME_ANSWER),
    "gpqa_diamond": tuple((c,) for c in GPQA_CSV), "records": None}


def load_task(name: str, path: str, *, seed: int = 0, limit: int | None = None,
              on_error: str = "raise") -> tuple[list[EvalItem], dict]:
    """Items and a report {"read": n, "skipped": n, "skips": [{"line": .., "field": .., "reason": ..}], "path": ..}.

    ``read`` counts the items in the file (skipped ones included), ``skipped`` those skipped; each skip
    also has ``message`` (the full located error). ``items`` is the number returned (after ``limit``: the
    first N good items, in file order). ``seed`` only changes the GPQA option order.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {TASKS}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{name} data file not found: {file}")
    parse = _PARSERS[name]
    items: list[EvalItem] = []
    seen: dict[str, _Loc] = {}
    skips: list[dict] = []
    read = 0
    for loc, obj in _rows(file, _CSV_COLUMNS[name]):
        read += 1
        try:
            if isinstance(obj, TaskError):
                raise obj
            item = parse(name, obj, loc, seed)
        except TaskError as e:
            if on_error == "raise":
                raise
            skips.append({"line": e.line, "field": e.field, "reason": e.problem, "message": str(e)})
            continue
        if item.id in seen:  # always an error: ids key the per-question results
            field = "uuid" if name == "records" else "id"
            raise loc.error(field, f"duplicate id {item.id!r} (first at {seen[item.id]})")
        seen[item.id] = loc
        items.append(item)
    if read == 0:
        raise ValueError(f"{file}: no {name} items (empty file)")
    if not items:
        raise ValueError(f"{file}: all {read} {name} items were skipped; first: {skips[0]['message']}")
    if limit is not None:
        items = items[:limit]
    report = {"task": name, "path": str(file), "read": read, "skipped": len(skips), "skips": skips,
              "items": len(items), "limit": limit, "seed": seed,
              "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}
    return items, report
