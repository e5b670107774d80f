"""The settings a stage is planned from (``dasd.training.stages``), taken from the train config."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dasd.training.stages import StageSettings


def stage_settings(cfg: DictConfig) -> StageSettings:
    return StageSettings(
        stage_id=cfg.stage.id, init_from=str(cfg.stage.init_from), parent_run=cfg.stage.get("parent_run"),
        student=str(cfg.student.name_or_path),
        student_init=str((cfg.student.get("load") or {}).get("init", "pretrained")),
        run_dir=Path(cfg.paths.run_dir), experiment_dir=Path(cfg.paths.output_dir) / cfg.experiment_name,
        experiment_name=str(cfg.experiment_name), resume=str(cfg.resume),
        config=OmegaConf.to_container(cfg, resolve=True))
