"""The provenance analysis (``provenance.py``, docs/provenance.md) of the reasoning world's distilled students:
every step model of the given ablation rows against the world's teacher (``teacher_a``) and its pre-trained
student, on the world's held-out questions; then a README with the table, intervals and a verdict on the
paper's pattern, and a figure of the per-type gaps and deltas.

    .venv/bin/python scripts/world_provenance.py outputs/ablate/T3a_seed1 outputs/ablate/T3b_seed1 \\
        outputs/ablate/T7c_seed1 --k 2 --out docs/results/provenance

Each model is one ``provenance.py`` run (a child process, W&B offline without a key) in
``outputs/provenance_world/<label>/``; its summary and figures are copied under ``--out/<label>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dasd.das.provenance_report import COLOURS
from dasd.utils.child import hydra_literal

REPO = Path(__file__).resolve().parent.parent
TYPES = ("shared", "teacher", "student", "boosted")
FILES = ("provenance_summary.json", "provenance_overall.png", "provenance_position.png", "examples.html")


def models_of(rows: list[Path]) -> list[dict]:
    """Every step model of the rows (a step shared by two rows once), in row order."""
    seen, out = set(), []
    for row in rows:
        r = json.loads((row / "row_result.json").read_text())
        for i, step in enumerate(r["steps"]):
            if step["key"] in seen:
                continue
            seen.add(step["key"])
            s = step["settings"]
            sampler = {"divergence": "DAS", "random": "RS"}.get(s.get("sampler"), s.get("sampler", ""))
            label = r["id"] if i == len(r["steps"]) - 1 else f"{r['id']}_step{i}"  # the last step is the row's model
            out.append({"label": label, "row": r["id"], "step": i, "world": r["world"]["dir"]
                        if isinstance(r["world"], dict) else r["world"],
                        "model": str(Path(step["dir"]) / "checkpoints" / "hf" / "final"),
                        "what": f"stage {s.get('stage')}, T={s.get('temperature')}, {sampler}, "
                                f"{s.get('questions')}x questions", "eval": r["config"]["budget"]["eval"],
                        "accuracy_row_eval": step["eval"]["avg@k"]})
    return out


def run(m: dict, k: int, seed: int, root: Path, extra: list[str]) -> Path:
    world = Path(m["world"])
    cmd = [sys.executable, str(REPO / "provenance.py"), f"paths.root_dir={root}", "experiment_name=provenance_world",
           f"run_name={m['label']}", f"label={hydra_literal(m['label'] + ' (' + m['what'] + ')')}",
           "task=world", f"task.path={world / 'data' / 'heldout.jsonl'}", f"task.max_tokens={m['eval']['max_tokens']}",
           f"responses.k={k}", f"seed={seed}", "system_prompt=null", f"models.teacher.path={world / 'teacher_a'}",
           f"models.student.path={world / 'student'}", f"models.distilled.path={m['model']}", *extra]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    print("+", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return root / "outputs" / "provenance_world" / m["label"]


def within_question(sentences: Path, resamples: int = 1000, seed: int = 0) -> dict:
    """Correct − incorrect share of Teacher and Boosted sentences between responses to the *same* question
    (questions whose samples were graded both ways): the question's difficulty held fixed. Mean over those
    questions and a percentile-bootstrap 95% interval over them."""
    import numpy as np
    import pyarrow.parquet as pq

    t = pq.read_table(sentences, columns=["id", "sample", "correct", "type"]).to_pydict()
    per: dict[tuple, dict] = {}
    for qid, sample, correct, kind in zip(t["id"], t["sample"], t["correct"], t["type"], strict=True):
        if kind == "unlabeled":
            continue
        r = per.setdefault((qid, sample), {"id": qid, "correct": correct, "n": 0, "teacher": 0, "boosted": 0})
        r["n"] += 1
        r[kind] = r.get(kind, 0) + 1
    questions: dict[str, dict[bool, list]] = {}
    for r in per.values():
        questions.setdefault(r["id"], {True: [], False: []})[r["correct"]].append(r)
    out = {"questions": 0}
    diffs = {k: [] for k in ("teacher", "boosted")}
    for q in questions.values():
        if q[True] and q[False]:
            out["questions"] += 1
            for k in diffs:
                diffs[k].append(np.mean([r[k] / r["n"] for r in q[True]]) - np.mean([r[k] / r["n"] for r in q[False]]))
    rng = np.random.default_rng(seed)
    for k, d in diffs.items():
        d = np.asarray(d)
        if len(d) == 0:
            out[k] = None
            continue
        boots = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
        out[k] = {"mean": float(d.mean()), "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}
    return out


def _pts(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.1f}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _ci(ci: list | None) -> str:
    return "—" if ci is None else f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def _verdict(point: float | None, ci: list | None, sign: int) -> str:
    if point is None or ci is None:
        return "n/a"
    if (ci[0] > 0 and sign > 0) or (ci[1] < 0 and sign < 0):
        return "as the paper"
    if (ci[0] > 0 and sign < 0) or (ci[1] < 0 and sign > 0):
        return "against the paper"
    return "inconclusive"


def figure(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    for ax, key, name in zip(axes, ("share_gap", "delta"), ("overall share gap", "Fig. 6 area delta"), strict=True):
        for j, t in enumerate(TYPES):
            xs = [i + (j - 1.5) * 0.18 for i in range(len(results))]
            ys = [100 * (r["summary"][key][t] or 0) for r in results]
            lo = [100 * (r["summary"]["ci95"][key][t] or [0, 0])[0] for r in results]
            hi = [100 * (r["summary"]["ci95"][key][t] or [0, 0])[1] for r in results]
            ax.errorbar(xs, ys, yerr=[[y - a for y, a in zip(ys, lo, strict=True)],
                                      [b - y for y, b in zip(ys, hi, strict=True)]],
                        fmt="o", capsize=3, label=t.capitalize(), color=COLOURS[t])
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlim(-0.6, len(results) - 0.4)
        ax.set_xticks(range(len(results)), [r["label"] for r in results], rotation=20, fontsize=8)
        ax.set_title(f"{name}: correct − incorrect (points, 95% CI)", fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_readme(results: list[dict], out: Path, argv: list[str], k: int) -> None:
    lines = ["# Sentence provenance in the reasoning world", "",
             f"Made by `{' '.join(['.venv/bin/python', 'scripts/world_provenance.py', *argv])}`. Each model is the "
             f"distilled student D of one step of an ablation row (docs/ablations.md). The teacher T is the world's "
             f"`teacher_a`, the pre-distillation student S is the world's pre-trained `student`. D answered each of "
             f"the world's held-out questions {k} time(s) at T=1.0 (evaluate.py, graded exact). α = β = 0.1. "
             "Intervals: 95% percentile bootstrap over questions (1000 resamples). Gap: the type's overall share "
             "in correct minus incorrect responses. Δ: the mean over 10 position bins of the same difference (the "
             "report's Fig. 6). The paper's pattern: Teacher sentences more frequent in correct answers (gap, Δ "
             "> 0), Boosted sentences less (< 0).", "",
             "| model | what | avg acc. | responses | sentences | Shared | Teacher | Student | Boosted | Teacher gap "
             "[CI] | Teacher Δ [CI] | Boosted gap [CI] | Boosted Δ [CI] | Teacher | Boosted |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    within = ["", "**Within a question** (difficulty held fixed): the correct − incorrect share between responses to "
              "the same question, over the questions whose samples were graded both ways; mean and 95% bootstrap "
              "interval over those questions.", "",
              "| model | questions | Teacher (points) [CI] | Boosted (points) [CI] |", "|---|---|---|---|"]
    for r in results:
        w = r["within"]
        cells = ["—" if w[k] is None else f"{100 * w[k]['mean']:+.1f} {_ci(w[k]['ci95'])}" for k in ("teacher", "boosted")]
        within.append(f"| {r['label']} | {w['questions']} | {cells[0]} | {cells[1]} |")
    shares = ["", "**Overall shares with intervals** (all responses; 95% bootstrap over questions):", "",
              "| model | " + " | ".join(t.capitalize() for t in TYPES) + " |", "|---|" + "---|" * len(TYPES)]
    for r in results:
        s, ci = r["summary"]["shares"]["all"] or {}, r["summary"]["ci95"]["shares"]["all"]
        shares.append(f"| {r['label']} | " + " | ".join(
            f"{_pct(s.get(t))} [{100 * ci[t][0]:.1f}, {100 * ci[t][1]:.1f}]" if ci.get(t) else "—" for t in TYPES)
            + " |")
    for r in results:
        s = r["summary"]
        sh, ci = s["shares"]["all"] or {}, s["ci95"]
        gap, delta = s["share_gap"], s["delta"]
        lines.append(
            f"| {r['label']} | {r['what']} | {100 * s['responses']['accuracy']:.1f}% | {s['counts']['responses']} | "
            f"{s['counts']['sentences']} | " + " | ".join(_pct(sh.get(t)) for t in TYPES) + " | "
            f"{_pts(gap['teacher'])} {_ci(ci['share_gap']['teacher'])} | "
            f"{_pts(delta['teacher'])} {_ci(ci['delta']['teacher'])} | "
            f"{_pts(gap['boosted'])} {_ci(ci['share_gap']['boosted'])} | "
            f"{_pts(delta['boosted'])} {_ci(ci['delta']['boosted'])} | "
            f"{_verdict(delta['teacher'], ci['delta']['teacher'], +1)} | "
            f"{_verdict(delta['boosted'], ci['delta']['boosted'], -1)} |")
    lines += within + shares
    lines += ["", "![gaps and deltas](provenance_world.png)", "",
              "Per model (`<label>/`): `provenance_summary.json` (shares, gaps, Δ, intervals, counts, settings, the "
              "models' weights fingerprints), `provenance_overall.png` (Fig. 5), `provenance_position.png` (Fig. 6), "
              "`examples.html`.", ""]
    (out / "README.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", nargs="+", type=Path, help="ablation row folders (outputs/ablate/<row>_seed<s>)")
    p.add_argument("--k", type=int, default=1, help="responses per held-out question")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", type=Path, default=REPO, help="paths.root_dir of the runs (outputs/ goes below it)")
    p.add_argument("--out", type=Path, default=None, help="default: <root>/outputs/provenance_world/report")
    p.add_argument("--override", action="append", default=[], help="another provenance.py override (repeatable)")
    args = p.parse_args(argv)
    args.out = args.out or args.root / "outputs" / "provenance_world" / "report"
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for m in models_of(args.rows):
        run_dir = run(m, args.k, args.seed, args.root, args.override)
        dest = args.out / m["label"]
        dest.mkdir(exist_ok=True)
        for name in FILES:
            shutil.copy(run_dir / name, dest / name)
        summary = json.loads((run_dir / "provenance_summary.json").read_text())
        summary.pop("config", None)
        (dest / "provenance_summary.json").write_text(json.dumps(summary, indent=2))
        results.append({**m, "summary": summary, "within": within_question(run_dir / "provenance_sentences.parquet")})
        (dest / "within_question.json").write_text(json.dumps(results[-1]["within"], indent=2))
    figure(results, args.out / "provenance_world.png")
    write_readme(results, args.out, argv, args.k)
    print(f"wrote {args.out / 'README.md'}")


if __name__ == "__main__":
    main()
