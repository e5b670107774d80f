"""``evaluate(cfg)``: avg@k accuracy of a model on a task with the paper's protocol (``python evaluate.py``;
the protocol and the resume rules: ``dasd.eval.results``)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dasd.config_checks import check_evaluate
from dasd.eval.results import (
    TABLE_COLUMNS,
    grade_question,
    logged_scalars,
    mtime_fingerprint,
    plot_eval,
    resume_rows,
    summarize,
    table_rows,
)
from dasd.eval.tasks import load_task
from dasd.generation.engine import SamplingConfig
from dasd.generation.identity import engine_identity
from dasd.utils.hashing import model_fingerprint
from dasd.utils.logging import get_logger
from dasd.utils.run import Manifest, config_hash, git_revision, versions
from dasd.utils.runlock import run_lock
from dasd.utils.secrets import refuse_secrets
from dasd.utils.wandb import open_run

log = get_logger(__name__)


def _log_wandb(cfg: DictConfig, run_dir: Path, task: str, summary: dict, rows: list[dict], png: Path,
               config: dict) -> None:
    run = open_run(cfg.logger, dir=run_dir, group=cfg.experiment_name, job_type="evaluate", config=config,
                   name=cfg.run_name)
    if run is None:
        return
    import wandb

    scalars = logged_scalars(task, summary)
    run.summary.update(scalars)
    run.log({**scalars, f"eval/{task}/questions": wandb.Table(columns=TABLE_COLUMNS, data=table_rows(rows)),
             f"eval/{task}/summary": wandb.Image(str(png))})
    run.finish()


def evaluate(cfg: DictConfig) -> dict:
    """Generate k samples per question, grade them, write ``results.jsonl``, ``summary.json``,
    ``eval_summary.png`` and the manifest into the run dir, and log the summary (W&B). Returns the summary."""
    check_evaluate(cfg)  # bad values stop here, before anything is loaded or written (dasd.config_checks)
    with run_lock(cfg.paths.run_dir, "evaluate"):  # one process per run dir (dasd.utils.runlock)
        return _evaluate(cfg)


def _evaluate(cfg: DictConfig) -> dict:
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    refuse_secrets(config)  # before anything is written (the CLI also checks it, before Hydra writes .hydra/)
    task, k = cfg.task.name, int(cfg.k)
    sampling = SamplingConfig(n=k, temperature=float(cfg.sampling.temperature),
                              top_p=float(cfg.sampling.top_p), max_tokens=int(cfg.sampling.max_tokens),
                              seed=cfg.seed,
                              logprob_mode=cfg.sampling.logprob_mode)
    items, report = load_task(cfg.task.loader, cfg.task.path, seed=cfg.task.seed, limit=cfg.task.limit,
                              on_error=cfg.task.on_error)
    if not items:
        raise ValueError(f"task {task!r}: no questions in {cfg.task.path} (loader report: {report})")
    task_key = {k_: v for k_, v in config["task"].items() if k_ != "limit"}  # more questions: keep the done ones
    settings = {"model": cfg.model, "task": task_key, "k": k, "seed": cfg.seed, "system_prompt": cfg.system_prompt,
                "sampling": config["sampling"], "chat_template_kwargs": config["chat_template_kwargs"],
                "engine": engine_identity(config["engine"])}  # batch size etc. may change on a resume
    weights = model_fingerprint(str(cfg.model), full=True)
    key = config_hash({**settings, "weights": weights})
    legacy = config_hash({**settings, "weights": mtime_fingerprint(cfg.model)})  # dasd before content keys
    rows = resume_rows(run_dir, key, items, bool(cfg.resume), bool(cfg.get("overwrite", False)), (legacy,),
                       identity={"model": str(cfg.model), "weights": weights})
    done = {r["id"] for r in rows}
    todo = [it for it in items if it.id not in done]
    log.info("evaluating %s on %s: %d questions x k=%d, T=%.1f, top_p=%.1f, max_tokens=%d (%d already done)",
             cfg.model, task, len(items), k, sampling.temperature, sampling.top_p, sampling.max_tokens,
             len(done))
    t0, new_tokens, sent = time.perf_counter(), 0, None
    if todo:
        engine = instantiate(cfg.engine)
        sent = engine.sampling_args(sampling)  # what the engine (or server) is sent: recorded in the manifest
        try:
            kwargs = OmegaConf.to_container(cfg.chat_template_kwargs, resolve=True)
            for a in range(0, len(todo), int(cfg.batch_size)):
                batch = grade_question(engine, todo[a:a + int(cfg.batch_size)], sampling, seed=int(cfg.seed),
                                       system_prompt=cfg.system_prompt, chat_template_kwargs=kwargs,
                                       save_responses=bool(cfg.save_responses))
                with (run_dir / "results.jsonl").open("a") as f:
                    f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in batch))
                rows += batch
                new_tokens += sum(t for r in batch for t in r["response_tokens"])
                dt = time.perf_counter() - t0
                so_far = 100 * statistics.fmean(r["accuracy"] for r in rows)
                log.info("%d/%d questions: avg@%d so far %.1f%%, %.0f tokens/s, %.0f s", len(rows),
                         len(items), k, so_far, new_tokens / max(dt, 1e-9), dt)
        finally:
            engine.close()
    order = {it.id: i for i, it in enumerate(items)}
    rows.sort(key=lambda r: order[r["id"]])
    seconds = time.perf_counter() - t0
    summary = {"task": task, "model": str(cfg.model), "engine": cfg.engine._target_.rsplit(".", 1)[-1],
               **summarize(rows, k, int(cfg.bootstrap)), "max_tokens": sampling.max_tokens,
               "temperature": sampling.temperature, "top_p": sampling.top_p,
               "system_prompt": cfg.system_prompt,
               "seconds": round(seconds, 3), "tokens_per_s": new_tokens / seconds if new_tokens else None,
               "loader_report": report}
    png = run_dir / "eval_summary.png"
    plot_eval(rows, png, f"{task} · avg@{k} {summary['avg@k']:.1f}% · {Path(str(cfg.model)).name}")
    (run_dir / "summary.json").write_text(json.dumps({**summary, "config": config, "versions": versions()},
                                                     indent=2, default=str))
    Manifest(run_dir / "manifest.json").update(
        status="completed", kind="evaluate", config=config, summary=summary, sampling_sent=sent, versions=versions(),
        git=git_revision(Path(__file__).parent), finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        outputs={"results": str(run_dir / "results.jsonl"), "summary": str(run_dir / "summary.json"),
                 "figure": str(png)})
    _log_wandb(cfg, run_dir, task, summary, rows, png, config)
    log.info("%s avg@%d = %.2f%% (95%% CI %.2f-%.2f, %d questions), truncation %.3f, mean %.0f tokens; in %s",
             task, k, summary["avg@k"], *summary["ci95"], summary["n_questions"], summary["truncation_rate"],
             summary["mean_response_tokens"], run_dir)
    return summary
