"""The ablation report: the ``row_result.json`` files of an ablation sweep (``python ablate.py -m ...``) as the
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
dasd.world.contrasts), a verdict and a minimum detectable effect; ``summary.json`` holds the headline numbers.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import textwrap
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dasd.utils.logging import get_logger
from dasd.utils.plots import pyplot
from dasd.utils.run import git_revision, versions
from dasd.utils.wandb import open_run
from dasd.world import contrasts as cx
from dasd.world.analysis import analyze
from dasd.world.contrasts import md_table as _md_table
from dasd.world.evidence import check_same_weights, export_rows

log = get_logger(__name__)

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


# ----------------------------------------------------------------------------------------------- markdown


_f = cx.fmt


def _pm(mean, std) -> str:
    return f"{_f(mean)} ± {_f(std)}"


def columns(table: dict) -> list[str]:
    """The columns of a table, in the markdown and in W&B."""
    return ["id", "setting", *[f"paper {m}" for m in table["metrics"]], "toy avg@k (mean ± std)", "seeds",
            "trunc.", "tokens", "train s", "wall s"]


def table_cells(table: dict, row: dict) -> list[str]:
    return [row["id"], row["label"], *[_f(_paper_value(row, m)) for m in table["metrics"]],
            _pm(row["mean"], row["std"]), str(row["n"]), _f(row["truncation_rate"], ".3f"),
            _f(row["mean_response_tokens"], ".0f"), _f(row["train_seconds"], ".0f"), _f(row["seconds"], ".0f")]


def world_line(table: dict) -> str:
    """The world(s), their models' held-out accuracy, the evaluation's k and size, the table's compute."""
    def accuracy(acc) -> str:
        if not isinstance(acc, dict) or not acc:
            return "held-out accuracy not recorded"
        return "held-out accuracy " + ", ".join(f"{name.replace('_', ' ')} {_f(v)}%" for name, v in acc.items())

    worlds = "; ".join(f"World {key}: {accuracy(acc)}" for key, acc in table["worlds"].items())
    k, n = (" / ".join(map(str, table[key])) for key in ("k", "n_questions"))
    return (f"{worlds}. Toy avg@k: k = {k} samples per question, {n} held-out questions. Compute: "
            f"{table['n_results']} result(s), {_f(table['seconds'], '.0f')} s wall in all "
            f"({_f(table['train_seconds'], '.0f')} s of training).")


def contrast_lines(table: dict) -> list[str]:
    """The verdict counts, the paper-ordering agreement and the contrast table (contrasts.contrast_table)."""
    counts, order = cx.verdict_counts(table["contrasts"]), table["order"]
    head = "**Verdicts (paired 95% interval vs the expected direction):** " + (
        ", ".join(f"{n} {v}" for v, n in counts.items()) or "no contrast") + "."
    if order["pairs"]:
        head += f" All row pairs: {order['agree']} of {order['pairs']} ordered as the paper's {order['metric']}."
    lines = [head, ""] + (cx.contrast_table(table["contrasts"], table["metric"]) if table["contrasts"] else [])
    notes = sorted({c["seed_level"] for c in table["contrasts"] if c.get("n_seeds") == 1})
    return lines + [f"- {n}" for n in notes] + chain_lines(table)


def chain_lines(table: dict, contrasts: Sequence[Contrast] = CONTRASTS) -> list[str]:
    """For a contrast of three rows or more (the pipeline's stages): both sequences side by side."""
    rows, metric, lines = {x["id"]: x for x in table["rows"]}, table["metric"], []
    for c in contrasts:
        if c.table != table["table"] or len(c.rows) < 3 or not all(r in rows for r in c.rows):
            continue
        links = set(zip(c.rows, c.rows[1:], strict=False))
        steps = [p for p in table["contrasts"] if (p["a"], p["b"]) in links]
        lines.append(f"- {' → '.join(c.rows)}: paper {metric} "
                     + " → ".join(_f(_paper_value(rows[r], metric)) if metric else "—" for r in c.rows)
                     + "; toy avg@k " + " → ".join(_f(rows[r]["mean"]) for r in c.rows)
                     + f"; {sum(p['verdict'] == 'reproduced' for p in steps)} of {len(steps)} steps reproduced, "
                     + f"{sum(p.get('same_direction') is True for p in steps)} in the paper's direction")
    return lines


def stage_lines(table: dict) -> list[str]:
    if not any(len(x["stages"]) >= 2 for x in table["rows"]):
        return []
    body = [[x["id"], str(s["step"]), s["stage"], s["settings"], _pm(s["mean"], s["std"]), str(s["n"]),
             str(s["reused"]), _f(s["train_seconds"], ".0f")] for x in table["rows"] for s in x["stages"]]
    return ["", f"Per-stage progression (toy avg@k after each step, table {table['table']}):", "",
            *_md_table(["id", "step", "stage", "settings", "avg@k (mean ± std)", "evals", "reused", "train s"],
                       body)]


def markdown(report: dict) -> str:
    """``report.md``: one section per table (numbers only), then the inputs."""
    dup = report["duplicates"]
    lines = ["# Ablation report (toy scale)", "",
             f"{report['n_results']} results from {report['n_files']} `{RESULT_FILE}` files under "
             + ", ".join(f"`{r}`" for r in report["runs"]) + f"; generated {report['created_at']}.",
             "Toy avg@k: the student's accuracy on the world's held-out questions (%), mean ± sample std over "
             "seeds. Paper columns: the paper's avg@64 on the real benchmarks (method.md §10). The two are not "
             "on one scale; compare orderings, not values.", "", *cx.summary_lines(report), ""]
    if report.get("per_question_notes"):
        notes = report["per_question_notes"]
        lines += [f"**Per-question results missing for {len(notes)} result(s)** (per_question=optional): the "
                  "contrasts of their rows fall back to the seed-level comparison (no interval, no verdict).",
                  *(f"- {n}" for n in notes), ""]
    if dup:
        lines += [f"**{len(dup)} duplicate result(s) of one (row, seed) dropped** (the newest file kept):", *(
            f"- {d['id']} seed {d['seed']}: kept `{d['kept']}`, dropped `{d['dropped']}`" for d in dup), ""]
    for t, table in report["tables"].items():
        lines += [f"## Table {t}", ""]
        lines += [f"> **Warning:** {w}" for w in table["warnings"]] + ([""] if table["warnings"] else [])
        lines += _md_table(columns(table), [table_cells(table, x) for x in table["rows"]])
        lines += ["", world_line(table), "", *contrast_lines(table), *stage_lines(table), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- plots


def plot_table(table: dict, path: str | Path) -> Path:
    """Toy avg@k per row (mean, std error bars, the seeds as dots) against the paper's metric on a second
    axis: bars, or a line over the rows for the pipeline tables (LINE_TABLES)."""
    plt = pyplot()
    rows, metric = table["rows"], table["metric"]
    x = list(range(len(rows)))
    means = [r["mean"] for r in rows]
    stds = [r["std"] or 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows) + 2), 4.5))
    if table["table"] in LINE_TABLES:
        ax.errorbar(x, means, yerr=stds, marker="o", color="tab:blue", capsize=4, label="toy avg@k (mean ± std)")
    else:
        ax.bar(x, means, yerr=stds, color="tab:blue", alpha=0.7, capsize=4, label="toy avg@k (mean ± std)")
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["values"]), r["values"], s=10, color="k", zorder=3)
    ax.set_xticks(x, [f"{r['id']} (n={r['n']})\n" + textwrap.fill(str(r["label"]), 18) for r in rows], fontsize=7)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set(ylabel="toy avg@k (%)", title=f"Table {table['table']}: toy (blue, dots = seeds) vs paper "
           f"{metric or '(no numbers)'} (red ◆)")
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    paper = [_paper_value(r, metric) if metric else None for r in rows]
    if any(p is not None for p in paper):
        ax2 = ax.twinx()
        px = [i for i, p in zip(x, paper, strict=True) if p is not None]
        ax2.plot(px, [p for p in paper if p is not None], "D", color="tab:red", ms=7,
                 ls="--" if table["table"] in LINE_TABLES else "none", label=f"paper {metric}")
        ax2.set_ylabel(f"paper {metric} (%)", color="tab:red")
        ax2.tick_params(axis="y", colors="tab:red")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------- outputs


def _inputs_versions(results: list[dict]) -> list[dict]:
    seen = {json.dumps(r["versions"], sort_keys=True) for r in results if r.get("versions")}
    return [json.loads(v) for v in sorted(seen)]


def write_report(runs: Sequence[str | Path], out_dir: str | Path, tables: Sequence[int] | None = None, *,
                 per_question: str = "required", analysis: str | Path | None = None,
                 summary_path: str | Path | None = None, bootstrap: dict | None = None) -> dict:
    """Read, aggregate and write ``report.md``, ``report.json``, ``summary.json`` (also to ``summary_path``),
    ``table<N>.png``, ``contrasts.png`` and the world-analysis figures into ``out_dir``; returns the report
    (``outputs``: name -> path). ``per_question="optional"``: a missing results.jsonl falls back to the
    seed-level comparison instead of failing; ``bootstrap``: {resamples, seed}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world, bootstrap = cx.load_analysis(analysis), cx.check_bootstrap(bootstrap)  # bad input fails before any work
    results, duplicates = collect(runs, tables)
    if analysis is None:  # the world analysis from these runs (learning-curve rows, DAS pools, mixed rounds)
        world = analyze(results)
    questions, notes = cx.load_questions(results, per_question)
    report = {"runs": [str(r) for r in runs], "n_files": len(results) + len(duplicates),
              "n_results": len(results), "created_at": time.strftime("%Y-%m-%d %H:%M:%S"),
              "duplicates": duplicates, "per_question_notes": notes, "analysis": str(analysis) if analysis else None,
              "tables": aggregate(results, questions, bootstrap)}
    report["summary"] = cx.build_summary(report, results, world)
    for note in notes:
        log.warning("seed-level comparison only: %s", note)
    for d in duplicates:
        log.warning("duplicate result of %s seed %s: kept %s, dropped %s", d["id"], d["seed"], d["kept"],
                    d["dropped"])
    for table in report["tables"].values():
        for w in table["warnings"]:
            log.warning(w)
    outputs = {"markdown": out_dir / "report.md", "json": out_dir / "report.json", "summary": out_dir / "summary.json"}
    for path in [outputs["summary"], *([Path(summary_path)] if summary_path else [])]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report["summary"], indent=2) + "\n")
    for t, table in report["tables"].items():
        outputs[f"table{t}"] = plot_table(table, out_dir / f"table{t}.png")
    outputs.update(cx.plot_all(report, world, out_dir))
    outputs["markdown"].write_text(markdown(report))
    report["outputs"] = {k: str(v) for k, v in outputs.items()}
    report["inputs"] = sorted(r["_path"] for r in results)
    report["versions"] = {"report": versions(), "git": git_revision(Path(__file__).parent),
                          "runs": _inputs_versions(results)}
    outputs["json"].write_text(json.dumps(report, indent=2, default=str))
    return report


def wandb_rows(table: dict) -> tuple[list[str], list[list]]:
    """The markdown table with numbers in place of text (mean and std in columns of their own)."""
    cols = columns(table)
    i = cols.index("toy avg@k (mean ± std)")
    cols = [*cols[:i], "toy avg@k mean", "toy avg@k std", *cols[i + 1:]]
    data = [[x["id"], x["label"], *[_paper_value(x, m) for m in table["metrics"]], x["mean"], x["std"], x["n"],
             x["truncation_rate"], x["mean_response_tokens"], x["train_seconds"], x["seconds"]]
            for x in table["rows"]]
    return cols, data


CONTRAST_COLUMNS = ["table", "b", "a", "what", "metric", "paper diff", "toy diff", "ci low", "ci high", "mde",
                    "seed-level diff", "combined std", "verdict"]


def log_wandb(report: dict, logger_cfg, *, group: str, name: str, out_dir: str | Path, config: dict) -> str | None:
    """One W&B run (job_type ``report``): a ``wandb.Table`` and the PNG per paper table, the contrasts (table
    and ``contrasts.png``), the world-analysis figures, the summary's numbers, and ``report.md`` +
    ``report.json`` + ``summary.json`` as an artifact. Offline without an API key; returns the run dir."""
    run = open_run(logger_cfg, dir=out_dir, group=group, job_type="report", name=name, config=config)
    if run is None:
        return None
    import wandb

    data, contrasts = {}, []
    for t, table in report["tables"].items():
        cols, rows = wandb_rows(table)
        data[f"report/table{t}"] = wandb.Table(columns=cols, data=rows)
        data[f"report/table{t}_plot"] = wandb.Image(report["outputs"][f"table{t}"])
        contrasts += [[t, c["b"], c["a"], c["what"], c.get("metric"), c.get("paper_diff"), c.get("diff"),
                       c.get("ci_low"), c.get("ci_high"), c.get("mde"), c.get("toy_diff"), c.get("combined_std"),
                       c["verdict"]] for c in table["contrasts"]]
    data["report/contrasts"] = wandb.Table(columns=CONTRAST_COLUMNS, data=contrasts)
    for key in ("contrasts", "learning_curve", "cutoff_by_length"):
        if key in report["outputs"]:
            data[f"report/{key}_plot"] = wandb.Image(report["outputs"][key])
    run.log(data)
    summary = report["summary"]
    run.summary.update({"report/results": report["n_results"], "report/duplicates": len(report["duplicates"]),
                        **{f"report/{k}": v for k, v in summary.items() if isinstance(v, int | float)
                           and not isinstance(v, bool)}})
    artifact = wandb.Artifact("ablation_report", type="report")
    for key in ("markdown", "json", "summary"):
        artifact.add_file(report["outputs"][key])
    run.log_artifact(artifact)
    run_dir = run.dir
    run.finish()
    return run_dir


def report(cfg) -> dict:
    """``python report.py``: the Hydra config -> ``write_report`` + ``log_wandb``."""
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, "runs") or not cfg.runs:
        raise ValueError("runs: give the sweep's directory, e.g. python report.py "
                         "runs=outputs/ablate/multirun/<time> (or runs=[<dir>,<dir>])")
    runs = [cfg.runs] if isinstance(cfg.runs, str) else [str(r) for r in cfg.runs]
    tables = None if cfg.tables is None else [int(t) for t in ([cfg.tables] if isinstance(
        cfg.tables, int | str) else cfg.tables)]
    out = write_report(runs, cfg.out_dir, tables, per_question=str(cfg.per_question), analysis=cfg.analysis,
                       summary_path=cfg.summary_path, bootstrap=dict(cfg.bootstrap))
    if cfg.get("export_rows"):
        rows, _ = collect(runs, tables)
        written = export_rows(rows, Path(str(cfg.export_rows)))
        log.info("%d row folders copied to %s (python report.py runs=%s rebuilds this report)", len(written),
                 cfg.export_rows, cfg.export_rows)
    log_wandb(out, cfg.logger, group=cfg.experiment_name, name=str(cfg.run_name), out_dir=cfg.out_dir,
              config=OmegaConf.to_container(cfg, resolve=True))
    for t, table in out["tables"].items():
        log.info("table %d: %s", t, ", ".join(f"{x['id']} {_pm(x['mean'], x['std'])} (n={x['n']})"
                                               for x in table["rows"]))
    log.info("%d results (%d duplicates dropped) -> %s; verdicts: %s; summary -> %s", out["n_results"],
             len(out["duplicates"]), out["outputs"]["markdown"], out["summary"]["verdicts"],
             ", ".join([out["outputs"]["summary"], *([str(cfg.summary_path)] if cfg.summary_path else [])]))
    return out
