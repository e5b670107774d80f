"""W&B outside a training run: the mode a run gets (online only with an API key; never needs the network)
and ``open_run`` for the jobs that log a run of their own (generate, evaluate, an ablation row, a report).

Named ``wandb`` inside ``dasd.utils``; the W&B package itself is imported only when a run is opened."""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
    """``auto``: ``WANDB_MODE`` when set, else online with an API key and offline without one."""
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.mode must be one of {WANDB_MODES}, got {mode!r}")
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online") and mode == "auto":
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if wandb_key_configured() else "offline"
    return mode


def logger_mode(logger_cfg: Mapping | None) -> str:
    """The W&B mode of a ``logger`` config group: ``disabled`` unless it is ``logger=wandb``."""
    if not logger_cfg or logger_cfg.get("name") != "wandb":
        return "disabled"
    return resolve_wandb_mode(logger_cfg.get("mode", "auto"))


def open_run(logger_cfg: Mapping | None, *, dir: str | Path, group: str, job_type: str, name: str,
             config: dict, tags: list[str] | tuple = ()) -> Any | None:
    """A W&B run for a job outside training, in the logger group's project and entity (None when the logger
    is not W&B, or W&B is disabled). The caller logs to it and calls ``finish()``."""
    mode = logger_mode(logger_cfg)
    if mode == "disabled":
        return None
    import wandb

    return wandb.init(project=logger_cfg.get("project", "dasd"), entity=logger_cfg.get("entity"), mode=mode,
                      dir=str(dir), group=str(group), job_type=job_type, name=str(name), config=config,
                      tags=list(tags) or None)
