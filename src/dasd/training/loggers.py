"""Experiment loggers: W&B (online when a key is configured, else offline: never needs the network), CSV."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from dasd.utils.wandb import resolve_wandb_mode


def build_loggers(kind: str, run_dir: str | Path, *, run_id: str | None, name: str, group: str,
                  tags: list[str], config: dict, project: str = "dasd", entity: str | None = None,
                  mode: str = "auto") -> list[Logger]:
    """Loggers for ``logger=<kind>``: wandb, csv or none. The resolved config goes to each."""
    run_dir = Path(run_dir)
    if kind == "none":
        return []
    if kind == "csv":
        lg = CSVLogger(save_dir=str(run_dir), name="csv", version="")
        lg.log_hyperparams(config)
        return [lg]
    if kind == "wandb":
        mode = resolve_wandb_mode(mode)
        if mode == "disabled":
            return []
        lg = WandbLogger(project=project, entity=entity, name=name, group=group, tags=list(tags), id=run_id,
                         save_dir=str(run_dir), offline=(mode == "offline"), resume="allow", config=config)
        return [lg]
    raise ValueError(f"unknown logger {kind!r}: use wandb, csv or none")
