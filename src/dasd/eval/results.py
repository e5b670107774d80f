"""The pieces of an avg@k evaluation (``dasd.recipes.evaluate`` runs them for ``python evaluate.py``).

Protocol (method.md §9): every question is asked ``k`` times as a chat [system prompt, question] at
temperature 1.0 and top_p 1.0 with a token budget per task (AIME 102,400, GPQA-Diamond 81,920); every sample
is graded (``dasd.text.grading.grade``); avg@k is the mean of the per-question accuracies, in % (= expected
pass@1). The 95% CI is a percentile bootstrap over questions (``bootstrap`` resamples, fixed seed 0), so it
reflects question sampling, not the k samples' own noise.

Seeded and resumable: question ``id`` draws its k samples from seed ``question_seed(seed, id)``, whatever its
position or batch, and ``results.jsonl`` is appended one batch at a time, so a rerun with the same settings
(``eval_key.json``) generates only the questions not yet there and gives the same result.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path

import numpy as np

from dasd.generation.engine import Engine, Request, SamplingConfig
from dasd.text.grading import grade
from dasd.text.think import THINK_CLOSE_TAG
from dasd.utils.hashing import stable_hash
from dasd.utils.io import write_jsonl
from dasd.utils.logging import get_logger
from dasd.utils.plots import pyplot
from dasd.utils.run import write_json

log = get_logger(__name__)
CI_METHOD = "percentile bootstrap over questions (95%, seed 0)"


def question_seed(seed: int, question_id: str) -> int:
    """The stable seed of a question's k samples."""
    return int(hashlib.sha256(f"{seed}:{question_id}".encode()).hexdigest()[:8], 16)


def mtime_fingerprint(model: str) -> str | list:
    """The weights part of an ``eval_key.json`` written before evaluation keys used the content fingerprint
    (``dasd.utils.hashing.model_fingerprint(full=True)``): a hub id as given, a local directory by the name,
    size and modification time of its config and weight files. Read only to carry such an evaluation over
    (``resume_rows``'s ``legacy_keys``)."""
    path = Path(str(model))
    if not path.is_dir():
        return str(model)
    files = [f for f in path.iterdir() if f.is_file() and (f.name == "config.json" or ".safetensors" in f.name
                                                            or f.suffix == ".bin")]
    return sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files)


def item_hash(item) -> str:
    """A question as asked and graded (id, text, grader, reference): a stored result counts only for it."""
    return stable_hash([item.id, item.question, item.grader, item.reference], 16, sort_keys=False,
                       ensure_ascii=False)


def unfinished(sample) -> bool:
    """A sample cut by the token budget before its reasoning closed (no ``</think>``): it has no answer,
    whatever numbers or letters its reasoning mentions."""
    return sample.finish_reason == "length" and THINK_CLOSE_TAG not in sample.text


def grade_question(engine: Engine, items: list, sampling: SamplingConfig, *, seed: int,
                   system_prompt: str | None, chat_template_kwargs: dict, save_responses: bool) -> list[dict]:
    """One ``results.jsonl`` row per item: k samples from one engine call, each graded."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    requests = [Request(messages=(*system, {"role": "user", "content": it.question}),
                        chat_template_kwargs=chat_template_kwargs, seed=question_seed(seed, it.id))
                for it in items]
    rows = []
    for it, samples in zip(items, engine.generate(requests, sampling), strict=True):
        if len(samples) != sampling.n:  # e.g. a server that ignores n: accuracy over fewer samples
            raise RuntimeError(f"the engine returned {len(samples)} samples for question {it.id}, not k={sampling.n}")
        cut = [unfinished(s) for s in samples]
        correct = [not c and bool(grade(it.grader, s.text, it.reference)) for s, c in zip(samples, cut, strict=True)]
        row = {"id": it.id, "qhash": item_hash(it), "grader": it.grader, "reference": it.reference,
               "correct": correct, "unfinished": cut,
               "accuracy": sum(correct) / len(correct),
               "response_tokens": [len(s.token_ids) for s in samples],
               "finish_reasons": [s.finish_reason for s in samples], "meta": it.meta}
        if save_responses:
            row["responses"] = [s.text for s in samples]
        rows.append(row)
    return rows


def bootstrap_ci(values: list[float], resamples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``values`` (resampling the values)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    means = x[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(rows: list[dict], k: int, resamples: int = 10000) -> dict:
    """avg@k (%), its CI, lengths, truncation and the per-grader breakdown of ``results.jsonl`` rows."""
    acc = [r["accuracy"] for r in rows]
    tokens = [t for r in rows for t in r["response_tokens"]]
    finishes = [f for r in rows for f in r["finish_reasons"]]
    lo, hi = bootstrap_ci(acc, resamples)
    per_grader = {}
    for g in sorted({r["grader"] for r in rows}):
        sub = [r["accuracy"] for r in rows if r["grader"] == g]
        per_grader[g] = {"n_questions": len(sub), "avg@k": 100 * sum(sub) / len(sub)}
    return {"k": k, "n_questions": len(rows), "n_samples": len(tokens),
            "avg@k": 100 * sum(acc) / len(acc) if acc else float("nan"),
            "ci95": [100 * lo, 100 * hi], "ci_method": CI_METHOD, "bootstrap_resamples": resamples,
            "mean_response_tokens": statistics.fmean(tokens) if tokens else 0.0,
            "median_response_tokens": statistics.median(tokens) if tokens else 0.0,
            "truncation_rate": finishes.count("length") / len(finishes) if finishes else 0.0,
            "unfinished_rate": (sum(sum(r.get("unfinished", [])) for r in rows) / len(finishes)
                                if finishes else 0.0),
            "generated_tokens": sum(tokens), "per_grader": per_grader}


def plot_eval(rows: list[dict], path: str | Path, title: str) -> None:
    """Accuracy per question (histogram over questions) and response length split by correct/incorrect."""
    plt = pyplot()
    k = max((len(r["correct"]) for r in rows), default=1)
    good = [t for r in rows for t, c in zip(r["response_tokens"], r["correct"], strict=True) if c]
    bad = [t for r in rows for t, c in zip(r["response_tokens"], r["correct"], strict=True) if not c]
    fig, (ax_acc, ax_len) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_acc.hist([r["accuracy"] for r in rows], bins=np.linspace(0, 1, min(k, 20) + 2), color="tab:green")
    ax_acc.set(xlabel=f"accuracy over the {k} samples", ylabel="questions", title="per question")
    bins = np.linspace(0, max(good + bad, default=1), 41)
    ax_len.hist([good, bad], bins=bins, stacked=True, color=["tab:blue", "tab:red"],
                label=[f"correct ({len(good)})", f"incorrect ({len(bad)})"])
    ax_len.set(xlabel="response length (tokens)", ylabel="samples", title="length")
    ax_len.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def logged_scalars(task: str, summary: dict) -> dict:
    """The summary as ``eval/<task>/...`` scalars (avg@k under its own k, e.g. ``eval/aime24/avg@64``)."""
    p = f"eval/{task}"
    return {f"{p}/avg@{summary['k']}": summary["avg@k"], f"{p}/ci95_low": summary["ci95"][0],
            f"{p}/ci95_high": summary["ci95"][1], f"{p}/truncation_rate": summary["truncation_rate"],
            f"{p}/mean_response_tokens": summary["mean_response_tokens"],
            f"{p}/median_response_tokens": summary["median_response_tokens"],
            f"{p}/n_questions": summary["n_questions"]}


TABLE_COLUMNS = ["id", "grader", "reference", "accuracy", "n_correct", "mean_tokens", "truncated"]


def table_rows(rows: list[dict]) -> list[list]:
    return [[r["id"], r["grader"], str(r["reference"])[:500], r["accuracy"], sum(r["correct"]),
             statistics.fmean(r["response_tokens"]), r["finish_reasons"].count("length")] for r in rows]


def read_results(path: Path) -> list[dict]:
    """Complete rows of a ``results.jsonl`` (a line cut by a kill is dropped)."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def resume_rows(run_dir: Path, key: str, items: list, enabled: bool, overwrite: bool,
                legacy_keys: tuple[str, ...] = (), identity: dict | None = None) -> list[dict]:
    """Rows of an earlier run with the same settings whose question is asked as now (``qhash``); otherwise a
    fresh ``results.jsonl``. Results of other settings (another model or its new weights, k, sampling...)
    are never mixed in, and never deleted without ``overwrite=true``. ``legacy_keys``: what this same
    evaluation's key was under an earlier key scheme; such a run is carried over and its key rewritten.
    ``identity`` (the model and its weights' fingerprint) is written beside the key in ``eval_key.json``, so a
    reader of ``results.jsonl`` (the provenance analysis) can tell which weights wrote it."""
    results, key_file = run_dir / "results.jsonl", run_dir / "eval_key.json"
    old = json.loads(key_file.read_text()).get("key") if key_file.is_file() else None
    if old is not None and old in legacy_keys:
        log.info("%s: results keyed by an earlier scheme (weights by file times); kept, key rewritten", run_dir)
        old = key
    previous = read_results(results)
    if previous and old != key and not overwrite:
        raise ValueError(f"{run_dir} holds the results of another evaluation (model or its weights, task, k, "
                         "seed, sampling, prompt or engine differ); choose another experiment_name/run_name, "
                         "or overwrite=true to replace them")
    current = {it.id: item_hash(it) for it in items}
    rows = [r for r in previous if current.get(r["id"]) == r.get("qhash")] if enabled and old == key else []
    write_jsonl(results, rows)  # renamed into place: a kill never leaves half the file
    write_json(key_file, {"key": key, **(identity or {})})
    for stale in ("summary.json", "eval_summary.png"):  # they describe the old rows until this run ends
        (run_dir / stale).unlink(missing_ok=True)
    return rows
