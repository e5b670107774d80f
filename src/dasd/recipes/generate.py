"""``generate(cfg)``: the one place that reads the generation config (``python generate.py ...``)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dasd.config_checks import check_generate
from dasd.generation.engine import SamplingConfig
from dasd.generation.identity import teacher_identity
from dasd.generation.pipeline import (
    TeacherFormat,
    finished_pairs,
    generate_shard,
    shard_questions,
    shard_settings,
    summarize,
)
from dasd.generation.questions import read_questions
from dasd.generation.shards import ShardWriter
from dasd.utils.logging import get_logger
from dasd.utils.plots import plot_generation_summary
from dasd.utils.run import Manifest, git_revision, versions
from dasd.utils.runlock import run_lock
from dasd.utils.secrets import refuse_secrets
from dasd.utils.wandb import open_run

log = get_logger(__name__)

def _log_wandb(cfg: DictConfig, run_dir: Path, summary: dict, png: Path, config: dict) -> None:
    run = open_run(cfg.logger, dir=run_dir, group=cfg.experiment_name, job_type="generate", config=config,
                   name=f"generate/{run_dir.name}")
    if run is None:
        return
    import wandb

    run.summary.update({k: v for k, v in summary.items() if not isinstance(v, list)})
    run.log({"generate/summary": wandb.Image(str(png)),
             "generate/response_probability": wandb.Histogram(summary["response_probabilities"]),
             "generate/response_length": wandb.Histogram(summary["lengths"])})
    run.finish()


def generate(cfg: DictConfig) -> dict:
    """Sample this shard's candidates; write records, a summary JSON, histograms (PNG) and the manifest."""
    check_generate(cfg)  # bad values stop here, before anything is loaded or written (dasd.config_checks)
    shard = f"shard-{int(cfg.shard.index):05d}-of-{int(cfg.shard.count):05d}"
    # one process per run dir, and per shard of an output_dir (runs with other run dirs may share one)
    with run_lock(cfg.paths.run_dir, "generate"), run_lock(Path(cfg.output_dir) / ".locks" / shard, "generate"):
        return _generate(cfg)


def _generate(cfg: DictConfig) -> dict:
    run_dir, out_dir = Path(cfg.paths.run_dir), Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    refuse_secrets(config)  # before anything is written (the CLI also checks it, before Hydra writes .hydra/)
    sampling = SamplingConfig(temperature=float(cfg.sampling.temperature), top_p=cfg.sampling.top_p,
                              max_tokens=cfg.sampling.max_tokens, stop=tuple(cfg.sampling.stop),
                              logprob_mode=cfg.sampling.logprob_mode, top_k=cfg.sampling.top_k,
                              min_p=cfg.sampling.min_p, repetition_penalty=cfg.sampling.repetition_penalty)
    questions, report = read_questions(cfg.questions, on_error=cfg.on_error)
    for skip in report.messages():  # the first few of each reason; report.skipped counts them all
        log.warning("skipped question: %s", skip)
    if report.skipped:
        log.warning("skipped %d questions: %s", sum(report.skipped.values()), dict(report.skipped))
    if cfg.max_questions is not None:
        questions = questions[: cfg.max_questions]
    mine = shard_questions(questions, cfg.shard.index, cfg.shard.count)
    writer = ShardWriter(out_dir, cfg.shard.index, cfg.shard.count)
    fmt = TeacherFormat(kind=cfg.teacher.format, system_prompt=cfg.teacher.system_prompt,
                        chat_template_kwargs=OmegaConf.to_container(cfg.teacher.chat_template_kwargs))
    one = replace(sampling, n=1)  # what generate_shard samples with
    overwrite = bool(cfg.get("overwrite", False))  # before the teacher loads: other settings refused in seconds
    writer.claim(shard_settings(str(cfg.engine.model), one, cfg.seed, fmt, teacher_identity(config["engine"])),
                 overwrite=overwrite)
    done = finished_pairs(writer, mine, cfg.samples_per_question, overwrite=overwrite)  # other questions stop here
    engine = instantiate(cfg.engine)
    sent = engine.sampling_args(one)
    try:
        counts = generate_shard(engine, mine, writer, samples_per_question=cfg.samples_per_question,
                                sampling=sampling, seed=cfg.seed, fmt=fmt, batch_size=cfg.batch_size,
                                progress=cfg.progress, done=done)
    finally:
        engine.close()
    shard_file = writer.finalize()
    summary = summarize(list(writer.rows()))
    png = run_dir / "generation_summary.png"
    plot_generation_summary(summary["lengths"], summary["response_probabilities"], png,
                            f"{cfg.teacher.name} · T={sampling.temperature} · shard {cfg.shard.index}/{cfg.shard.count}")
    plain = {k: v for k, v in summary.items() if not isinstance(v, list)}
    (run_dir / "generation_summary.json").write_text(json.dumps({**plain, **counts}, indent=2))
    Manifest(run_dir / "manifest.json").update(
        status="completed", kind="generate", config=config, questions=report.summary(), counts=counts,
        summary=plain, output=str(shard_file), settings=writer.settings, sampling_sent=sent, versions=versions(),
        git=git_revision(Path(__file__).parent),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _log_wandb(cfg, run_dir, summary, png, config)
    log.info("wrote %s: %s", shard_file, plain)
    return {**plain, **counts, "output": str(shard_file)}
