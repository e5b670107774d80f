"""The ablation report's outputs: ``report.md`` with a table per paper table, the figures, ``report.json`` and
``summary.json`` (``write_report``), and the rows for W&B tables. ``python report.py`` (``dasd.recipes.report``)
runs it."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

from dasd.ablation import contrasts as cx
from dasd.ablation.analysis import analyze
from dasd.ablation.contrasts import md_table as _md_table
from dasd.ablation.results import CONTRASTS, LINE_TABLES, RESULT_FILE, Contrast, collect
from dasd.ablation.tables import _paper_value, aggregate
from dasd.utils.logging import get_logger
from dasd.utils.plots import pyplot
from dasd.utils.run import git_revision, versions

log = get_logger(__name__)

# ----------------------------------------------------------------------------------------------- markdown


_f = cx.fmt


def plus_minus(mean, std) -> str:
    return f"{_f(mean)} ± {_f(std)}"


def columns(table: dict) -> list[str]:
    """The columns of a table, in the markdown and in W&B."""
    return ["id", "setting", *[f"paper {m}" for m in table["metrics"]], "toy avg@k (mean ± std)", "seeds",
            "trunc.", "tokens", "train s", "wall s"]


def table_cells(table: dict, row: dict) -> list[str]:
    return [row["id"], row["label"], *[_f(_paper_value(row, m)) for m in table["metrics"]],
            plus_minus(row["mean"], row["std"]), str(row["n"]), _f(row["truncation_rate"], ".3f"),
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
    body = [[x["id"], str(s["step"]), s["stage"], s["settings"], plus_minus(s["mean"], s["std"]), str(s["n"]),
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
