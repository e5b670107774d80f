"""``provenance(cfg)``: where a distilled model's sentences come from (``python provenance.py``; method.md §5.3a,
the DASD report's Figs. 5 and 6; docs/provenance.md).

1. Responses: the distilled model D's graded responses from an evaluate.py run (``responses.eval_dir``, run
   with ``save_responses=true``; the weights it recorded must be D's), or sampled and graded here by
   evaluate.py into ``<run_dir>/eval`` (kept there: a rerun samples nothing).
2. Sentences: ``dasd.das.segment`` (DAS's segmentation).
3. Scores: each sentence's geometric-mean token probability under the teacher T, the pre-distillation student S
   and D, each model teacher-forced through its engine (hf, vllm, openai prompt logprobs) in its own rendering
   (``dasd.das.forced``: its chat template, or gpt-oss harmony) and aligned by character spans as DAS is.
   Scores are kept per model in a ``SentenceStore`` (``store_dir``), so another alpha or beta rescores nothing.
4. Labels and shares (``dasd.das.provenance``), figures and examples (``dasd.das.provenance_report``), all in
   the run dir and W&B.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from dasd.config_checks import check_provenance
from dasd.das.forced import Response, SentenceStore, build_rendering, score_responses
from dasd.das.provenance import TYPES, UNLABELED, LabeledResponse, bootstrap, provenance_codes, summarize
from dasd.das.provenance_report import example_html, plot_overall, plot_positions, render_examples_html
from dasd.das.segment import SEGMENTATION_VERSION, segment
from dasd.das.selector import ALIGNMENT_VERSION
from dasd.data.cache import tokenizer_fingerprint
from dasd.eval.results import item_hash, read_results
from dasd.eval.tasks import load_task
from dasd.generation.registry import build_engine
from dasd.models.student import load_tokenizer
from dasd.recipes.ablation import compose
from dasd.recipes.evaluate import evaluate
from dasd.utils.hashing import model_fingerprint, stable_hash
from dasd.utils.logging import get_logger
from dasd.utils.run import Manifest, git_revision, versions, write_json
from dasd.utils.runlock import run_lock
from dasd.utils.secrets import refuse_secrets
from dasd.utils.wandb import open_run

log = get_logger(__name__)
ROLES = ("teacher", "student", "distilled")
SYMBOL = {"teacher": "T", "student": "S", "distilled": "D"}


class ProvenanceInputError(ValueError):
    """The models or responses cannot be analysed as given (the message names what and where)."""


def provenance(cfg: DictConfig) -> dict:
    """Run the analysis; write ``provenance_summary.json``, ``provenance_sentences.parquet``,
    ``provenance_overall.png``, ``provenance_position.png``, ``examples.html`` and ``manifest.json`` into the
    run dir and log them to W&B. Returns the summary."""
    check_provenance(cfg)  # bad values stop here, before anything is loaded or written
    with run_lock(cfg.paths.run_dir, "provenance"):
        return _provenance(cfg)


def _model_weights(role: str, m: DictConfig) -> str:
    if m.engine == "openai":
        return f"served:{m.path}"
    return model_fingerprint(str(m.path), full=role == "distilled")  # D: every byte (stage checkpoints differ late)


# ------------------------------------------------------------------ responses


def _sample_here(cfg: DictConfig, config: dict, run_dir: Path) -> Path:
    """D's responses to the task, sampled and graded by evaluate.py into ``<run_dir>/eval`` (resumed there)."""
    d = cfg.models.distilled
    engine_values = {f"engine.{k}": v for k, v in (config["models"]["distilled"]["engine_args"] or {}).items()} \
        if cfg.responses.engine == d.engine else {}
    eval_dir = run_dir / "eval"
    ecfg = compose("evaluate", [f"engine={cfg.responses.engine}"], {
        "task": config["task"], "model": str(d.path), "k": int(cfg.responses.k), "seed": int(cfg.seed),
        "system_prompt": d.system_prompt, "save_responses": True, "batch_size": int(cfg.responses.batch_size),
        "experiment_name": cfg.experiment_name, "run_name": f"{cfg.run_name}/eval", "paths.run_dir": str(eval_dir),
        "logger": config["logger"], **engine_values})
    log.info("sampling and grading D's responses with evaluate.py into %s", eval_dir)
    evaluate(ecfg)
    return eval_dir


def _read_eval(eval_dir: Path, d_weights: str, d: DictConfig) -> tuple[dict, list[dict], dict]:
    """(the evaluation's config, its rows, id -> EvalItem), after checking that D wrote them."""
    results, key_file, summary_file = eval_dir / "results.jsonl", eval_dir / "eval_key.json", eval_dir / "summary.json"
    for f in (results, key_file, summary_file):
        if not f.is_file():
            raise ProvenanceInputError(f"responses.eval_dir={eval_dir}: no {f.name} (not a finished evaluate.py run "
                                       "directory)")
    recorded = json.loads(key_file.read_text())
    if "weights" not in recorded:
        raise ProvenanceInputError(f"{key_file}: records no weights fingerprint (written by an older evaluate.py); "
                                   "rerun evaluate.py with save_responses=true, or leave responses.eval_dir unset "
                                   "to sample here")
    if recorded["weights"] != d_weights:
        raise ProvenanceInputError(
            f"{results}: these responses were sampled from {recorded.get('model')!r} (weights {recorded['weights']}), "
            f"not from the distilled model models.distilled.path={d.path} (weights {d_weights}); point "
            "responses.eval_dir at an evaluation of D, or leave it unset to sample here")
    ecfg = json.loads(summary_file.read_text())["config"]
    if ecfg.get("system_prompt") != d.system_prompt:
        raise ProvenanceInputError(
            f"{summary_file}: D answered under system_prompt={ecfg.get('system_prompt')!r}, but "
            f"models.distilled.system_prompt is {d.system_prompt!r}: D must be scored under the prompt it "
            "answered (set system_prompt to the evaluation's)")
    if (ecfg.get("chat_template_kwargs") or {}) != OmegaConf.to_container(d.chat_template_kwargs):
        raise ProvenanceInputError(f"{summary_file}: D answered with chat_template_kwargs="
                                   f"{ecfg.get('chat_template_kwargs')}, models.distilled.chat_template_kwargs is "
                                   f"{OmegaConf.to_container(d.chat_template_kwargs)}")
    rows = read_results(results)
    t = ecfg["task"]
    items, _ = load_task(t["loader"], t["path"], seed=t["seed"], limit=t.get("limit"), on_error=t["on_error"])
    return ecfg, rows, {it.id: it for it in items}


def _responses(rows: list[dict], items: dict, results: Path, min_chars: int,
               on_empty: str) -> tuple[list[Response], list[dict], dict]:
    """The responses to score (one per sample), their meta (id, sample, correct) and the skip counts."""
    out, meta, skipped = [], [], {"empty": 0, "examples": []}
    for line, row in enumerate(rows, start=1):
        if "responses" not in row:
            raise ProvenanceInputError(f"{results}, line {line} (question {row['id']}): no 'responses' field: the "
                                       "evaluation was run without save_responses=true")
        item = items.get(row["id"])
        if item is None or item_hash(item) != row.get("qhash"):
            raise ProvenanceInputError(f"{results}, line {line}: question {row['id']} is not in the task as it reads "
                                       "now (missing or changed)")
        for j, text in enumerate(row["responses"]):
            spans = segment(text, min_chars=min_chars)
            if len(spans) == 0:
                where = f"{results}, line {line} (question {row['id']}), sample {j}"
                if on_empty == "raise":
                    raise ProvenanceInputError(f"{where}: the response has no sentence to score (text {text[:60]!r}); "
                                               "on_empty=skip leaves such responses out and counts them")
                skipped["empty"] += 1
                if len(skipped["examples"]) < 5:
                    skipped["examples"].append(where)
                continue
            key = stable_hash([item.question, text, min_chars, SEGMENTATION_VERSION], 24, sort_keys=False,
                              ensure_ascii=False)
            out.append(Response(key, item.question, text, spans))
            meta.append({"id": row["id"], "sample": j, "correct": bool(row["correct"][j]),
                         "unfinished": bool(row.get("unfinished", [False] * (j + 1))[j])})
    if skipped["empty"]:
        log.warning("%d empty responses left out (on_empty=skip), e.g. %s", skipped["empty"], skipped["examples"][0])
    return out, meta, skipped


# ------------------------------------------------------------------ scoring


def _score_role(role: str, m: DictConfig, weights: str, responses: list[Response], cfg: DictConfig) -> tuple:
    engine_args = OmegaConf.to_container(m.engine_args, resolve=True) if m.engine_args is not None else {}
    name = engine_args.get("tokenizer") or str(m.path)
    try:
        tok = load_tokenizer(name)
    except Exception as e:  # noqa: BLE001 (any loader failure is reported with the model it concerns)
        raise ProvenanceInputError(f"models.{role}.path={m.path}: its tokenizer does not load ({type(e).__name__}: "
                                   f"{e})") from e
    rendering = build_rendering(m.format, tok, system_prompt=m.system_prompt,
                                chat_template_kwargs=OmegaConf.to_container(m.chat_template_kwargs))
    parts = {"model": weights, "tokenizer": tokenizer_fingerprint(tok), "rendering": rendering.identity(),
             "segmentation": SEGMENTATION_VERSION, "min_chars": int(cfg.min_chars),
             "alignment": ALIGNMENT_VERSION, "logprobs": "raw"}
    store = SentenceStore(Path(cfg.store_dir) / stable_hash(parts, 20),
                          meta={**parts, "path": str(m.path), "engine": m.engine})

    def engine():
        try:
            return build_engine(m.engine, str(m.path), engine_args)
        except Exception as e:  # noqa: BLE001
            raise ProvenanceInputError(f"models.{role}.path={m.path}: the {m.engine} engine cannot load it "
                                       f"({type(e).__name__}: {e})") from e

    log.info("%s (%s): %s, %s engine, scores in %s", role, SYMBOL[role], m.path, m.engine, store.folder)
    scores, stats = score_responses(responses, store, rendering, engine, batch_size=int(cfg.batch_size),
                                    flush_every=int(cfg.flush_every), what=f"{role} ({SYMBOL[role]})")
    return scores, {**stats, "store": str(store.folder), "weights": weights, "path": str(m.path),
                    "engine": m.engine, "format": m.format}


# ------------------------------------------------------------------ outputs


def _sentence_table(responses, meta, probs, labeled) -> pa.Table:
    cols: dict[str, list] = {k: [] for k in ("id", "sample", "correct", "sentence", "start", "end", "position",
                                             "p_teacher", "p_student", "p_distilled", "type")}
    for r, m, p, lab in zip(responses, meta, probs, labeled, strict=True):
        n = len(r.spans)
        cols["id"] += [m["id"]] * n
        cols["sample"] += [m["sample"]] * n
        cols["correct"] += [m["correct"]] * n
        cols["sentence"] += list(range(n))
        cols["start"] += r.spans[:, 0].tolist()
        cols["end"] += r.spans[:, 1].tolist()
        cols["position"] += lab.positions().tolist()
        for k, v in zip(("p_teacher", "p_student", "p_distilled"), p, strict=True):
            cols[k] += v.tolist()
        cols["type"] += ["unlabeled" if c == UNLABELED else TYPES[c] for c in lab.codes]
    return pa.table(cols)


def _examples(responses, meta, probs, labeled, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    good = [i for i, m in enumerate(meta) if m["correct"]]
    bad = [i for i, m in enumerate(meta) if not m["correct"]]
    rng.shuffle(good)
    rng.shuffle(bad)
    half = min(len(good), n // 2)  # half correct where there are enough, the rest incorrect, then correct again
    pick = good[:half] + bad[:n - half]
    pick += good[half:half + n - len(pick)]
    cards = []
    for i in pick:
        r, m, (pt, ps, pd), lab = responses[i], meta[i], probs[i], labeled[i]
        nan = lambda a: [None if np.isnan(x) else float(x) for x in a]  # noqa: E731
        cards.append({**m, "question": r.question, "text": r.text, "spans": r.spans.tolist(),
                      "labels": ["unlabeled" if c == UNLABELED else TYPES[c] for c in lab.codes],
                      "p_teacher": nan(pt), "p_student": nan(ps), "p_distilled": nan(pd)})
    return cards


def _log_wandb(cfg: DictConfig, run_dir: Path, config: dict, summary: dict, pngs: dict, cards: list[dict]) -> None:
    run = open_run(cfg.logger, dir=run_dir, group=cfg.experiment_name, job_type="provenance", name=cfg.run_name,
                   config=config)
    if run is None:
        return
    import wandb

    scalars = {f"provenance/share/{g}/{t}": v for g, shares in summary["shares"].items() if shares
               for t, v in shares.items()}
    scalars.update({f"provenance/delta/{t}": v for t, v in summary["delta"].items() if v is not None})
    scalars.update({f"provenance/count/{k}": v for k, v in summary["counts"].items()})
    run.summary.update(scalars)
    table = wandb.Table(columns=["id", "sample", "correct", *TYPES, "response"],
                        data=[[c["id"], c["sample"], c["correct"], *[c["labels"].count(t) for t in TYPES],
                               wandb.Html(example_html(c))] for c in cards])
    run.log({**scalars, **{f"provenance/{k}": wandb.Image(str(p)) for k, p in pngs.items()},
             "provenance/examples": table})
    run.finish()


def _label(path: str) -> str:
    """A model's short name: the stage folder of ``<stage>/checkpoints/hf/final``, else the folder's name."""
    p = Path(path)
    return p.parents[2].name if p.parts[-3:] == ("checkpoints", "hf", p.name) and len(p.parts) > 3 else p.name


def _provenance(cfg: DictConfig) -> dict:
    t0 = time.perf_counter()
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    refuse_secrets(config)
    weights = {role: _model_weights(role, cfg.models[role]) for role in ROLES}
    d = cfg.models.distilled
    eval_dir = Path(cfg.responses.eval_dir) if cfg.responses.eval_dir else _sample_here(cfg, config, run_dir)
    ecfg, rows, items = _read_eval(eval_dir, weights["distilled"], d)
    responses, meta, skipped = _responses(rows, items, eval_dir / "results.jsonl", int(cfg.min_chars),
                                          cfg.on_empty)
    if not responses:
        raise ProvenanceInputError(f"{eval_dir / 'results.jsonl'}: no response to analyse ({len(rows)} questions, "
                                   f"{skipped['empty']} empty responses left out)")
    log.info("provenance: %d responses of D to %d questions (%s), %d sentences", len(responses), len(rows),
             eval_dir, sum(len(r.spans) for r in responses))
    scores, scoring = {}, {}
    for role in ROLES:
        scores[role], scoring[role] = _score_role(role, cfg.models[role], weights[role], responses, cfg)
    probs, labeled = [], []
    for r, m in zip(responses, meta, strict=True):
        p = tuple(scores[role][r.key].probability for role in ROLES)
        probs.append(p)
        labeled.append(LabeledResponse(provenance_codes(*p, alpha=float(cfg.alpha), beta=float(cfg.beta)),
                                       np.asarray(r.spans, np.int64).reshape(-1, 2), len(r.text), m["correct"]))
    summary = summarize(labeled, alpha=float(cfg.alpha), beta=float(cfg.beta), bins=int(cfg.bins))
    summary["ci95"] = bootstrap(labeled, [m["id"] for m in meta], bins=int(cfg.bins), resamples=int(cfg.bootstrap),
                                seed=int(cfg.seed))
    summary["counts"]["skipped_empty"] = skipped["empty"]
    summary["responses"] = {"eval_dir": str(eval_dir), "task": ecfg["task"].get("name"), "k": ecfg.get("k"),
                            "questions": len(rows), "accuracy": float(np.mean([m["correct"] for m in meta])),
                            "skipped_examples": skipped["examples"]}
    summary["models"] = {role: {"path": str(cfg.models[role].path), "weights": weights[role],
                                "format": cfg.models[role].format} for role in ROLES}
    summary["scoring"] = scoring
    pq.write_table(_sentence_table(responses, meta, probs, labeled), run_dir / "provenance_sentences.parquet")
    title = f"{cfg.label or _label(str(d.path))}: {summary['responses']['task']}, {len(responses)} responses"
    pngs = {"overall": plot_overall(summary, run_dir / "provenance_overall.png", f"sentence provenance · {title}"),
            "position": plot_positions(summary, run_dir / "provenance_position.png",
                                       f"by position, correct vs incorrect · {title}")}
    cards = _examples(responses, meta, probs, labeled, int(cfg.num_examples), int(cfg.seed))
    html_path = render_examples_html(cards, run_dir / "examples.html", summary)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    write_json(run_dir / "provenance_summary.json", {**summary, "config": config, "versions": versions()})
    Manifest(run_dir / "manifest.json").update(
        status="completed", kind="provenance", config=config, versions=versions(), git=git_revision(Path(__file__).parent),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        lineage={"responses": str(eval_dir), **{role: summary["models"][role] for role in ROLES}},
        outputs={"summary": str(run_dir / "provenance_summary.json"),
                 "sentences": str(run_dir / "provenance_sentences.parquet"),
                 "figures": {k: str(p) for k, p in pngs.items()}, "examples": str(html_path)})
    _log_wandb(cfg, run_dir, config, summary, pngs, cards)
    s = summary["shares"]["all"] or dict.fromkeys(TYPES, float("nan"))
    log.info("provenance: Shared %.1f%%, Teacher %.1f%%, Student %.1f%%, Boosted %.1f%% of %d labelled sentences; "
             "delta (correct - incorrect) %s; in %s (%.0f s)", *(100 * s[t] for t in TYPES),
             summary["counts"]["sentences"] - summary["counts"]["unlabeled"],
             {t: None if v is None else round(100 * v, 1) for t, v in summary["delta"].items()}, run_dir,
             summary["seconds"])
    return summary
