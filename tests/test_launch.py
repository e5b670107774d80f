"""Distributed launch plumbing on CPU (gloo, 2 ranks): one Hydra job = one process group = one run dir, whoever
starts the ranks (Lightning, torchrun, submitit), and only rank 0 writes the run's files (docs/launch.md)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli import QUIET, REPO, metrics, run_train
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from dasd.config import register_resolvers
from dasd.launch import rank_argv
from dasd.utils.run import checkpoint_identity

COMMON = ["data.max_samples=32", "train.epochs=1", "logger=csv"]
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}


def job_dirs(out: Path) -> list[Path]:
    """Every folder under outputs/ that Hydra or a run wrote into (a log, .hydra/ or a manifest)."""
    found = {
        p.parent for pattern in ("*.log", ".hydra", "manifest.json") for p in (out / "outputs").rglob(pattern)
    }
    return sorted(found)


def assert_one_group_of_two(run: Path, rank_logs: list[str]) -> dict:
    """The run completed, and its 2 ranks trained as one group: every optimizer step took one pack per rank.
    Hydra's files: rank 0's ``.hydra/`` and ``train.log``, and a log of its own for rank 1."""
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    packs = manifest["data"]["packing"]["num_packs"]
    assert len(metrics(run)) == math.ceil(packs / 2) < packs, (len(metrics(run)), packs)
    assert sorted(p.name for p in run.glob("*.log")) == ["train.log", *rank_logs]
    assert "train_r" not in (run / ".hydra" / "hydra.yaml").read_text()  # written by rank 0 alone
    return manifest


@pytest.mark.cli
def test_lightning_ddp_single_run(tmp_path):
    """`python train.py strategy=ddp trainer.devices=2`: Lightning re-runs train.py for rank 1 in the parent's run
    dir; one run dir, no stray folders, one process group of 2 (with a process-group timeout of its own)."""
    proc = run_train(tmp_path, "strategy=ddp", "trainer.devices=2", "strategy.timeout_minutes=60", *COMMON)
    run = tmp_path / "outputs" / "default" / "stage1"
    assert job_dirs(tmp_path) == [run]
    assert_one_group_of_two(run, ["train_ddp_process_1.log"])
    assert (proc.stdout + proc.stderr).count("MEMBER: 2/2") == 1


@pytest.mark.cli
def test_lightning_ddp_multirun_one_group_per_job(tmp_path):
    """`-m seed=1,2` with 2 ranks per job: the sweep runs once (the rank-1 children run their job alone, as a
    single run in the job's folder, instead of re-running the sweep), each job is its own process group."""
    proc = run_train(tmp_path, "-m", "seed=1,2", "strategy=ddp", "trainer.devices=2", *COMMON)
    log = proc.stdout + proc.stderr
    sweeps = list((tmp_path / "outputs" / "default" / "multirun").iterdir())
    assert len(sweeps) == 1, sweeps
    jobs = [sweeps[0] / "stage1_job0", sweeps[0] / "stage1_job1"]
    assert job_dirs(tmp_path) == jobs
    for job, seed in zip(jobs, (1, 2), strict=True):
        assert assert_one_group_of_two(job, ["train_ddp_process_1.log"])["config"]["seed"] == seed
        assert log.count(f"[rank: 1] Seed set to {seed}") == 1  # rank 1 of this job ran this job's config
    assert log.count("Launching 2 jobs locally") == 1
    assert log.count("Starting with 2 processes") == 2 and log.count("MEMBER: 2/2") == 2


@pytest.mark.cli
def test_torchrun_single_run(tmp_path):
    """`torchrun --standalone --nproc_per_node=2 train.py ...`: both ranks run Hydra's main in the same run dir;
    rank 1 writes no .hydra/ and logs to train_rank1.log; the manifest and checkpoints are rank 0's."""
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [
        *launcher,
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / "train.py"),
        f"paths.root_dir={tmp_path}",
        *QUIET,
        "strategy=ddp",
        "trainer.devices=2",
        *COMMON,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "outputs" / "default" / "stage1"
    assert job_dirs(tmp_path) == [run]
    manifest = assert_one_group_of_two(run, ["train_rank1.log"])
    # each rank draws its own W&B run id; the manifest holds the one rank 0 stores in its checkpoints
    assert checkpoint_identity(run / "checkpoints" / "last.ckpt")["wandb_run_id"] == manifest["wandb_run_id"]
    assert (proc.stdout + proc.stderr).count("MEMBER: 2/2") == 1


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, None),
        ({"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "WORLD_SIZE": "2"}, "argv"),
        ({"TORCHELASTIC_RUN_ID": "x", "RANK": "1", "WORLD_SIZE": "2"}, "rank1"),
        ({"SLURM_PROCID": "3", "SLURM_NTASKS": "16", "SLURM_JOB_NAME": "train"}, "rank3"),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train"}, None),
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_NAME": "interactive"}, None),
    ],
)
def test_rank_argv(env, expected):
    """Ranks > 0 of torchrun/srun keep Hydra's files to rank 0; a sweep under them is refused on every rank
    (each rank would run it all, in a ${now:} folder of its own); a single process, and a SLURM job named
    interactive (which Lightning does not treat as SLURM either), are left alone."""
    argv = ["train.py", "seed=1"]
    if expected is None:
        assert rank_argv(argv, env) == argv and rank_argv([*argv, "-m"], env) == [*argv, "-m"]
        return
    out = rank_argv(argv, env)
    assert (
        out == argv
        if expected == "argv"
        else out == [*argv, "hydra.output_subdir=null", f"hydra.job.name=train_{expected}"]
    )
    for flag in ("-m", "--multirun", "hydra.mode=MULTIRUN"):
        with pytest.raises(SystemExit, match="hydra/launcher=slurm"):
            rank_argv([*argv, flag], env)
        with pytest.raises(SystemExit, match="hydra/launcher=slurm"):  # every rank would submit the sweep
            rank_argv([*argv, flag, "hydra/launcher=slurm"], env)


def _compose(tmp_path: Path, *overrides: str):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "train",
            overrides=[f"paths.root_dir={tmp_path}", *overrides],
            return_hydra_config=True,
        )


class _Submitted(Exception):
    pass


def test_slurm_launcher_sbatch(tmp_path, monkeypatch):
    """hydra/launcher=slurm sizes each SLURM job from the trainer (nodes = trainer.num_nodes, one srun task and
    one GPU per device) and starts the tasks with srun; devices=auto is refused before anything is submitted.
    (A stub `srun` on PATH lets submitit build its sbatch script here; nothing is submitted.)"""
    submitit = pytest.importorskip("submitit")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    slurm = ("hydra/launcher=slurm", "trainer=gpu", "trainer.num_nodes=2")
    cfg = _compose(tmp_path, *slurm, "trainer.devices=8", "hydra.launcher.partition=gpu")
    node = cfg.hydra.launcher
    assert (node.nodes, node.tasks_per_node, node.gpus_per_node, node.partition) == (2, 8, 8, "gpu")
    launcher = instantiate(node)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    scripts = []

    def submit(executor, fn, *args):
        scripts.append(
            executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "u")
        )
        raise _Submitted

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", submit)
    with pytest.raises(_Submitted):
        launcher.launch([["seed=1"]], initial_job_idx=0)
    sbatch = scripts[0].splitlines()
    for flag in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu", "--time=2880"):
        assert f"#SBATCH {flag}" in sbatch, (flag, scripts[0])
    assert any(line.startswith("srun ") and line.endswith("submitit.core._submit x") for line in sbatch)
    with pytest.raises(Exception, match="trainer.devices"):  # trainer=gpu: devices=auto
        instantiate(_compose(tmp_path, *slurm).hydra.launcher)


@pytest.mark.cli
def test_submitit_job_of_two_tasks(tmp_path):
    """hydra/launcher=local (submitit's local executor, the SLURM path on one machine): the job's 2 tasks each
    call the job function and form one process group in one job dir; the ${now:} sweep folder (resolved once,
    when submitting) is the same for both; the tasks resolve dasd's ${cwd:} (no paths override here)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    env = {k: v for k, v in ENV.items() if k != "DASD_ROOT"}
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        "hydra/launcher=local",
        *QUIET,
        "strategy=ddp",
        "trainer.devices=2",
        "seed=7",
        *COMMON,
        "hydra.sweep.dir=${paths.output_dir}/sweep/${now:%H-%M-%S-%f}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweeps = list((tmp_path / "outputs" / "sweep").iterdir())
    assert len(sweeps) == 1, sweeps
    job = sweeps[0] / "stage1_job0"
    assert job_dirs(tmp_path) == [job]
    assert assert_one_group_of_two(job, ["train_rank1.log"])["config"]["seed"] == 7
    task_logs = sorted(sweeps[0].glob(".submitit/*/*_log.err"))
    assert len(task_logs) == 2 and "MEMBER: 2/2" in task_logs[1].read_text()


def test_config_set_sweep_refused_under_torchrun(tmp_path, monkeypatch):
    """A sweep set by a config (sweep=lr_seeds: hydra.mode=MULTIRUN, no -m on the command line) is refused in
    the job under torchrun as well; a job of the same sweep under one process runs."""
    from hydra.core.hydra_config import HydraConfig

    from dasd.launch import job_scope

    cfg = _compose(tmp_path, "sweep=lr_seeds", "hydra/launcher=basic")
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and cfg.hydra.launcher._target_.endswith("BasicLauncher")
    HydraConfig.instance().set_config(cfg)
    try:
        with job_scope():
            pass
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", "2")
        with pytest.raises(SystemExit, match="each of the 2 ranks would run the whole sweep"):
            with job_scope():
                pass
    finally:
        HydraConfig.instance().cfg = None


def test_process_group_timeout():
    """strategy.timeout_minutes reaches the strategy as its process-group timeout (null: Lightning's default)."""
    from datetime import timedelta

    from dasd.training.strategy import build_strategy

    assert build_strategy("ddp", timeout_minutes=None) == "ddp"
    assert build_strategy("ddp", timeout_minutes=3e6)._timeout == timedelta(
        seconds=1.8e8
    )  # the authors' value
