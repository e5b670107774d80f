"""Which rank this process is, read from the launcher's environment (before any process group exists)."""

from __future__ import annotations

import os
from collections.abc import Mapping

# the launchers' rank variables: torchrun/Lightning (RANK, LOCAL_RANK, NODE_RANK / GROUP_RANK), SLURM (srun)
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def env_rank_zero(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is global rank 0, read from the launcher's environment (no process group needed):
    every rank variable that is set (``RANK_VARIABLES``) is 0. A single process (none set) is rank 0.

    All of them, not the first one set: the children Lightning's launcher starts inherit the parent's
    ``SLURM_PROCID`` (0 in an ``salloc`` shell) and differ in ``LOCAL_RANK`` / ``NODE_RANK`` only."""
    env = os.environ if env is None else env
    return all(int(env[k]) == 0 for k in RANK_VARIABLES if str(env.get(k, "")).strip())
