"""Distributed launch glue: one Hydra job is one process group, whoever starts the ranks (docs/launch.md).

* Lightning's own launcher (``python train.py trainer.devices=N``): rank 0 is the Hydra job and Lightning
  re-runs ``train.py`` for ranks 1..N-1. For a multirun job those children must run *that job* as a single
  run in the job's folder, not the whole sweep again: :func:`job_scope` makes them do so.
* External launchers (torchrun, ``srun python train.py``): every rank runs Hydra's main in the same run dir;
  :func:`rank_argv` keeps Hydra's own files (``.hydra/``, ``train.log``) to rank 0 and refuses a sweep,
  which every rank would run on its own.
* SLURM sweeps go through ``hydra/launcher=slurm`` (``hydra_plugins/dasd_launcher``): one SLURM job per Hydra job.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping

# What Lightning's subprocess launcher exports for its ranks; a job puts them back as it found them.
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Overrides of the parent's hydra node that a child rank (a single run in the job's dir) must not inherit.
_SWEEP_ONLY = (
    "hydra.mode",
    "hydra.sweep",
    "hydra.sweeper",
    "hydra/sweeper",
    "hydra.launcher",
    "hydra/launcher",
    "hydra.run.dir",
    "hydra.output_subdir",
    "hydra.job.name",
)
MULTIRUN_FLAGS = ("-m", "--multirun", "hydra.mode=MULTIRUN")


def external_world(env: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """(global rank, world size) when torchrun or ``srun`` started this process as one of several ranks."""
    if env.get("TORCHELASTIC_RUN_ID"):
        return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    if "SLURM_PROCID" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):  # Lightning's rule
        return int(env["SLURM_PROCID"]), int(env.get("SLURM_NTASKS", 1))
    return None


def multirun_refusal(world: int) -> str:
    return (
        f"a Hydra sweep (-m / hydra.mode=MULTIRUN) under torchrun or srun: each of the {world} ranks would "
        "run the whole sweep itself, and the ranks need not agree on its ${now:} folder. Submit sweeps with "
        "`python train.py -m hydra/launcher=slurm ...` (one SLURM job per sweep job), or start one torchrun "
        "per job without -m (see docs/launch.md)."
    )


def rank_argv(argv: list[str], env: Mapping[str, str] = os.environ) -> list[str]:
    """``sys.argv`` for this rank of a torchrun/srun launch: ranks > 0 write no ``.hydra/`` and log to
    ``train_rank<r>.log`` in the run dir shared with rank 0; a sweep is refused on every rank."""
    world = external_world(env)
    if world is None or world[1] <= 1:
        return argv
    # no exception for hydra/launcher=...: every rank would submit the sweep (submitit's own tasks never come
    # through here, and a shell inside an allocation has no SLURM_PROCID)
    if any(a in MULTIRUN_FLAGS for a in argv[1:]):
        raise SystemExit(f"error: {multirun_refusal(world[1])}")
    if world[0] == 0:
        return argv
    return [*argv, "hydra.output_subdir=null", f"hydra.job.name=train_rank{world[0]}"]


def _job_subprocess_cmd(local_rank: int) -> tuple[list[str], str]:
    """Lightning's command for rank ``local_rank`` of this Hydra job; for a multirun job, that job alone (its
    overrides, run dir = the job's folder), where Lightning would re-run the sweep (``sys.argv`` has -m)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from hydra.utils import get_original_cwd, to_absolute_path
    from lightning.fabric.strategies.launchers import subprocess_script

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return subprocess_script._hydra_subprocess_cmd(local_rank)
    import __main__

    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    hydra_overrides = [o for o in hc.overrides.hydra if not o.lstrip("+~").startswith(_SWEEP_ONLY)]
    command += [
        *hc.overrides.task,
        *hydra_overrides,
        f'hydra.run.dir="{hc.runtime.output_dir}"',
        f"hydra.job.name=train_ddp_process_{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


@contextlib.contextmanager
def job_scope() -> Iterator[None]:
    """Around one Hydra job: its process group and the environment Lightning exported for it end with it, so
    that the next job of a sweep launches (and rendezvouses) its own ranks; child ranks run this job only."""
    import torch.distributed as dist
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.strategies.launchers import subprocess_script
    from omegaconf import OmegaConf

    hc = HydraConfig.get() if HydraConfig.initialized() else None
    world = external_world()
    if (
        hc is not None
        and hc.mode == RunMode.MULTIRUN
        and world
        and world[1] > 1
        and str(OmegaConf.select(hc, "launcher._target_", default="")).endswith("BasicLauncher")
    ):  # a sweep set in a config (sweep=...)
        raise SystemExit(f"error: {multirun_refusal(world[1])}")
    subprocess_script._hydra_subprocess_cmd = _job_subprocess_cmd  # Lightning calls it by this module's name
    saved = {k: os.environ.get(k) for k in DIST_ENV}
    had_group = dist.is_available() and dist.is_initialized()
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized() and not had_group:
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
