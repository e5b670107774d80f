"""The ablation report's numbers: rows averaged over seeds, budget and world checks, the paper's orderings and
contrasts (``dasd.ablation.results`` reads the rows; ``dasd.ablation.contrasts`` gives the paired intervals)."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence

from dasd.ablation import contrasts as cx
from dasd.ablation.results import CONTRASTS, PREFERRED_METRIC, Contrast, _is_number, natural_key

# ----------------------------------------------------------------------------------------------- numbers


def _mean(xs: Sequence[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _std(xs: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1); None for fewer than two values."""
    return statistics.stdev(xs) if len(xs) >= 2 else None


def _train_seconds(r: dict) -> float:
    """Training time of the steps trained for this result (a reused step was trained for another row)."""
    return sum(float(s["train_seconds"]) for s in r["steps"] if not s["reused"] and _is_number(s["train_seconds"]))


def _budget(r: dict):
    config = r.get("config")
    return config.get("budget") if isinstance(config, dict) else None


def _flat(x, prefix: str = "budget") -> dict[str, str]:
    """A nested budget as dotted keys -> JSON values."""
    if isinstance(x, dict) and x:
        return {k: v for key, val in x.items() for k, v in _flat(val, f"{prefix}.{key}").items()}
    return {prefix: json.dumps(x, sort_keys=True)}


#: the run settings besides the budget whose difference between the rows of a table is flagged
OVERRIDES = ("train_overrides", "generate_overrides", "eval_overrides")


def _settings(r: dict) -> dict:
    """A row's budget knobs and its train/generate/eval overrides as dotted keys -> JSON values."""
    config = r.get("config") if isinstance(r.get("config"), dict) else {}
    return {**_flat(_budget(r)), **{k: json.dumps(config.get(k), sort_keys=True) for k in OVERRIDES}}


def budget_warnings(table: int, by_row: dict[str, list[dict]]) -> list[str]:
    """One warning per budget knob (``config.budget``) or override list (``config.train_overrides``, ...) whose
    value differs between the results of a table: rows trained or evaluated differently are not comparable."""
    flats = {(row, i): _settings(r) for row, rs in by_row.items() for i, r in enumerate(rs)}
    keys = sorted({k for f in flats.values() for k in f})
    out = []
    for key in keys:
        seen: dict[str, set] = defaultdict(set)
        for (row, _), f in flats.items():
            seen[f.get(key, "absent")].add(row)
        if len(seen) > 1:
            what = "budgets" if key.startswith("budget") else "settings"
            out.append(f"rows of table {table} ran on different {what}: {key} = " + ", ".join(
                f"{v} ({', '.join(sorted(rows, key=natural_key))})" for v, rows in sorted(seen.items())))
    return out


def _share(k: int, n: int) -> str:
    return "no" if k == 0 else "yes" if k == n else f"{k} of {n}"


def _stages(results: list[dict]) -> list[dict]:
    """Per step position: stage, settings, reused, mean ± std of the step's avg@k over the seeds."""
    by_step: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        for i, s in enumerate(r["steps"]):
            by_step[(i, str(s["stage"]))].append(s)
    out = []
    if not by_step:  # the base model only (e.g. T7a): its final evaluation is step 0
        values = [r["final"]["avg@k"] for r in results]
        return [{"step": 0, "stage": "base", "settings": "", "n": len(values), "mean": _mean(values),
                 "std": _std(values), "reused": "—", "train_seconds": None}]
    for (i, stage), steps in sorted(by_step.items()):
        values = [s["eval"]["avg@k"] for s in steps if s.get("eval")]
        settings = steps[0].get("settings") or {}
        out.append({"step": i + 1, "stage": stage, "settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
                    "n": len(values), "mean": _mean(values), "std": _std(values),
                    "reused": _share(sum(bool(s["reused"]) for s in steps), len(steps)), "train_seconds": _mean(
                        [s["train_seconds"] for s in steps if not s["reused"] and _is_number(s["train_seconds"])])})
    return out


def aggregate_row(results: list[dict]) -> dict:
    """One table row from its results (one per seed)."""
    results = sorted(results, key=lambda r: natural_key(json.dumps(r["seed"])))
    newest = max(results, key=lambda r: r["_mtime"])
    values = [float(r["final"]["avg@k"]) for r in results]
    return {"id": newest["id"], "label": newest["label"], "paper": newest["paper"],
            "seeds": [r["seed"] for r in results], "n": len(results), "values": values,
            "mean": _mean(values), "std": _std(values),
            "ci95": [r["final"].get("ci95") for r in results],
            "truncation_rate": _mean([r["final"]["truncation_rate"] for r in results]),
            "mean_response_tokens": _mean([r["final"]["mean_response_tokens"] for r in results]),
            "train_seconds": _mean([_train_seconds(r) for r in results]),
            "seconds": _mean([float(r["seconds"]) for r in results]),
            "k": sorted({r["final"]["k"] for r in results}),
            "n_questions": sorted({r["final"]["n_questions"] for r in results}),
            "worlds": sorted({str(r["world"]["key"]) for r in results}),
            "budgets": sorted({json.dumps(_budget(r), sort_keys=True) for r in results}),
            "stages": _stages(results), "paths": [r["_path"] for r in results]}


def _paper_value(row: dict, metric: str) -> float | None:
    v = row["paper"].get(metric)
    return float(v) if _is_number(v) else None


def _metric(rows: Sequence[dict]) -> str | None:
    metrics = [m for r in rows for m in r["paper"] if _paper_value(r, m) is not None]
    return PREFERRED_METRIC if PREFERRED_METRIC in metrics else (metrics[0] if metrics else None)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def compare_pair(a: dict, b: dict, metric: str | None) -> dict:
    """Row b against row a: the paper's difference on ``metric`` (else the first metric both report), the
    toy's mean difference, the seeds' combined std sqrt(std_a² + std_b²) and what they say together."""
    metrics = [m for m in ([metric] if metric else []) + list(a["paper"])
               if _paper_value(a, m) is not None and _paper_value(b, m) is not None]
    m = metrics[0] if metrics else None
    paper = _paper_value(b, m) - _paper_value(a, m) if m else None
    toy = b["mean"] - a["mean"]
    std = math.hypot(a["std"], b["std"]) if a["std"] is not None and b["std"] is not None else None
    beyond = abs(toy) > std if std is not None else None
    same = _sign(toy) == _sign(paper) if paper is not None and paper != 0 and toy != 0 else None
    if paper is None or paper == 0:
        verdict = "the paper reports no difference to compare"
    elif toy == 0:
        verdict = "no toy difference"
    else:
        verdict = ("same direction as the paper" if same else "opposite direction to the paper") + (
            "" if beyond is None else (", |diff| > combined std" if beyond else ", |diff| ≤ combined std"))
        if std is None:
            verdict += ", no std (one seed)"
    return {"a": a["id"], "b": b["id"], "metric": m, "paper_diff": paper, "toy_diff": toy,
            "combined_std": std, "beyond_std": beyond, "same_direction": same, "verdict": verdict}


def compare_table(table: int, rows: dict[str, dict], metric: str | None,
                  contrasts: Sequence[Contrast] = CONTRASTS, questions: dict | None = None,
                  bootstrap: dict | None = None) -> list[dict]:
    """The contrasts of one table, each consecutive pair compared (seed-level numbers, and with
    ``questions`` = row id -> {seed: per-question accuracies} the paired interval and verdict); pairs with a
    row not run say so."""
    out, questions, bootstrap = [], questions or {}, bootstrap or cx.check_bootstrap(None)
    for c in (c for c in contrasts if c.table == table):
        for a, b in zip(c.rows, c.rows[1:], strict=False):
            missing = [x for x in (a, b) if x not in rows]
            if missing:
                out.append({"id": f"{a}-{b}", "table": table, "a": a, "b": b, "what": c.what, "missing": missing,
                            "verdict": f"not in the results: {', '.join(missing)}"})
                continue
            pair = {**compare_pair(rows[a], rows[b], metric), "table": table, "what": c.what, "missing": []}
            out.append(cx.add_interval(pair, questions.get(a), questions.get(b), c.expect, **bootstrap))
    return out


def order_agreement(rows: Sequence[dict], metric: str | None) -> dict:
    """Over all row pairs with a paper value and distinct values on both sides: how many the toy orders as
    the paper does."""
    pts = [(_paper_value(r, metric), r["mean"]) for r in rows if metric and _paper_value(r, metric) is not None]
    pairs = agree = 0
    for i in range(len(pts)):
        for j in range(i + 1, len(pts)):
            p, t = _sign(pts[j][0] - pts[i][0]), _sign(pts[j][1] - pts[i][1])
            if p and t:
                pairs += 1
                agree += p == t
    return {"metric": metric, "pairs": pairs, "agree": agree}


def aggregate(results: list[dict], questions: dict | None = None, bootstrap: dict | None = None) -> dict[int, dict]:
    """Table number -> its rows (paper order), worlds, compute, warnings, contrasts and order agreement;
    ``questions``: (table, row id) -> {seed: per-question accuracies} (contrasts.load_questions)."""
    bootstrap = cx.check_bootstrap(bootstrap)  # once, not per contrast
    by_table: dict[int, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        by_table[r["table"]][r["id"]].append(r)
    tables = {}
    for t in sorted(by_table):
        rows = [aggregate_row(rs) for _, rs in sorted(by_table[t].items(), key=lambda kv: natural_key(kv[0]))]
        flat = [r for rs in by_table[t].values() for r in rs]
        worlds = {str(r["world"]["key"]): r["world"]["accuracy"] for r in flat}
        warnings = []
        if len(worlds) > 1:
            warnings.append(f"rows of table {t} ran on different worlds: " + ", ".join(
                f"{w} ({', '.join(x['id'] for x in rows if w in x['worlds'])})" for w in sorted(worlds)))
        warnings += budget_warnings(t, by_table[t])
        for key, what in (("k", "k (samples per question)"), ("n_questions", "numbers of held-out questions")):
            if len({v for x in rows for v in x[key]}) > 1:
                warnings.append(f"rows of table {t} were evaluated with different {what}: " + ", ".join(
                    f"{x['id']} {'/'.join(map(str, x[key]))}" for x in rows))
        for x in rows:
            labels = {json.dumps([r["label"], r["paper"]], sort_keys=True) for r in by_table[t][x["id"]]}
            if len(labels) > 1:
                warnings.append(f"{x['id']}: its results disagree on the label or the paper's numbers "
                                "(the newest is shown)")
        metric = _metric(rows)
        tables[t] = {"table": t, "rows": rows, "metrics": list(dict.fromkeys(m for x in rows for m in x["paper"])),
                     "metric": metric, "worlds": worlds,
                     "k": sorted({k for x in rows for k in x["k"]}),
                     "n_questions": sorted({n for x in rows for n in x["n_questions"]}),
                     "n_results": len(flat), "seconds": sum(float(r["seconds"]) for r in flat),
                     "train_seconds": sum(_train_seconds(r) for r in flat), "warnings": warnings,
                     "contrasts": compare_table(t, {x["id"]: x for x in rows}, metric, CONTRASTS, {
                         row: q for (tt, row), q in (questions or {}).items() if tt == t}, bootstrap),
                     "order": order_agreement(rows, metric)}
        tables[t]["warnings"] += [
            f"{c['id']}: {c['dropped_cells']['a']} (seed, question) cell(s) of {c['a']} and "
            f"{c['dropped_cells']['b']} of {c['b']} not paired (not the same seeds and held-out questions)"
            for c in tables[t]["contrasts"] if any(c.get("dropped_cells", {}).values())]
    return tables
