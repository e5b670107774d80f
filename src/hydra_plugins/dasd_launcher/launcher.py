"""SLURM (and local) launch of Hydra jobs through submitit: ``hydra/launcher=slurm`` (docs/launch.md).

Needs the ``cluster`` extra (``pip install -e '.[cluster]'``: hydra-submitit-launcher). Hydra only takes
launchers from the ``hydra_plugins`` namespace, hence this package; it imports nothing heavy, because Hydra
imports it on every start.

One Hydra job is one SLURM job of ``trainer.num_nodes`` nodes × ``trainer.devices`` tasks (one per GPU); a sweep
is a job array. ``srun`` starts every task with the SLURM variables Lightning's ``SLURMEnvironment`` reads
(``SLURM_NTASKS``, ``SLURM_NTASKS_PER_NODE``, ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID``,
``SLURM_NODELIST``, ``SLURM_JOB_ID``) and each task calls the Hydra job function: together, the ranks of that
job's process group, all in the job's folder. The sweep folder (``${now:}`` included) is resolved once in the
submitting process; the pickled config carries that value (Hydra copies its resolver cache into each job's
config) and the pickled Hydra state carries dasd's resolvers, so every task of every job agrees on it.

On top of the plugin's launchers: the job layout is checked before anything is submitted, and tasks > 0
write no ``.hydra/`` and log to ``train_rank<r>.log`` beside rank 0's ``train.log``. ``hydra/launcher=local``
runs the same path on one machine (submitit's local executor) as a rehearsal.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.launcher import Launcher

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _plugin
except ImportError:  # the cluster extra is not installed
    _plugin = None

INSTALL = "hydra/launcher=slurm|local needs hydra-submitit-launcher: pip install -e '.[cluster]'"


def check_layout(params: dict, cluster: str) -> None:
    """``nodes`` and ``tasks_per_node`` (from trainer.num_nodes and trainer.devices) are positive ints."""
    for key, source in (("nodes", "trainer.num_nodes"), ("tasks_per_node", "trainer.devices")):
        value = params.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"hydra/launcher={cluster}: {key}={value!r} comes from {source} and must be a positive int (one "
                f"task per GPU): give it explicitly, e.g. trainer.num_nodes=2 trainer.devices=8 (trainer=gpu has "
                f"devices=auto, which cannot size a SLURM job)"
            )


if _plugin is None:

    class _Missing(Launcher):
        def __init__(self, **params: Any) -> None:
            raise ImportError(INSTALL)

        def setup(self, **kwargs: Any) -> None:  # pragma: no cover
            raise ImportError(INSTALL)

        def launch(self, job_overrides: Any, initial_job_idx: int) -> Any:  # pragma: no cover
            raise ImportError(INSTALL)

    class SlurmLauncher(_Missing):
        pass

    class LocalLauncher(_Missing):
        pass

else:

    class _OneJobPerTask:
        """What each task of a job runs (see the module docstring)."""

        cluster = "slurm"

        def __init__(self, **params: Any) -> None:
            super().__init__(**params)
            check_layout(self.params, self.cluster)

        def __call__(
            self,
            sweep_overrides: list[str],
            job_dir_key: str,
            job_num: int,
            job_id: str,
            singleton_state: dict,
        ) -> Any:
            import submitit

            env = submitit.JobEnvironment()
            if env.global_rank > 0:
                sweep_overrides = [
                    *sweep_overrides,
                    "hydra.output_subdir=null",
                    f"hydra.job.name=train_rank{env.global_rank}",
                ]
            self.export_rank_env(env)
            return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)

        def export_rank_env(self, env: Any) -> None:
            """SLURM: nothing to add; Lightning reads the variables srun sets."""

    class SlurmLauncher(_OneJobPerTask, _plugin.SlurmLauncher):
        pass

    class LocalLauncher(_OneJobPerTask, _plugin.LocalLauncher):
        """submitit's local executor: the tasks of one job are processes on this machine. submitit gives them
        ``SUBMITIT_LOCAL_*`` variables, which Lightning does not read; submitit's ``TorchDistributedEnvironment``
        exports the torch ones (``MASTER_ADDR/PORT``, ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``) from them."""

        cluster = "local"

        def export_rank_env(self, env: Any) -> None:
            from submitit.helpers import TorchDistributedEnvironment

            if env.num_tasks > 1:
                # its port derives from the job id: the same in every task
                dist = TorchDistributedEnvironment()
                dist.master_addr = "127.0.0.1"  # one machine
                dist.export(set_cuda_visible_devices=False)
