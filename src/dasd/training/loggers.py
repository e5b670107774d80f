"""Experiment loggers: W&B (online when a key is configured, else offline: never needs the network), CSV."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_key_configured() -> bool:
    """True when W&B has an API key (env var or ~/.netrc), i.e. online logging can work."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1])
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def resolve_wandb_mode(mode: str) -> str:
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.mode must be one of {WANDB_MODES}, got {mode!r}")
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online") and mode == "auto":
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if wandb_key_configured() else "offline"
    return mode


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
