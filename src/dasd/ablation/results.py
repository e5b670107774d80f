"""The ablation report's inputs: the ``row_result.json`` files of an ablation sweep (``python ablate.py -m ...``) as the
paper's tables at toy scale (``python report.py runs=<dir>``; docs/ablations.md).

One ``row_result.json`` is one (row, seed) of a paper table (method.md §10): ``table``, ``id``, ``label``,
``paper`` (metric -> the paper's avg@64, %), ``seed``, ``world`` (``key``, ``accuracy``), ``steps`` (each
``stage``, ``reused``, ``train_seconds``, optional ``eval``), ``final`` (the last step's evaluation, or the
base model's: ``avg@k`` %, ``truncation_rate``, ``mean_response_tokens``, ``n_questions``, ``k``), ``seconds``
(wall time of the job), optional ``config`` (``config.budget``) and ``versions``; other keys are ignored.

Rows are grouped by (table, id) and averaged over seeds: mean and sample std (n - 1) of ``final.avg@k``.
Nothing is mixed silently: of two results of one (row, seed) the newest file is kept and the other counted;
rows of one table run on different worlds or budgets are flagged. The comparisons the paper makes
(``CONTRASTS``) are computed from the numbers, never asserted: each gets a paired bootstrap interval over the
held-out questions and the seeds (the per-question ``results.jsonl`` of each final evaluation,
dasd.ablation.contrasts), a verdict and a minimum detectable effect; ``summary.json`` holds the headline numbers.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dasd.ablation.evidence import check_same_weights

RESULT_FILE = "row_result.json"
#: dotted keys every result must hold (numbers where marked in NUMBERS)
REQUIRED = ("table", "id", "label", "paper", "seed", "world.key", "world.accuracy", "steps", "final.avg@k",
            "final.truncation_rate", "final.mean_response_tokens", "final.n_questions", "final.k", "seconds")
STEP_REQUIRED = ("stage", "reused", "train_seconds")
NUMBERS = ("final.avg@k", "final.truncation_rate", "final.mean_response_tokens", "seconds")
#: the paper metric the orderings are compared on when a table has it (else the table's first metric)
PREFERRED_METRIC = "AIME25"
#: tables drawn as a line over the rows (pipeline stages) instead of bars
LINE_TABLES = (7,)


@dataclass(frozen=True)
class Contrast:
    """Rows the paper contrasts, in the order it reports them; each consecutive pair is compared. ``expect``
    (+1/-1): the direction the method claims, for a pair without paper numbers (a control row)."""

    table: int
    rows: tuple[str, ...]
    what: str
    expect: int | None = None


#: the comparisons the paper draws (method.md §10); the paper's direction comes from its numbers
CONTRASTS = (
    Contrast(1, ("T1a", "T1b"), "T=1.0 vs T=0.6, RS"),
    Contrast(1, ("T1b", "T1d"), "T=0.6 → T=1.0 schedule vs T=1.0 alone"),
    Contrast(1, ("T1c", "T1d"), "schedule vs twice the T=1.0 data (same total)"),
    Contrast(1, ("T1h", "T1d"), "schedule T=0.6→1.0 vs a warmup restart at T=1.0 (stage 2 at T=1.0 after "
             "stage 1 at T=1.0)", expect=1),
    Contrast(1, ("T1e", "T1f"), "T=1.0 vs T=0.6, RS, teacher b"),
    Contrast(1, ("T1f", "T1g"), "T=0.6 → T=1.0 schedule vs T=1.0 alone, teacher b"),
    Contrast(3, ("T3a", "T3b"), "DAS vs RS at T=0.6"),
    Contrast(3, ("T3c", "T3e"), "DAS vs RS at T=1.0"),
    Contrast(3, ("T3d", "T3e"), "50K DAS vs 100K RS at T=1.0"),
    Contrast(3, ("T3f", "T3g"), "DAS vs RS, teacher b"),
    Contrast(4, ("T4a", "T4b"), "DAS vs RS, multi-domain"),
    Contrast(5, ("T5b", "T5c"), "mixed policy: unmasked vs masked student prefix"),
    Contrast(5, ("T5a", "T5c"), "the mixed-policy round (unmasked) over its stage-1 base"),
    Contrast(5, ("T5d", "T5c"), "revised samples vs extra data (stage 3 on the off-policy part alone)",
             expect=1),
    Contrast(7, ("T7a", "T7b", "T7c", "T7d"), "each pipeline stage over the previous"),
    Contrast(7, ("T7a", "T7d"), "the whole recipe over the base student"),
)


# ----------------------------------------------------------------------------------------------- reading


def natural_key(text: str) -> list:
    """``T2b`` < ``T10a``: digit runs compare as numbers."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(text))]


def _get(data: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            raise KeyError(dotted)
        data = data[part]
    return data


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def load_result(path: str | Path) -> dict:
    """One ``row_result.json``, checked; ValueError naming the file and the key when it is malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for key in REQUIRED:
        try:
            _get(data, key)
        except KeyError:
            raise ValueError(f"{path}: missing required key {key!r}") from None
    for key in NUMBERS:
        if not _is_number(_get(data, key)):
            raise ValueError(f"{path}: {key!r} must be a number, got {_get(data, key)!r}")
    if not isinstance(data["steps"], list) or not isinstance(data["paper"], dict):
        raise ValueError(f"{path}: 'steps' must be a list and 'paper' an object")
    for i, step in enumerate(data["steps"]):
        for key in STEP_REQUIRED:
            if not isinstance(step, dict) or key not in step:
                raise ValueError(f"{path}: missing required key 'steps[{i}].{key}'")
        if step.get("eval") is not None and not _is_number(step["eval"].get("avg@k")):
            raise ValueError(f"{path}: missing required key 'steps[{i}].eval.avg@k'")
    try:
        data["table"] = int(data["table"])
    except (TypeError, ValueError):
        raise ValueError(f"{path}: 'table' must be a table number, got {data['table']!r}") from None
    data["id"] = str(data["id"])
    return data


def find_results(runs: Iterable[str | Path]) -> list[Path]:
    """Every ``row_result.json`` under the given directories (recursively) or given as files."""
    found: set[Path] = set()
    for run in runs:
        run = Path(run)
        if run.is_file():
            found.add(run.resolve())
        elif run.is_dir():
            found.update(p.resolve() for p in run.rglob(RESULT_FILE))
        else:
            raise ValueError(f"runs: {run} is neither a directory nor a file")
    return sorted(found)


def collect(runs: Iterable[str | Path], tables: Sequence[int] | None = None) -> tuple[list[dict], list[dict]]:
    """The results to report (one per (table, id, seed): the newest file) and the duplicates dropped.
    Each result gains ``_path`` and ``_mtime``."""
    runs = list(runs)
    paths = find_results(runs)
    if not paths:
        raise ValueError(f"no {RESULT_FILE} under {', '.join(map(str, runs))}")
    results = []
    for p in paths:
        r = load_result(p)
        if tables is None or r["table"] in tables:
            results.append({**r, "_path": str(p), "_mtime": os.stat(p).st_mtime_ns})
    check_same_weights(results)
    if not results:
        raise ValueError(f"none of the {len(paths)} results under {', '.join(map(str, runs))} belongs to "
                         f"tables {list(tables or [])}")
    kept: dict[tuple, dict] = {}
    duplicates = []
    for r in sorted(results, key=lambda r: (r["_mtime"], r["_path"]), reverse=True):  # newest first
        key = (r["table"], r["id"], json.dumps(r["seed"]))
        if key in kept:
            duplicates.append({"table": r["table"], "id": r["id"], "seed": r["seed"], "dropped": r["_path"],
                               "kept": kept[key]["_path"]})
        else:
            kept[key] = r
    return list(kept.values()), duplicates
