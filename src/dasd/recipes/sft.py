"""``train(cfg)``: one training stage from the whole Hydra config (``python train.py``): plan (init, resume,
identity), data, module, strategy, loggers and callbacks, fit, manifest."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig

from dasd.config_checks import check_train
from dasd.das import artifacts as das_artifacts
from dasd.data.datamodule import SFTDataModule
from dasd.eval.callback import EvaluateAtEnd
from dasd.mixed.report import log_round
from dasd.models.student import StudentSpec, load_tokenizer
from dasd.recipes import mixed_stage
from dasd.recipes.components import LOGGER_SETTINGS, instantiate_entries
from dasd.recipes.data import datamodule
from dasd.recipes.stage import stage_settings
from dasd.training.callbacks import HFCheckpoint, MetricsFile, ResumeCheckpoint, RunIdentity
from dasd.training.loggers import build_loggers
from dasd.training.module import SFTModule
from dasd.training.nonfinite import NonFiniteConfig, NonFiniteError, TrainingFailed
from dasd.training.optim import OptimConfig
from dasd.training.stages import StagePlan, latest_checkpoint, plan_stage
from dasd.training.strategy import build_strategy
from dasd.utils.logging import get_logger
from dasd.utils.run import Manifest, git_revision, versions
from dasd.utils.runlock import run_lock
from dasd.utils.secrets import refuse_secrets
from dasd.utils.steps import optimizer_steps

log = get_logger(__name__)


def _mixed_policy(cfg: DictConfig) -> bool:
    """``callbacks=mixed_policy`` is on (its rounds change each epoch's data)."""
    return bool((cfg.get("callbacks") or {}).get("mixed_policy"))


def _context(cfg: DictConfig, plan: StagePlan, tokenizer, dm: SFTDataModule) -> dict:
    """What a callback or logger from the config may take by parameter name (dasd.recipes.components)."""
    return {"run_dir": plan.run_dir, "checkpoint_dir": plan.run_dir / "checkpoints",
            "hf_dir": plan.run_dir / "checkpoints" / "hf", "datamodule": dm, "tokenizer": tokenizer,
            "mixed": OmegaConf.to_container(cfg.mixed, resolve=True),
            "filters": OmegaConf.to_container(cfg.filters, resolve=True) if cfg.filters.order else None,
            "optim": OptimConfig(**OmegaConf.to_container(cfg.optim)), "config": plan.config}


def _callbacks(cfg: DictConfig, plan: StagePlan, tokenizer, dm: SFTDataModule,
               context: dict | None = None) -> list[L.Callback]:
    """``context``: the run's values for the configured callbacks (``_context``; built here when None)."""
    ckpt_dir = plan.run_dir / "checkpoints"
    callbacks: list[L.Callback] = [ResumeCheckpoint(ckpt_dir, cfg.train.save_every_n_steps)]
    callbacks += [HFCheckpoint(ckpt_dir / "hf", tokenizer, keep=cfg.train.keep_hf_checkpoints),
                  MetricsFile(str(plan.run_dir), plot_every_n_steps=cfg.train.plot_every_n_steps),
                  RunIdentity(plan.wandb_run_id, plan.config_hash)]
    # the callbacks group's _target_ entries come after HFCheckpoint (mixed_policy revises with the epoch's
    # exported weights) and before EvaluateAtEnd
    context = context if context is not None else _context(cfg, plan, tokenizer, dm)
    callbacks += instantiate_entries(cfg.get("callbacks"), context, "callbacks")
    if cfg.get("eval"):  # eval=default; after HFCheckpoint, whose on_train_end writes checkpoints/hf/final
        callbacks.append(EvaluateAtEnd(plan.run_dir, ckpt_dir / "hf" / "final", OmegaConf.to_container(
            cfg.eval, resolve=True), root_dir=cfg.paths.root_dir, experiment_name=cfg.experiment_name))
    if cfg.trainer.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=cfg.train.progress_refresh_rate))
    return callbacks


def _strategy(cfg: DictConfig, init_from: str):
    """Built first: a DeepSpeed strategy on a machine without CUDA fails before any heavy work."""
    s = OmegaConf.to_container(cfg.strategy, resolve=True)
    hidden = AutoConfig.from_pretrained(init_from).hidden_size if s["name"].startswith("deepspeed") else None
    return build_strategy(s.pop("name"), hidden_size=hidden, offload=s.pop("offload", False),
                          zero_overrides=s.pop("zero_overrides", None), micro_batch_size=cfg.train.micro_batch_size,
                          **s)


def _trainer(cfg: DictConfig, plan: StagePlan, tokenizer, strategy, dm: SFTDataModule) -> L.Trainer:
    loggers = build_loggers(cfg.logger.name, plan.run_dir, run_id=plan.wandb_run_id, name=plan.display_name,
                            group=cfg.experiment_name, tags=list(cfg.tags), config=plan.config,
                            project=cfg.logger.get("project", "dasd"), entity=cfg.logger.get("entity"),
                            mode=cfg.logger.get("mode", "auto"))
    context = _context(cfg, plan, tokenizer, dm)
    extra = instantiate_entries(cfg.logger, context, "logger", skip=LOGGER_SETTINGS)
    for lg in extra:  # the main logger got the config from build_loggers
        lg.log_hyperparams(plan.config)
    loggers += extra
    return L.Trainer(**OmegaConf.to_container(cfg.trainer), strategy=strategy, logger=loggers or False,
                     callbacks=_callbacks(cfg, plan, tokenizer, dm, context), max_epochs=cfg.train.epochs,
                     reload_dataloaders_every_n_epochs=1 if _mixed_policy(cfg) else 0,
                     accumulate_grad_batches=cfg.train.accumulate, gradient_clip_val=cfg.optim.max_grad_norm,
                     gradient_clip_algorithm="norm", use_distributed_sampler=False,
                     default_root_dir=str(plan.run_dir), log_every_n_steps=1, num_sanity_val_steps=0)


def _data_outputs(dm: SFTDataModule, run_dir: Path, beta: float | None):
    """Write ``data_report.json`` and, for DAS, the figures, summary and examples under ``das/``; returns
    (name -> path, the DAS paths and example cards or None)."""
    (run_dir / "data_report.json").write_text(json.dumps(dm.report(), indent=2))
    outputs, das = {"data_report": str(run_dir / "data_report.json")}, None
    if das_artifacts.has_artifacts(dm.folder):  # sampler=divergence
        das = das_artifacts.publish(dm.folder, run_dir / "das", beta)
        outputs.update({k: str(v) for k, v in das[0].items()})
    return outputs, das


def prepare_data(cfg: DictConfig) -> dict:
    """``data_only=true``: read, filter, score (DAS) and select the stage's data into the cache, write
    ``data_report.json`` and the sampler's figures to the run dir, and stop before any model is trained.
    The next ``train.py`` with the same data settings starts from the cached selection. For stage=mixed
    this includes the revision round."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:  # torchrun/srun start every rank: rank 0 alone prepares the data
        return {}
    mixed = None
    if cfg.stage.get("mixed"):
        mixed = mixed_stage.round_summary(mixed_stage.prepare_mixed_stage(cfg, rank_zero=True))
        cfg = mixed_stage.mixed_training_config(cfg)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    dm = datamodule(cfg, load_tokenizer(cfg.student.name_or_path))  # every stage's checkpoint has this tokenizer
    dm.setup("fit")
    report = dm.report()
    outputs, _ = _data_outputs(dm, run_dir, cfg.sampler.get("beta"))
    Manifest(run_dir / "manifest.json").update(
        status="data_only", stage=cfg.stage.id, run_dir=str(run_dir),
        config=OmegaConf.to_container(cfg, resolve=True), data=report, versions=versions(),
        git=git_revision(Path(__file__).parent), outputs=outputs, mixed=mixed)
    log.info("data ready (no training: data_only=true): %d samples selected; report in %s",
             report["selection"].get("selected", 0), run_dir)
    return {}


def _nonfinite(cfg: DictConfig) -> NonFiniteConfig:
    """``train.nonfinite`` / ``train.max_skipped_steps``; skip needs the gradients, which DeepSpeed keeps."""
    config = NonFiniteConfig(mode=str(cfg.train.get("nonfinite", "stop")),
                             max_skipped_steps=cfg.train.get("max_skipped_steps", 10))
    if config.mode == "skip" and str(cfg.strategy.name).startswith("deepspeed"):
        raise ValueError(f"train.nonfinite=skip with strategy={cfg.strategy.name}: not supported (the DeepSpeed "
                         "engine owns the gradients and steps itself); use train.nonfinite=stop")
    return config


def _record_stop(manifest: Manifest, run_dir: Path, error: NonFiniteError | None) -> TrainingFailed | None:
    """Mark the manifest of a run that did not finish: ``interrupted`` (resume=auto continues from
    ``last.ckpt``), or ``failed`` with the step and reason of a non-finite stop (returns the exit for it)."""
    if error is None:
        manifest.update(status="interrupted")
        return None
    last = latest_checkpoint(run_dir / "checkpoints")  # a dangling last.ckpt: the newest step checkpoint
    kept = str(Path(last).resolve()) if last else None
    manifest.update(status="failed", failure={"step": error.step, "reason": error.reason,
                                              "last_finite_checkpoint": kept})
    return TrainingFailed(error, kept, manifest.path)


def train(cfg: DictConfig) -> dict:
    """Run one training stage. Returns the final metrics (also written to the run's manifest.json). A
    non-finite loss, gradient norm or weights raises ``TrainingFailed`` (manifest: ``failed``)."""
    check_train(cfg)  # bad values stop here, before anything is built or written (dasd.config_checks)
    refuse_secrets(OmegaConf.to_container(cfg, resolve=True))  # a notebook or ablate.py skips the CLI's check
    with run_lock(cfg.paths.run_dir, "train"):  # one process per run dir, rounds of stage=mixed included
        return _train(cfg)


def _train(cfg: DictConfig) -> dict:
    if cfg.get("data_only"):
        return prepare_data(cfg)
    nonfinite = _nonfinite(cfg)
    source_cfg, mixed = cfg, None
    if cfg.stage.get("mixed"):  # stage=mixed trains on mixed/train.jsonl, written by revision round 0 below
        cfg = mixed_stage.mixed_training_config(cfg)
    plan = plan_stage(stage_settings(cfg))
    manifest = Manifest(plan.run_dir / "manifest.json")
    if plan.already_completed:
        log.info("stage already completed in %s (resume=auto); nothing to do. Use resume=never to retrain.",
                 plan.run_dir)
        return manifest.data.get("final_metrics", {})
    if cfg.stage.get("mixed"):  # before anything else; global rank 0 builds the data, the other ranks wait
        mixed = mixed_stage.prepare_mixed_stage(source_cfg, key=plan.config_hash)
    strategy = _strategy(cfg, plan.init_from)
    L.seed_everything(cfg.seed, workers=True)
    tokenizer = load_tokenizer(plan.init_from)
    dm = datamodule(cfg, tokenizer)
    dm.setup("fit")
    module = SFTModule(StudentSpec(name_or_path=plan.init_from, **OmegaConf.to_container(cfg.student.load)),
                       OptimConfig(**OmegaConf.to_container(cfg.optim)), nonfinite)
    trainer = _trainer(cfg, plan, tokenizer, strategy, dm)
    das_outputs = None
    if trainer.is_global_zero:
        _, das_outputs = _data_outputs(dm, plan.run_dir, cfg.sampler.get("beta"))
    for lg in trainer.loggers:  # counts of every data stage (read, skipped, filtered, selected, packed, dropped)
        lg.log_hyperparams({"data_report": dm.report()})
        if isinstance(lg, WandbLogger) and dm.filter_rows:
            lg.log_table(key="data/filter_drops", columns=["reason", "uuid", "detail"], data=dm.filter_rows)
        if isinstance(lg, WandbLogger) and das_outputs:
            das_artifacts.log_to_wandb(lg, *das_outputs)
    if mixed is not None and trainer.is_global_zero:
        if "skipped" not in mixed:  # mixed.n_questions=0 (off-policy samples alone): no round to log
            log_round(trainer.loggers, mixed, plan.run_dir / "mixed" / "round_0" / "cutoff_ratio.png", step=0)
        mixed = mixed_stage.round_summary(mixed)  # the manifest keeps the counts, not the per-question lists
    if trainer.is_global_zero:
        manifest.update(status="running", stage=cfg.stage.id, run_dir=str(plan.run_dir), config=plan.config,
                        config_hash=plan.config_hash, parent=plan.parent, data=dm.report(), versions=versions(),
                        git=git_revision(Path(__file__).parent), wandb_run_id=plan.wandb_run_id,
                        resumed_from=plan.resume_ckpt, started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        mixed=mixed)
    status, stopped, failed = "failed", None, None
    try:
        # weights_only: the checkpoint is unpickled with torch's restricted loader (tensors and plain data; a
        # DeepSpeed directory was vetted by plan_stage), so no file given as resume= can run code
        trainer.fit(module, datamodule=dm, ckpt_path=plan.resume_ckpt, weights_only=True)
        status = "success"
    except NonFiniteError as e:  # every rank stops at the same step (the checks use rank-reduced values)
        stopped = e
    finally:  # always close the loggers (an unfinished W&B run would block the next one)
        if status != "success" and trainer.is_global_zero:
            failed = _record_stop(manifest, plan.run_dir, stopped)
        for lg in trainer.loggers:
            lg.finalize(status)
            if isinstance(lg, WandbLogger):
                lg.experiment.finish(exit_code=0 if status == "success" else 1)
    if stopped is not None:
        failed = failed or TrainingFailed(stopped, None, manifest.path)
        log.error("%s", failed)
        raise failed from None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics["global_step"] = optimizer_steps(trainer)  # optimizer steps, also under DeepSpeed
    if trainer.is_global_zero and isinstance(getattr(trainer.strategy, "config", None), dict):
        # the DeepSpeed config as the engine ran it (Lightning adds accumulation, clipping, micro-batch)
        manifest.update(deepspeed_config=trainer.strategy.config)
    if trainer.is_global_zero:
        manifest.data.pop("failure", None)  # a failed run resumed (train.nonfinite=skip) to its end
        manifest.update(status="completed", final_metrics=metrics,
                        outputs={"hf_final": str(plan.run_dir / "checkpoints" / "hf" / "final"),
                                 "lightning_last": str(plan.run_dir / "checkpoints" / "last.ckpt"),
                                 "metrics": str(plan.run_dir / "metrics.jsonl"),
                                 "loss_curve": str(plan.run_dir / "loss_curve.png")},
                        **({"skipped_steps": module.guard.skipped} if module.guard.skipped else {}))
        evaluated = [c.eval_result for c in trainer.callbacks if getattr(c, "eval_result", None)]
        if evaluated:  # eval=default: EvaluateAtEnd's summary of the final checkpoint
            manifest.update(eval=evaluated[0])
    return metrics
