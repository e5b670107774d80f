"""What the reasoning world shows beside the ablation tables (issue 17, docs/world.md): the learning curve, the
sentence types of the teacher pools, and the share of student rollouts cut off by teacher length (the paper's
Fig. 7), all read from the outputs of ``ablate.py`` runs.

``analyze(results)`` takes loaded ``row_result.json`` dicts (``dasd.recipes.report.collect``) and returns::

    {"learning_curve": [{"budget", "multiple", "accuracy", "ci95", "seeds", "n_questions"}, ...],
     "unit_budget": int | None,                     # the ablation rows' budget.questions (else the curve's)
     "sentence_shares": {"T=1.0": {"teacher", "student", "shared", "unlabeled", "candidates", "rows"}, ...},
     "student_sentence_share": float | None,        # Student Sentences in teacher_a's T=1.0 pools
     "cutoff_ratio_by_length": [[teacher_tokens_hi, share], ...],   # shortest bin first
     "cutoff_bins": [...]}                          # the bins with their edges and counts

Nothing is guessed: a quantity whose runs are absent is None.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from dasd.ablation.evidence import read_json, step_file
from dasd.mixed.report import cutoff_curve

CURVE_TABLE = 0  # experiments/world/curve.yaml rows (ids LC<multiple>)
#: (row, step index) of DAS selections on teacher_a's pool at the temperature named
DAS_ROWS = {"T=1.0": (("T3e", 0), ("T7c", 1)), "T=0.6": (("T3b", 0), ("T5a", 0), ("T7b", 0))}
#: rows whose last step is a mixed-policy round from the T7c/T3b weights (the Fig. 7 analogue)
MIXED_ROWS = ("T7d", "T5c")


def _budget(r: dict) -> dict:
    return (r.get("config") or {}).get("budget") or {}


def learning_curve(results: list[dict]) -> tuple[list[dict], int | None]:
    """Accuracy after stage 1 at each budget of the curve rows, averaged over seeds; the unit budget
    (``budget.questions`` of those runs)."""
    by_multiple: dict[float, list[dict]] = defaultdict(list)
    units = set()
    for r in results:
        if r.get("table") != CURVE_TABLE or not r.get("steps"):
            continue
        units.add(int(_budget(r)["questions"]))
        by_multiple[float(r["steps"][0]["settings"]["questions"])].append(r)
    if len(units) > 1:
        raise ValueError(f"learning-curve runs with different budget.questions {sorted(units)}: run the sweep "
                         "with one unit budget")
    unit = units.pop() if units else None
    points = []
    for multiple in sorted(by_multiple):
        rows = by_multiple[multiple]
        acc = [float(r["final"]["avg@k"]) for r in rows]
        ci = rows[0]["final"].get("ci95") if len(rows) == 1 else None
        points.append({"budget": round(multiple * unit), "multiple": multiple, "accuracy": float(np.mean(acc)),
                       "ci95": ci, "seeds": sorted(r["seed"] for r in rows),
                       "n_questions": rows[0]["final"]["n_questions"]})
    return points, unit


def sentence_shares(results: list[dict]) -> dict[str, dict]:
    """Sentence-type shares over every candidate of the DAS-scored teacher pools (the steps named in
    ``DAS_ROWS``), pooled over seeds; each pool counted once."""
    out = {}
    for name, sources in DAS_ROWS.items():
        totals: dict[str, int] = defaultdict(int)
        seen, candidates = set(), 0
        for r in results:
            step = dict(sources).get(r.get("id"))
            if step is None or len(r.get("steps") or []) <= step:
                continue
            found = step_file(r, step, "das_summary")
            entry = r["steps"][step]
            pool = (r["seed"], entry.get("key") or entry["dir"])  # rows that share a step share its pool
            if found is None or pool in seen:
                continue
            seen.add(pool)
            s = read_json(found)
            candidates += s["candidates"]
            for label, n in s["groups"]["all"]["sentences"].items():
                totals[label] += n
        total = sum(totals.values())
        if total:
            out[name] = {**{k: v / total for k, v in totals.items()}, "sentences": total,
                         "candidates": candidates, "pools": len(seen)}
    return out


def cutoff_by_length(results: list[dict], bins: int = 6) -> list[dict]:
    """The share of student rollouts cut off at the budget by teacher length, over the mixed-policy rounds of
    the rows in ``MIXED_ROWS`` (the first of them that has runs), every seed pooled."""
    for row in MIXED_ROWS:
        per_question = []
        for r in results:
            if r.get("id") != row or not r.get("steps") or r["steps"][-1]["stage"] != "mixed":
                continue
            stats = step_file(r, len(r["steps"]) - 1, "mixed_stats")
            if stats is not None:
                per_question += read_json(stats).get("per_question") or []
        if per_question:
            return cutoff_curve(per_question, bins=bins)
    return []


def ablation_unit(results: list[dict]) -> int | None:
    """``budget.questions`` of the table rows (the toy "50K"), where the learning curve's plot marks it."""
    units = {int(_budget(r)["questions"]) for r in results
             if r.get("table") != CURVE_TABLE and _budget(r).get("questions")}
    return units.pop() if len(units) == 1 else None


def analyze(results: list[dict]) -> dict:
    curve, curve_unit = learning_curve(results)
    unit = ablation_unit(results) or curve_unit
    shares = sentence_shares(results)
    bins = cutoff_by_length(results)
    return {"learning_curve": curve or None, "unit_budget": unit, "sentence_shares": shares or None,
            "student_sentence_share": shares.get("T=1.0", {}).get("student"),
            "cutoff_ratio_by_length": [[b["teacher_tokens_hi"], b["cutoff_ratio"]] for b in bins] or None,
            "cutoff_bins": bins or None}
