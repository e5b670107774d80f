"""Paired contrasts of the ablation report (``python report.py``; dasd.recipes.report).

Two rows of a paper table, each run over the same seeds and evaluated on the same held-out questions, are
compared cell by cell: diff = mean over seeds of the mean over questions of (b - a), in points. Its 95%
interval comes from a hierarchical paired bootstrap (seeds and questions both resampled with replacement,
questions crossed with seeds), its minimum detectable effect from the bootstrap's standard error, and its
verdict from where the interval lies; dasd.ablation.power splits its noise into seed, question and residual
parts and projects how many seeds would bring the MDE to a target. Also here: the per-question results
reader, the world-analysis file, ``summary.json`` and the figures of the contrasts, the learning curve and the
cut-off shares.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dasd.ablation.analysis import CURVE_TABLE
from dasd.ablation.evidence import open_text, resolve
from dasd.ablation.power import MDE_TARGET, MDE_Z, power
from dasd.utils.plots import pyplot

VERDICTS = ("reproduced", "contradicted", "inconclusive", "no expected direction")
PER_QUESTION = ("required", "optional")
#: the paper tables whose contrasts set summary.json's mde_points (issue 17)
SUMMARY_TABLES = (1, 3, 5, 7)
#: colours of the verdicts in contrasts.png
COLOURS = {"reproduced": "tab:green", "contradicted": "tab:red", "inconclusive": "tab:gray"}

Questions = dict[str, float]  # question id -> accuracy in [0, 1] (the share of the k samples correct)


# ----------------------------------------------------------------------------------------------- reading


def results_path(result: dict) -> Path | None:
    """The per-question ``results.jsonl`` of a row_result's final evaluation: ``final.results``, else the
    last step's ``<dir>/eval/results.jsonl``, else (a base-only row) the base model's."""
    given = result["final"].get("results")
    if given is not None:
        if not isinstance(given, str):
            raise ValueError(f"{result.get('_path', 'row_result.json')}: 'final.results' must be a path, "
                             f"got {given!r}")
        return resolve(result, given)  # relative: inside the row's folder (dasd.ablation.evidence)
    last = result["steps"][-1] if result["steps"] else result.get("base")
    if isinstance(last, dict) and isinstance(last.get("dir"), str):
        return Path(last["dir"]) / "eval" / "results.jsonl"
    return None


def read_questions(path: Path) -> Questions:
    """``results.jsonl`` (or a row's ``questions.jsonl.gz``) -> {question id: accuracy}; ValueError naming
    the file, line and field."""
    try:
        with open_text(Path(path)) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError(f"{path}: per-question results not readable ({e.strerror or e})") from None
    out: Questions = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON line ({e.msg})") from None
        acc = row.get("accuracy") if isinstance(row, dict) else None
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"{path}:{n}: missing field 'id'")
        if not isinstance(acc, int | float) or isinstance(acc, bool) or not 0 <= acc <= 1:
            raise ValueError(f"{path}:{n}: field 'accuracy' must be a number in [0, 1], got {acc!r}")
        qid = str(row["id"])
        if qid in out:
            raise ValueError(f"{path}:{n}: question {qid!r} appears twice")
        out[qid] = float(acc)
    if not out:
        raise ValueError(f"{path}: no per-question results")
    return out


def result_questions(result: dict) -> Questions:
    """The per-question accuracies of one row_result, checked against its ``final`` summary so that a
    stale or foreign results file is never paired; ValueError naming the row_result.json and the path."""
    where = result.get("_path", "row_result.json")
    path = results_path(result)
    if path is None:
        raise ValueError(f"{where}: no per-question results: neither 'final.results' nor a step or base "
                         "'dir' is given")
    try:
        questions = read_questions(path)
    except ValueError as e:
        raise ValueError(f"{where}: its per-question results are missing or broken: {e}") from None
    final = result["final"]
    mean = 100 * math.fsum(questions.values()) / len(questions)
    if len(questions) != final["n_questions"] or abs(mean - final["avg@k"]) > 0.01:
        raise ValueError(f"{where}: {path} does not match its final evaluation ({len(questions)} questions, "
                         f"avg {mean:.2f}% vs final.n_questions {final['n_questions']}, avg@k "
                         f"{final['avg@k']:.2f}%): a stale or foreign results file")
    return questions


def load_questions(results: Sequence[dict], mode: str = "required") -> tuple[dict, list[str]]:
    """(table, row id) -> {seed: questions} for every result, and one note per result whose per-question
    results are missing (``mode="optional"``: that row falls back to the seed-level comparison)."""
    if mode not in PER_QUESTION:
        raise ValueError(f"per_question: expected one of {PER_QUESTION}, got {mode!r}")
    out: dict[tuple[int, str], dict] = {}
    notes = []
    for r in results:
        try:
            q = result_questions(r)
        except ValueError as e:
            if mode == "required":
                raise ValueError(f"{e} (per_question=optional falls back to the seed-level comparison)") \
                    from None
            notes.append(str(e))
            q = None
        out.setdefault((r["table"], r["id"]), {})[r["seed"]] = q
    return out, notes


# ----------------------------------------------------------------------------------------------- statistics


def _seed_key(s) -> tuple:
    return (0, s, "") if isinstance(s, int | float) else (1, 0, str(s))


def pair_cells(a: dict, b: dict) -> tuple[list, list[str], np.ndarray, np.ndarray, dict]:
    """The cells both sides hold: seeds in both, questions held by both in every such seed. Returns
    (seeds, question ids, a and b as [S, Q] accuracy arrays, cells dropped per side)."""
    seeds = sorted(set(a) & set(b), key=_seed_key)
    qids = sorted(set.intersection(*[set(a[s]) & set(b[s]) for s in seeds])) if seeds else []
    A = np.array([[a[s][q] for q in qids] for s in seeds], dtype=float).reshape(len(seeds), len(qids))
    B = np.array([[b[s][q] for q in qids] for s in seeds], dtype=float).reshape(len(seeds), len(qids))
    kept = len(seeds) * len(qids)
    dropped = {side: sum(len(v) for v in d.values()) - kept for side, d in (("a", a), ("b", b))}
    return seeds, qids, A, B, dropped


def _counts(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    """[resamples, n]: how often each of n units is drawn in a with-replacement resample of size n."""
    idx = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(idx.ravel(), minlength=resamples * n).reshape(resamples, n)


def paired_contrast(a: dict, b: dict, *, resamples: int = 2000, seed: int = 0,
                    mde_target: float = MDE_TARGET) -> dict:
    """b - a over the paired (seed, question) cells, in points, with a hierarchical paired bootstrap.

    ``a``, ``b``: seed -> {question id -> accuracy in [0, 1]}. Each resample draws the seeds with replacement
    and, independently, the questions with replacement (the same drawn questions for every drawn seed:
    questions are crossed with seeds) and recomputes the diff. Returns diff, ci_low/ci_high (2.5/97.5
    percentiles), se (bootstrap std), mde (80% power, two-sided alpha 0.05), per-seed diffs, the cells
    dropped per side and ``power`` (dasd.ablation.power: the noise's parts and the seeds the MDE needs to reach
    ``mde_target``). ValueError when no cell is paired."""
    seeds, qids, A, B, dropped = pair_cells(a, b)
    if not seeds or not qids:
        raise ValueError(f"no (seed, question) cell in both rows (seeds {sorted(a, key=_seed_key)} vs "
                         f"{sorted(b, key=_seed_key)})")
    D = 100.0 * (B - A)  # [S, Q] points
    rng = np.random.default_rng(seed)
    ws, wq = _counts(rng, len(seeds), resamples), _counts(rng, len(qids), resamples)
    stats = ((ws @ D) * wq).sum(axis=1) / D.size  # the mean of D over the drawn seeds x drawn questions
    se = float(stats.std(ddof=1))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    seed_level = (f"{len(seeds)} seeds resampled" if len(seeds) > 1 else
                  "one seed: no seed-to-seed spread measured (the interval covers question sampling only)")
    return {"diff": float(D.mean()), "ci_low": float(lo), "ci_high": float(hi), "se": se, "mde": MDE_Z * se,
            "n_seeds": len(seeds), "n_questions": len(qids), "seeds": seeds, "seed_level": seed_level,
            "per_seed_diff": [float(x) for x in D.mean(axis=1)], "dropped_cells": dropped,
            "resamples": resamples, "bootstrap_seed": seed, "power": power(D, mde_target)}


def check_bootstrap(bootstrap: dict | None) -> dict:
    """The bootstrap settings ({resamples, seed, mde_target}, conf/report.yaml), defaults filled; ValueError
    when bad."""
    out = {"resamples": 2000, "seed": 0, "mde_target": MDE_TARGET, **(bootstrap or {})}
    ints = all(isinstance(out.get(k), int) and not isinstance(out.get(k), bool) for k in ("resamples", "seed"))
    target = out.get("mde_target")
    if set(out) != {"resamples", "seed", "mde_target"} or not ints or out["resamples"] < 100 or not (
            _num(target) and target > 0):
        raise ValueError(f"bootstrap: expected {{resamples: int >= 100, seed: int, mde_target: number > 0}}, "
                         f"got {bootstrap!r}")
    return out


def verdict(ci_low: float, ci_high: float, expected_sign: int | None) -> str:
    """reproduced (the interval excludes 0 in the expected direction), contradicted (excludes 0 the other
    way), inconclusive (contains 0); "no expected direction" without one."""
    if not expected_sign:
        return "no expected direction"
    if ci_low > 0 or ci_high < 0:
        return "reproduced" if (1 if ci_low > 0 else -1) == expected_sign else "contradicted"
    return "inconclusive"


def add_interval(pair: dict, qa: dict | None, qb: dict | None, expect: int | None, *, resamples: int,
                 seed: int, mde_target: float = MDE_TARGET) -> dict:
    """A contrast of report.compare_pair gains its paired interval and verdict. The expected sign is the
    paper's (from its numbers), else the contrast's own ``expect``. A side without per-question results
    (per_question=optional) keeps the seed-level comparison, said in ``method`` and ``verdict``."""
    paper = pair.get("paper_diff")
    sign = (1 if paper > 0 else -1) if paper else (expect or None)
    out = {**pair, "id": f"{pair['a']}-{pair['b']}", "expected_sign": sign, "seed_verdict": pair["verdict"],
           "expected_from": "paper" if paper else ("claim" if expect else None)}
    if not all(q and all(v is not None for v in q.values()) for q in (qa, qb)):
        return {**out, "method": "seed-level only: per-question results missing", "diff": pair["toy_diff"],
                "ci_low": None, "ci_high": None, "se": None, "mde": None, "n_seeds": None,
                "n_questions": None, "verdict": f"seed-level only: {pair['verdict']}"}
    try:
        stats = paired_contrast(qa, qb, resamples=resamples, seed=seed, mde_target=mde_target)
    except ValueError as e:
        return {**out, "method": f"not paired: {e}", "diff": None, "ci_low": None, "ci_high": None,
                "se": None, "mde": None, "n_seeds": 0, "n_questions": 0, "verdict": f"not paired: {e}"}
    return {**out, **stats, "method": "paired bootstrap over questions and seeds",
            "verdict": verdict(stats["ci_low"], stats["ci_high"], sign)}


def verdict_counts(contrasts: Sequence[dict]) -> dict[str, int]:
    """How many contrasts got each verdict (a row not run, or only seed-level numbers, counted apart)."""
    counts = dict.fromkeys(VERDICTS, 0) | {"seed-level only": 0, "not run": 0, "not paired": 0}
    for c in contrasts:
        v = c["verdict"]
        key = v if v in VERDICTS else "not run" if c.get("missing") else v.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return {k: n for k, n in counts.items() if n}


# ----------------------------------------------------------------------------------------------- markdown


def fmt(x, spec: str = ".1f") -> str:
    return format(x, spec) if _num(x) and math.isfinite(x) else "—"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in [header, *rows]]
    return ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |"
                                                                         for r in esc[1:])]


def contrast_table(contrasts: Sequence[dict], metric: str | None) -> list[str]:
    """The contrasts of one table: paper diff | toy diff [95% CI] | MDE | seed sd | seeds for the MDE target |
    cells | verdict."""
    body, target = [], None
    for c in contrasts:
        ci = f" [{fmt(c['ci_low'], '+.1f')}, {fmt(c['ci_high'], '+.1f')}]" if c.get("ci_low") is not None else ""
        expected = {1: " (claim: +)", -1: " (claim: −)"}.get(c.get("expected_sign")) \
            if c.get("expected_from") == "claim" else ""
        cells = f"{c['n_seeds']} × {c['n_questions']}" if c.get("n_seeds") else "—"
        p = c.get("power") or {}
        target = p.get("mde_target", target)
        need = "—" if p.get("sd_seed") is None else str(p["seeds_for_target"]) if p.get(
            "seeds_for_target") else "none"
        body.append([f"{c['a']}-{c['b']}", c["what"], fmt(c.get("paper_diff"), "+.1f") + (expected or ""),
                     fmt(c.get("diff"), "+.1f") + ci, fmt(c.get("mde")), fmt(p.get("sd_seed")), need, cells,
                     c["verdict"]])
    return md_table(["contrast (b − a)", "what", f"paper {metric or ''} diff".replace("  ", " "),
                     "toy diff [95% CI]", "MDE", "seed sd", f"seeds for MDE ≤ {fmt(target, 'g')}",
                     "seeds × questions", "verdict"], body)


# ----------------------------------------------------------------------------------------------- analysis


def _check(path, key: str, value, ok: bool, expected: str):
    if not ok:
        raise ValueError(f"{path}: key {key!r} must be {expected}, got {value!r}")
    return value


def _num(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def load_analysis(path: str | Path | None) -> dict:
    """The world-analysis JSON (``analysis=...``): keys missing -> None; a wrong type -> ValueError naming
    the file and the key. Keys: student_sentence_share, cutoff_ratio_by_length ([[bin, share], ...]),
    learning_curve ([{budget, accuracy, ci95}, ...]), unit_budget."""
    keys = ("student_sentence_share", "cutoff_ratio_by_length", "learning_curve", "unit_budget")
    if path is None:
        return dict.fromkeys(keys)
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"analysis: {path} is not a readable JSON file ({e})") from None
    _check(path, "(top level)", type(data).__name__, isinstance(data, dict), "a JSON object")
    out = {k: data.get(k) for k in keys}
    share, bins, curve, unit = (out[k] for k in keys)
    if share is not None:
        _check(path, "student_sentence_share", share, _num(share), "a number")
    if bins is not None:
        _check(path, "cutoff_ratio_by_length", bins, isinstance(bins, list), "a list of [bin, share] pairs")
        for i, b in enumerate(bins):
            _check(path, f"cutoff_ratio_by_length[{i}]", b, isinstance(b, list) and len(b) == 2 and isinstance(
                b[0], str | int | float) and _num(b[1]), "a [bin label or upper edge, share] pair")
    if curve is not None:
        _check(path, "learning_curve", curve, isinstance(curve, list), "a list of {budget, accuracy, ci95}")
        for i, p in enumerate(curve):
            ok = isinstance(p, dict) and isinstance(p.get("budget"), int) and _num(p.get("accuracy")) and (
                p.get("ci95") is None or (isinstance(p["ci95"], list) and len(p["ci95"]) == 2
                                          and all(map(_num, p["ci95"]))))
            _check(path, f"learning_curve[{i}]", p, ok, "{budget: int, accuracy: number, ci95: [lo, hi] or null}")
    if unit is not None:
        _check(path, "unit_budget", unit, isinstance(unit, int) and not isinstance(unit, bool), "an integer")
    return out


# ----------------------------------------------------------------------------------------------- summary


def _row_mean(report: dict, table: int, row: str) -> float | None:
    rows = {x["id"]: x for x in report["tables"].get(table, {}).get("rows", [])}
    return rows[row]["mean"] if row in rows else None


def build_summary(report: dict, results: Sequence[dict], analysis: dict) -> dict:
    """``summary.json``: the headline numbers of the world ablation (issue 17; docs in
    /work/notes/contrasts.md)."""
    contrasts = [c for t in report["tables"].values() for c in t["contrasts"]]
    curve = [r for r in results if r["table"] == CURVE_TABLE]  # the learning curve's runs: not the tables'
    results = [r for r in results if r["table"] != CURVE_TABLE]
    paired = [c for c in contrasts if c.get("mde") is not None]
    worst = max((c for c in paired if c["table"] in SUMMARY_TABLES), key=lambda c: c["mde"], default=None)
    accuracy = [r["world"]["accuracy"] for r in results if isinstance(r["world"].get("accuracy"), dict)]
    base = _row_mean(report, 7, "T7a")
    ks = sorted({r["final"]["k"] for r in results})
    questions = sorted({c["n_questions"] for c in paired})
    powers = [c.get("power") or {} for c in paired if c["table"] in SUMMARY_TABLES]
    needs = [p.get("seeds_for_target") for p in powers]  # None: one seed, or no number of seeds reaches it
    return {
        "teacher_accuracy": next((a.get("teacher_a") for a in accuracy if "teacher_a" in a), None),
        "student_base_accuracy": base if base is not None else next(
            (a.get("student") for a in accuracy if "student" in a), None),
        "distilled_accuracy": _row_mean(report, 7, "T7d"),
        "mde_points": worst["mde"] if worst else None, "mde_contrast": worst["id"] if worst else None,
        "mde_target": next((p["mde_target"] for p in powers if "mde_target" in p), None),
        "seeds_for_mde_target": max(needs) if needs and None not in needs else None,
        "seeds_for_mde_target_note": "the most seeds any contrast of Tables 1, 3, 5, 7 needs for its projected "
                                     "MDE to reach mde_target (dasd.ablation.power); null when a contrast has one "
                                     "seed or no number of seeds reaches it",
        "student_sentence_share": analysis["student_sentence_share"],
        "cutoff_ratio_by_length": analysis["cutoff_ratio_by_length"],
        "seeds": sorted({r["seed"] for r in results}, key=_seed_key),
        "heldout_questions": questions[0] if questions else None, "heldout_questions_all": questions,
        "k": ks[0] if len(ks) == 1 else ks,
        "wall_hours": sum(float(r["seconds"]) for r in results) / 3600,
        "wall_hours_note": "the sum of the row jobs' wall times (row_result.json 'seconds'), as if run one "
                           "after another; steps reused from the cache cost their row nothing",
        "worlds": sorted({str(r["world"]["key"]) for r in results}),
        "learning_curve": analysis["learning_curve"], "unit_budget": analysis["unit_budget"],
        "learning_curve_wall_hours": sum(float(r["seconds"]) for r in curve) / 3600 if curve else None,
        "sentence_shares": analysis.get("sentence_shares"),
        "verdicts": verdict_counts(contrasts),
        "contrasts": [{k: c.get(k) for k in ("id", "diff", "ci_low", "ci_high", "verdict", "table", "what",
                                             "paper_diff", "mde", "expected_sign", "n_seeds", "n_questions",
                                             "power")}
                      for c in contrasts],
    }


def summary_lines(report: dict) -> list[str]:
    """The headline of report.md: summary.json in words."""
    s = report["summary"]
    verdicts = ", ".join(f"{n} {v}" for v, n in s["verdicts"].items()) or "none"
    return [f"**Summary** (summary.json): teacher {fmt(s['teacher_accuracy'])}%, student base "
            f"{fmt(s['student_base_accuracy'])}%, distilled (T7d) {fmt(s['distilled_accuracy'])}%; seeds "
            f"{s['seeds']}, {s['heldout_questions'] or '—'} paired held-out questions, k = {s['k']}; worst "
            f"minimum detectable effect (80% power) {fmt(s['mde_points'])} points ({s['mde_contrast'] or '—'}); "
            f"seeds for every MDE ≤ {fmt(s.get('mde_target'), 'g')}: {s.get('seeds_for_mde_target') or '—'}; "
            f"verdicts: {verdicts}; {fmt(s['wall_hours'], '.2f')} h of row jobs (summed).",
            "Contrasts: diff = b − a in points over the (seed, question) cells both rows hold; 95% CI from a "
            "paired bootstrap over seeds and questions; MDE = 2.8 × its se. Seed sd and the seeds the MDE target "
            "needs: variance components of the paired differences (dasd.ablation.power; the seed sd rests on "
            f"{max(len(s['seeds']) - 1, 0)} degree(s) of freedom: a rough size with few seeds). Verdict: "
            "*reproduced* when the CI excludes 0 in the expected direction (the paper's numbers, or the claim "
            "marked for a control), *contradicted* when it excludes 0 the other way, else *inconclusive*."]


# ----------------------------------------------------------------------------------------------- figures


def plot_all(report: dict, analysis: dict, out_dir: Path) -> dict[str, Path]:
    """contrasts.png, and learning_curve.png / cutoff_by_length.png when the analysis has their data."""
    out = {"contrasts": plot_contrasts([c for t in report["tables"].values() for c in t["contrasts"]],
                                       out_dir / "contrasts.png")}
    if analysis["learning_curve"]:
        out["learning_curve"] = plot_learning_curve(analysis["learning_curve"], analysis["unit_budget"],
                                                    out_dir / "learning_curve.png")
    if analysis["cutoff_ratio_by_length"]:
        out["cutoff_by_length"] = plot_cutoff(analysis["cutoff_ratio_by_length"], out_dir / "cutoff_by_length.png")
    if analysis.get("sentence_shares"):
        out["sentence_shares"] = plot_sentence_shares(analysis["sentence_shares"], out_dir / "sentence_shares.png")
    return out


def plot_sentence_shares(shares: dict[str, dict], path: str | Path) -> Path:
    """Stacked shares of Teacher / Shared / Student / unlabeled sentences in the DAS-scored teacher pools."""
    plt = pyplot()
    kinds = (("teacher", "tab:blue"), ("shared", "0.7"), ("student", "tab:orange"), ("unlabeled", "0.9"))
    names = list(shares)
    fig, ax = plt.subplots(figsize=(6.5, 1.4 + 0.6 * len(names)))
    left = np.zeros(len(names))
    for kind, colour in kinds:
        values = np.array([float(shares[n].get(kind) or 0.0) for n in names])
        ax.barh(range(len(names)), values, left=left, color=colour, label=kind)
        for y, (x0, v) in enumerate(zip(left, values, strict=True)):
            if v >= 0.04:
                ax.text(x0 + v / 2, y, f"{v:.0%}", ha="center", va="center", fontsize=8)
        left += values
    ax.set_yticks(range(len(names)), [f"teacher_a pool {n}" for n in names])
    ax.set(xlim=(0, 1), xlabel="share of the pool's sentences (beta = 0.1)",
           title="Sentence types in the teacher pools (pre-distillation student)")
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    plt = pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the y labels and the direction arrows sit outside the axes
    plt.close(fig)
    return Path(path)


def plot_contrasts(contrasts: Sequence[dict], path: str | Path) -> Path:
    """One horizontal line per contrast: the toy diff and its 95% CI (colour = verdict), the zero line, and
    the expected direction (the paper's, or the method's claim) as an arrow at the right."""
    plt = pyplot()
    shown = [c for c in contrasts if c.get("diff") is not None][::-1]  # the first contrast on top
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.42 * max(len(shown), 1)))
    for y, c in enumerate(shown):
        colour = COLOURS.get(c["verdict"], "tab:blue")
        if c.get("ci_low") is not None:
            ax.hlines(y, c["ci_low"], c["ci_high"], color=colour, lw=2.5)
        ax.plot(c["diff"], y, "o", color=colour, mfc=colour if c.get("ci_low") is not None else "white")
        arrow = {1: "▶", -1: "◀"}.get(c.get("expected_sign"), "")
        ax.annotate(arrow, (1.01, y), xycoords=("axes fraction", "data"), va="center",
                    color="tab:purple" if c.get("expected_from") == "claim" else "tab:red")
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(range(len(shown)), [f"{c['id']}: {textwrap.shorten(c['what'], 44)}" for c in shown], fontsize=7)
    ax.set_xlabel("toy diff b − a (points), 95% paired bootstrap CI")
    ax.set_title("Contrasts. Verdict: green reproduced, red contradicted, grey inconclusive.\n"
                 "Expected direction ▶ (+) / ◀ (−): red from the paper's numbers, purple the method's claim",
                 fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_learning_curve(curve: Sequence[dict], unit_budget: int | None, path: str | Path) -> Path:
    """Student accuracy after SFT on teacher data against the budget (log x), 95% CI bars, unit budget."""
    plt = pyplot()
    pts = sorted(curve, key=lambda p: p["budget"])
    x, y = [p["budget"] for p in pts], [p["accuracy"] for p in pts]
    err = [[p["accuracy"] - p["ci95"][0] if p.get("ci95") else 0 for p in pts],
           [p["ci95"][1] - p["accuracy"] if p.get("ci95") else 0 for p in pts]]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.errorbar(x, y, yerr=err, marker="o", capsize=4)
    if unit_budget is not None:
        ax.axvline(unit_budget, color="tab:red", ls="--", label=f"unit budget ({unit_budget})")
        ax.legend()
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(x, [f"{b:,}" for b in x])  # the measured budgets, not log-scale minor labels
    ax.set(xlabel="SFT budget (questions, log scale)", ylabel="held-out accuracy (%)", title="Learning curve")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_cutoff(bins: Sequence[list], path: str | Path) -> Path:
    """The share of student rollouts cut off at 1.5x the teacher's length, per teacher-length bin."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.bar(range(len(bins)), [b[1] for b in bins], color="tab:orange")
    labels = [b[0] if isinstance(b[0], str) else f"≤{b[0]:.0f}" for b in bins]  # a number: the bin's upper edge
    ax.set_xticks(range(len(bins)), labels, fontsize=8)
    ax.set(xlabel="teacher response length (bin)", ylabel="share cut off at 1.5x",
           title="Student rollouts cut off by teacher length (Fig. 7 analogue)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
